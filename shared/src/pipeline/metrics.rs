//! CloudWatch metrics as Embedded Metric Format lines on stdout: Lambda's log pipeline
//! turns them into metrics with no API call (namespace `EcrBackup`, dimension `Function`).

use serde_json::{json, Map, Value};

use crate::cost::{RunCost, StorageEstimate};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "EcrBackup";

/// A metric value and its CloudWatch unit (`Count`, `Bytes`, `Milliseconds`).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Metric name.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
    /// CloudWatch unit.
    pub unit: &'static str,
}

impl Metric {
    /// A `Count` metric.
    pub fn count(name: &'static str, value: u64) -> Metric {
        Metric {
            name,
            value: value as f64,
            unit: "Count",
        }
    }
}

impl Metric {
    /// A `Bytes` metric.
    pub fn bytes(name: &'static str, value: u64) -> Metric {
        Metric {
            name,
            value: value as f64,
            unit: "Bytes",
        }
    }

    /// A figure without a CloudWatch unit (US dollars).
    pub fn plain(name: &'static str, value: f64) -> Metric {
        Metric {
            name,
            value,
            unit: "None",
        }
    }
}

/// The cost figures of one invocation: bytes new and deduplicated, objects written,
/// requests by kind.
pub fn cost_metrics(cost: &RunCost) -> Vec<Metric> {
    let r = &cost.requests;
    vec![
        Metric::bytes("BytesNew", cost.bytes_new),
        Metric::bytes("BytesDeduplicated", cost.bytes_deduplicated),
        Metric::count("ObjectsWritten", cost.objects_written),
        Metric::count("S3PutRequests", r.s3_put),
        Metric::count("S3GetRequests", r.s3_get),
        Metric::count("S3ListRequests", r.s3_list),
        Metric::count("S3HeadRequests", r.s3_head),
        Metric::count("EcrApiRequests", r.ecr_api),
        Metric::count("RegistryRequests", r.registry),
    ]
}

/// What the store holds and its monthly storage estimate (US dollars).
pub fn storage_metrics(estimate: &StorageEstimate) -> Vec<Metric> {
    vec![
        Metric::count("StoreObjects", estimate.stored.objects),
        Metric::bytes("StoreBytes", estimate.stored.bytes),
        Metric::bytes(
            "StoreBackupBillableBytes",
            estimate.stored.backup_billable_bytes,
        ),
        Metric::plain("StoreMonthlyCostS3", estimate.s3_monthly_usd),
        Metric::plain("StoreMonthlyCostBackup", estimate.backup_warm_monthly_usd),
    ]
}

/// One EMF document for `function`'s metrics.
pub fn emf_line(function: &str, metrics: &[Metric]) -> String {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": metrics.iter().map(|m| json!({"Name": m.name, "Unit": m.unit})).collect::<Vec<_>>(),
            }],
        }),
    );
    doc.insert("Function".into(), Value::String(function.into()));
    for m in metrics {
        doc.insert(m.name.into(), json!(m.value));
    }
    Value::Object(doc).to_string()
}

/// Prints one EMF document on stdout.
pub fn emit(function: &str, metrics: &[Metric]) {
    println!("{}", emf_line(function, metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_names_every_metric() {
        let line = emf_line("worker", &[Metric::count("ImagesCopied", 3)]);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ImagesCopied"], 3.0);
        assert_eq!(v["Function"], "worker");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "ImagesCopied"
        );
    }
}

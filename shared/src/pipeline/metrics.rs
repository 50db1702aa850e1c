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

/// The metrics of one restore drill (`Function=drill`): images sampled, images that
/// failed, the drill's duration, and the blobs that failed their re-hash from the store.
pub fn drill_metrics(record: &crate::store::checks::DrillRecord, seconds: f64) -> Vec<Metric> {
    let failed = record.images.iter().filter(|i| !i.ok).count() as u64;
    vec![
        Metric::count("DrillImages", record.images.len() as u64),
        // A drill that could not reach its target, or found nothing to restore, proved
        // nothing: it counts as one failure even when no image failed.
        Metric::count(
            "DrillFailures",
            if record.passed && !record.images.is_empty() {
                failed
            } else {
                failed.max(1)
            },
        ),
        Metric {
            name: "DrillSeconds",
            value: seconds,
            unit: "Seconds",
        },
        Metric::count("VerifyProblems", record.blob_problems),
    ]
}

/// The age of the latest drill record, in hours (`Function=drill`), emitted by the
/// drill function's daily check so that "no drill for 8 days" can alarm: CloudWatch
/// alarms look back at most 7 days, so the silence of a weekly metric cannot be.
pub fn drill_age_metric(hours: f64) -> Metric {
    Metric {
        name: "DrillAgeHours",
        value: hours,
        unit: "None",
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
    use crate::store::checks::{DrillCleanup, DrillImage, DrillRecord};

    fn record(results: &[bool], passed: bool) -> DrillRecord {
        DrillRecord {
            version: 1,
            id: "20261203T020000Z-5e0c1a".into(),
            run: "20261202T020000Z-8d41e0".into(),
            source: "s".into(),
            target: "t".into(),
            scratch_prefix: "ecr-backup-drill".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            passed,
            sample: "5".into(),
            images_in_run: 9,
            blob_problems: 2,
            images: results
                .iter()
                .map(|&ok| DrillImage {
                    repository: "team/app".parse().unwrap(),
                    digest: crate::oci::digest::Digest::of(b"x"),
                    tags: vec![],
                    scratch_repository: "ecr-backup-drill/x/team/app".into(),
                    blobs: 3,
                    bytes: 10,
                    ok,
                    error: None,
                })
                .collect(),
            problems: vec![],
            cleanup: DrillCleanup {
                method: "none".into(),
                complete: true,
                repositories_deleted: 0,
                images_deleted: 0,
                left_over: vec![],
            },
        }
    }

    fn value(metrics: &[Metric], name: &str) -> f64 {
        metrics.iter().find(|m| m.name == name).unwrap().value
    }

    #[test]
    fn drill_metrics_count_failures_and_empty_drills() {
        let m = drill_metrics(&record(&[true, false, false], false), 4.5);
        assert_eq!(value(&m, "DrillImages"), 3.0);
        assert_eq!(value(&m, "DrillFailures"), 2.0);
        assert_eq!(value(&m, "DrillSeconds"), 4.5);
        assert_eq!(value(&m, "VerifyProblems"), 2.0);
        let passed = drill_metrics(&record(&[true, true], true), 1.0);
        assert_eq!(value(&passed, "DrillFailures"), 0.0);
        // A drill that proved nothing (no image, or a target it could not use) fails.
        assert_eq!(
            value(&drill_metrics(&record(&[], true), 1.0), "DrillFailures"),
            1.0
        );
        assert_eq!(
            value(
                &drill_metrics(&record(&[true], false), 1.0),
                "DrillFailures"
            ),
            1.0
        );
    }

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

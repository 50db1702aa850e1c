//! CloudWatch metrics as Embedded Metric Format lines on stdout: Lambda's log pipeline
//! turns them into metrics with no API call (namespace `EcrBackup`, dimension `Function`).

use serde_json::{json, Map, Value};

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

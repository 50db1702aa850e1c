//! The restore drill Lambda's handler: on its weekly schedule it drills the store into the
//! account's own ECR under a scratch prefix ([`ecr_backup_shared::wayback::drill`]) and
//! emits the drill's metrics; on its daily schedule (`{"check": "age"}`) it only reports
//! how old the latest drill record is (`DrillAgeHours`), which is what lets an alarm say
//! "no drill for 8 days" (CloudWatch alarms look back at most 7 days).
//!
//! A third function, not a mode of the worker, because of its role: a drill must push to
//! and delete from ECR (only under the scratch prefix), which the worker must never be
//! able to do, and it needs a longer timeout and its own schedule; the worker's role stays
//! pull-only.

use std::time::Instant;

use anyhow::{Context, Result};
use ecr_backup_shared::error::error_chain;
use ecr_backup_shared::pipeline::config::DrillConfig;
use ecr_backup_shared::pipeline::metrics::{self, Metric};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::wayback::drill::{self, DrillOptions, Sample};
use ecr_backup_shared::Store;
use serde_json::{json, Value};

/// The `Function` dimension of the drill's metrics.
pub const FUNCTION: &str = "drill";

/// Clients and settings, built once per Lambda process.
pub struct DrillContext {
    store: Store,
    target: Source,
    options: DrillOptions,
}

impl DrillContext {
    /// Builds clients from the environment: the store, and the account's own ECR as target.
    pub async fn from_env() -> Result<DrillContext> {
        let config = DrillConfig::from_env()?;
        let mut options = DrillOptions::default();
        if let Some(prefix) = config.scratch_prefix {
            options.scratch_prefix = prefix;
        }
        if let Some(sample) = &config.sample {
            options.sample =
                Sample::parse(sample).context("environment variable ECR_BACKUP_DRILL_SAMPLE")?;
        }
        let store = Store::open(&config.store).await;
        let target = Source::own_ecr(config.registry_endpoint.as_deref())
            .await
            .context("finding the ECR registry")?;
        Ok(DrillContext::new(store, target, options))
    }

    /// A context from parts (tests).
    pub fn new(store: Store, target: Source, options: DrillOptions) -> DrillContext {
        DrillContext {
            store,
            target,
            options,
        }
    }
}

/// Handles one scheduled event; returns what the drill wrote (or the age found).
pub async fn handle(context: &DrillContext, event: &Value) -> Result<Value> {
    if event.get("check").and_then(Value::as_str) == Some("age") {
        return check_age(context).await;
    }
    let started = Instant::now();
    match drill::drill(&context.store, &context.target, &context.options).await {
        Ok(outcome) => {
            metrics::emit(
                FUNCTION,
                &metrics::drill_metrics(&outcome.record, started.elapsed().as_secs_f64()),
            );
            for image in outcome.record.images.iter().filter(|i| !i.ok) {
                tracing::error!(repository = %image.repository, digest = %image.digest, error = image.error.as_deref().unwrap_or_default(), "drill image failed");
            }
            for problem in &outcome.record.problems {
                tracing::warn!(problem = %problem, "drill problem");
            }
            Ok(serde_json::to_value(&outcome)?)
        }
        Err(e) => {
            // A drill that could not run proved nothing: that is a failure to alarm on.
            metrics::emit(
                FUNCTION,
                &[
                    Metric::count("DrillImages", 0),
                    Metric::count("DrillFailures", 1),
                    Metric {
                        name: "DrillSeconds",
                        value: started.elapsed().as_secs_f64(),
                        unit: "Seconds",
                    },
                ],
            );
            tracing::error!(error = %error_chain(&e), "drill failed");
            Err(anyhow::Error::new(e))
        }
    }
}

/// Emits the age of the latest drill record; emits nothing when there is none, which the
/// alarm treats as breaching.
async fn check_age(context: &DrillContext) -> Result<Value> {
    let latest = context
        .store
        .latest_drill_record()
        .await
        .with_context(|| format!("reading drill records of {}", context.store.location()))?;
    let Some(record) = latest else {
        tracing::warn!(store = %context.store.location(), "no drill record in the store");
        return Ok(json!({"latest": null}));
    };
    let hours = (chrono::Utc::now() - record.finished_at).num_seconds() as f64 / 3600.0;
    metrics::emit(FUNCTION, &[metrics::drill_age_metric(hours)]);
    Ok(json!({"latest": record.id, "passed": record.passed, "age_hours": hours}))
}

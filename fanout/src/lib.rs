//! The fan-out Lambda's handler: on each scheduled event, enumerate ECR and send a copy
//! message for every image the store lacks ([`ecr_backup_shared::pipeline::fanout`]).

use std::time::Duration;

use anyhow::{Context, Result};
use ecr_backup_shared::backup::Meter;
use ecr_backup_shared::cost::Prices;
use ecr_backup_shared::error::error_chain;
use ecr_backup_shared::pipeline::config::FanoutConfig;
use ecr_backup_shared::pipeline::fanout::{fan_out, FanoutReport, FanoutRun};
use ecr_backup_shared::pipeline::metrics::{self, Metric};
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::usage::storage_estimate;
use ecr_backup_shared::Store;

/// Time kept back from the invocation's deadline for the snapshot and the continuation.
const SAFETY_MARGIN: Duration = Duration::from_secs(120);

/// Clients and settings, built once per Lambda process.
pub struct FanoutContext {
    source: Source,
    store: Store,
    queue: SqsQueue,
    config: FanoutConfig,
    prices: Prices,
}

impl FanoutContext {
    /// Builds clients from the environment.
    pub async fn from_env() -> Result<FanoutContext> {
        let config = FanoutConfig::from_env()?;
        let prices = Prices::from_env()?;
        let store = Store::open(&config.store).await;
        let queue = SqsQueue::new(SqsQueue::client_from_env().await, config.queue_url.clone());
        let source = Source::own_ecr(config.registry_endpoint.as_deref())
            .await
            .context("finding the ECR registry")?;
        Ok(FanoutContext {
            source,
            store,
            queue,
            config,
            prices,
        })
    }
}

impl FanoutContext {
    /// A context from parts (tests, other entry points).
    pub fn new(
        source: Source,
        store: Store,
        queue: SqsQueue,
        config: FanoutConfig,
    ) -> FanoutContext {
        FanoutContext {
            source,
            store,
            queue,
            config,
            prices: Prices::default(),
        }
    }
}

/// Runs one fan-out with `remaining` time before the invocation's deadline.
pub async fn handle(context: &FanoutContext, remaining: Duration) -> Result<FanoutReport> {
    let run = FanoutRun::start(
        context.config.filter.clone(),
        context.config.part_repositories,
    );
    let budget = remaining
        .saturating_sub(SAFETY_MARGIN)
        .max(Duration::from_secs(10));
    let meter = Meter::start(&context.source, &context.store, None);
    let report = fan_out(
        &context.source,
        &context.store,
        &context.queue,
        &run,
        budget,
    )
    .await?;
    tracing::info!(
        run_id = %report.run_id,
        repositories = report.repositories,
        images_seen = report.images_seen,
        images_enqueued = report.images_enqueued,
        images_up_to_date = report.images_up_to_date,
        send_calls = report.send_calls,
        continued_after = report.continued_after.as_ref().map(|r| r.as_str()),
        run_complete = report.run_complete,
        settings_written = report.settings.written.len(),
        settings_unreadable = report.settings.warnings.len(),
        "fan-out finished"
    );
    let cost = meter.finish(&context.source, &context.store, None, &context.prices);
    let mut figures = vec![
        Metric::count("FanoutRuns", 1),
        Metric::count("RunsCompleted", u64::from(report.run_complete)),
        Metric::count("Repositories", report.repositories),
        Metric::count("ImagesSeen", report.images_seen),
        Metric::count("ImagesEnqueued", report.images_enqueued),
        Metric::count("ImagesUpToDate", report.images_up_to_date),
        Metric::count("ImagesArchived", report.images_archived),
        Metric::count("SettingsWritten", report.settings.written.len() as u64),
        Metric::count("SettingsUnreadable", report.settings.warnings.len() as u64),
        Metric {
            name: "Duration",
            value: report.elapsed_seconds * 1000.0,
            unit: "Milliseconds",
        },
    ];
    figures.extend(metrics::cost_metrics(&cost));
    // Once a scheduled run: one listing of the store for its monthly storage estimate.
    // A failure costs the estimate's metrics, never the run.
    match storage_estimate(&context.store, &context.prices).await {
        Ok(estimate) => {
            tracing::info!(
                objects = estimate.stored.objects,
                bytes = estimate.stored.bytes,
                s3_monthly_usd = estimate.s3_monthly_usd,
                backup_warm_monthly_usd = estimate.backup_warm_monthly_usd,
                "storage estimate"
            );
            figures.extend(metrics::storage_metrics(&estimate));
        }
        Err(e) => {
            tracing::warn!(store = %context.store.location(), error = %error_chain(&e), "could not measure the store for its storage estimate")
        }
    }
    metrics::emit("fanout", &figures);
    Ok(report)
}

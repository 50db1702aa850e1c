//! The worker Lambda's handler: an SQS batch in, a partial batch response out. Each
//! message is one task of the shared engine ([`ecr_backup_shared::pipeline::worker`]); only failed message
//! ids are reported, so one bad record never fails its batch-mates.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use ecr_backup_shared::backup::Meter;
use ecr_backup_shared::copy::CopyEngine;
use ecr_backup_shared::cost::Prices;
use ecr_backup_shared::pipeline::config::WorkerConfig;
use ecr_backup_shared::pipeline::metrics::{self, Metric};
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::pipeline::worker::{BatchItem, Worker};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::Store;

/// The worker and its settings, built once per Lambda process.
pub struct WorkerContext {
    worker: Arc<Worker>,
    concurrency: usize,
    prices: Prices,
}

impl WorkerContext {
    /// Builds clients from the environment: store, queue (and its dead-letter queue), ECR.
    pub async fn from_env() -> Result<WorkerContext> {
        let config = WorkerConfig::from_env()?;
        let prices = Prices::from_env()?;
        let store = Store::open(&config.store).await;
        store
            .mark_as_store()
            .await
            .with_context(|| format!("marking {} as a backup store", store.location()))?;
        let sqs = SqsQueue::client_from_env().await;
        let queue = SqsQueue::new(sqs.clone(), config.queue_url.clone());
        let dead_letter = match queue.redrive_policy().await? {
            Some((max_receives, dlq_arn)) => {
                let name = dlq_arn.rsplit(':').next().unwrap_or_default();
                let url = sqs
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .with_context(|| format!("finding the dead-letter queue {name}"))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_owned();
                Some((max_receives, SqsQueue::new(sqs.clone(), url)))
            }
            None => None,
        };
        let source = Source::own_ecr(config.registry_endpoint.as_deref())
            .await
            .context("finding the ECR registry")?;
        let engine = CopyEngine::for_source(&source, store);
        Ok(WorkerContext {
            worker: Arc::new(
                Worker::new(engine, source, queue, dead_letter)
                    .with_filter(config.filter.compile()?),
            ),
            concurrency: config.concurrency,
            prices,
        })
    }

    /// A context from parts (tests).
    pub fn new(worker: Arc<Worker>, concurrency: usize) -> WorkerContext {
        WorkerContext {
            worker,
            concurrency,
            prices: Prices::default(),
        }
    }
}

/// Handles one SQS batch.
pub async fn handle(context: &WorkerContext, event: SqsEvent) -> SqsBatchResponse {
    let started = Instant::now();
    let worker = &context.worker;
    let stats = worker.engine().stats();
    let bytes_before = stats.bytes_copied.load(Ordering::Relaxed);
    let skipped_before = stats.blobs_skipped.load(Ordering::Relaxed);
    let meter = Meter::start(
        worker.source(),
        worker.engine().store(),
        Some(worker.engine()),
    );
    let mut failures = Vec::new();
    let mut items = Vec::new();
    for record in event.records {
        let Some(message_id) = record.message_id.clone() else {
            tracing::error!("SQS record without a message id; cannot report it");
            continue;
        };
        let Some(body) = record.body.clone() else {
            tracing::error!(%message_id, "SQS record without a body");
            failures.push(message_id);
            continue;
        };
        items.push(BatchItem {
            message_id,
            receipt_handle: record.receipt_handle.clone().unwrap_or_default(),
            body,
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            attributes: record
                .message_attributes
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?)))
                .collect(),
            first_received_at: record
                .attributes
                .get("ApproximateFirstReceiveTimestamp")
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(chrono::DateTime::from_timestamp_millis),
        });
    }
    let result = context.worker.run_batch(items, context.concurrency).await;
    failures.extend(result.failed.iter().cloned());
    let cost = meter.finish(
        worker.source(),
        worker.engine().store(),
        Some(worker.engine()),
        &context.prices,
    );
    let mut figures = vec![
        Metric::count("ImagesCopied", result.copied),
        Metric::count("ImagesSkipped", result.present + result.skipped),
        Metric::count("ImagesGone", result.gone),
        Metric::count("ImagesArchived", result.archived.len() as u64),
        Metric::count("ImagesFailed", result.errors),
        Metric::count("MessagesDeadLettered", result.dead_lettered),
        Metric {
            name: "BytesCopied",
            value: (stats.bytes_copied.load(Ordering::Relaxed) - bytes_before) as f64,
            unit: "Bytes",
        },
        Metric::count(
            "BlobsDeduplicated",
            stats.blobs_skipped.load(Ordering::Relaxed) - skipped_before,
        ),
        Metric {
            name: "Duration",
            value: started.elapsed().as_millis() as f64,
            unit: "Milliseconds",
        },
    ];
    figures.extend(metrics::cost_metrics(&cost));
    metrics::emit("worker", &figures);
    if result.runs_completed > 0 {
        // A run's last part may be written by a worker (a continued fan-out): the
        // completed-runs metric is the fan-out's, whoever wrote the part.
        metrics::emit(
            "fanout",
            &[Metric::count("RunsCompleted", result.runs_completed)],
        );
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

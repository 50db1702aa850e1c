//! A local backup run (the CLI's): plan, copy every image of the work list with bounded
//! concurrency, write the snapshot, rebuild `index.json`, and report.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::{BackupError, Baseline, Meter, Planner};
use crate::copy::{CopyEngine, CopyError, CopyRequest, ImageOutcome};
use crate::cost::{Prices, RunCost};
use crate::error::error_chain;
use crate::filter::ImageFilter;
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::Reporter;
use crate::source::Source;
use crate::store::records::Snapshot;
use crate::store::tag_view::update_index;
use crate::store::usage::storage_estimate;

/// One image that could not be backed up.
#[derive(Debug, Clone, Serialize)]
pub struct FailedImage {
    /// The repository.
    pub repository: RepositoryName,
    /// The image.
    pub digest: Digest,
    /// Its tags.
    pub tags: Vec<Tag>,
    /// Why, with the cause chain.
    pub error: String,
}

/// The summary of a run (also its `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The registry.
    pub source: String,
    /// The store.
    pub store: String,
    /// The snapshot written.
    pub snapshot: String,
    /// Images copied by this run.
    pub images_copied: u64,
    /// Images already in the store (tag records added where they had moved).
    pub images_present: u64,
    /// Images that failed.
    pub images_failed: Vec<FailedImage>,
    /// Archived ECR images that were listed but could not be pulled.
    pub images_archived: Vec<String>,
    /// Repositories the previous run saw in the same state, complete: not compared with
    /// the store again.
    pub repositories_unchanged: u64,
    /// True when `index.json` was rewritten (only when something changed).
    pub index_written: bool,
    /// Repositories deleted while the run enumerated them (left out of its snapshot).
    pub repositories_gone: Vec<RepositoryName>,
    /// Blobs and manifests written.
    pub blobs_copied: u64,
    /// Blobs found in the store already.
    pub blobs_skipped: u64,
    /// Bytes written.
    pub bytes_copied: u64,
    /// Bytes not transferred because the store had them.
    pub bytes_skipped: u64,
    /// Registry HTTP requests.
    pub registry_requests: u64,
    /// Blob downloads started.
    pub blob_gets: u64,
    /// Retried requests and transfers: registry requests, blob transfers, store requests.
    pub retries: u64,
    /// Wall time, in seconds.
    pub elapsed_seconds: f64,
    /// Repository and registry settings recorded (ECR sources only).
    pub settings: super::settings::SettingsReport,
    /// Bytes new and deduplicated, objects written, requests by kind, and what the store
    /// now costs a month.
    pub cost: RunCost,
}

impl BackupReport {
    /// True when every selected image is in the store.
    pub fn is_success(&self) -> bool {
        self.images_failed.is_empty()
    }
}

/// Settings of a local run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Which repositories and tags.
    pub filter: ImageFilter,
    /// Images copied at once.
    pub image_concurrency: usize,
    /// Prices for the cost figures.
    pub prices: Prices,
}

/// Backs up `source` into the engine's store: plan, copy, snapshot, index.
pub async fn run(
    source: &Source,
    engine: &CopyEngine,
    options: &RunOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let store = engine.store();
    let store_retries = store.backend().retries();
    let meter = Meter::start(source, store, Some(engine));
    store.init().await?;
    // Housekeeping only: a failure here is reported and the backup goes on.
    match store.remove_leftovers().await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(store = %store.location(), removed = n, "removed partial files left by interrupted writes")
        }
        Err(e) => {
            tracing::warn!(store = %store.location(), error = %error_chain(&e), "could not remove partial files left by interrupted writes")
        }
    }
    let observed_at = chrono::Utc::now();
    let baseline = Baseline::load(store).await?;
    let mut plan = Planner::new(source, store, &options.filter, observed_at, &baseline)
        .plan(Snapshot::new(source.name().to_owned(), observed_at))
        .await?;
    reporter.images_found(plan.work.len() as u64);
    let settings = match source.ecr() {
        Some(api) => {
            super::settings::collect(
                api,
                store,
                plan.snapshot.repositories.keys().cloned(),
                true,
                observed_at,
            )
            .await
        }
        None => Default::default(),
    };

    let empty = Default::default();
    let results: Vec<(CopyRequest, Result<ImageOutcome, CopyError>)> = futures::stream::iter(plan.work.iter())
        .map(|request| {
            let known = plan.known.get(&request.repository).unwrap_or(&empty);
            let reporter = reporter.clone();
            async move {
                let result = engine.copy_image(request, Some(known)).await;
                reporter.image_finished(&request.repository, &request.digest, result.is_ok());
                if let Err(e) = &result {
                    tracing::error!(repository = %request.repository, digest = %request.digest, error = %error_chain(e), "image failed");
                }
                (request.clone(), result)
            }
        })
        .buffer_unordered(options.image_concurrency.max(1))
        .collect()
        .await;

    // What is pending after the copies: the images that failed, and archived ones.
    plan.context.pending.clear();
    for image in &plan.archived {
        *plan
            .context
            .pending
            .entry(image.repository.clone())
            .or_default() += 1;
    }
    for (request, result) in &results {
        if result.is_err() {
            *plan
                .context
                .pending
                .entry(request.repository.clone())
                .or_default() += 1;
        }
    }
    let (_, part) = store.put_snapshot(&plan.snapshot, &plan.context).await?;
    let copied: HashMap<Digest, (String, u64)> = results
        .iter()
        .filter_map(|(request, result)| match result {
            Ok(ImageOutcome::Copied { media_type, size }) => {
                Some((request.digest.clone(), (media_type.clone(), *size)))
            }
            _ => None,
        })
        .collect();
    let index = match crate::store::Run::from_parts(&plan.snapshot.id, vec![part]) {
        Some(run) => update_index(store, &run, baseline.run(), &copied).await?,
        None => Default::default(),
    };

    let mut report = BackupReport {
        source: source.name().to_owned(),
        store: store.location(),
        snapshot: plan.snapshot.id.clone(),
        images_copied: 0,
        images_present: plan.up_to_date as u64,
        repositories_unchanged: plan.unchanged as u64,
        index_written: index.written,
        images_failed: Vec::new(),
        repositories_gone: plan.gone.clone(),
        images_archived: plan
            .archived
            .iter()
            .map(|i| format!("{}@{}", i.repository, i.digest))
            .collect(),
        blobs_copied: 0,
        blobs_skipped: 0,
        bytes_copied: 0,
        bytes_skipped: 0,
        registry_requests: 0,
        blob_gets: 0,
        retries: 0,
        elapsed_seconds: 0.0,
        settings,
        cost: RunCost::new(
            &Default::default(),
            &Default::default(),
            0,
            0,
            0,
            &options.prices,
        ),
    };
    for (request, result) in results {
        match result {
            Ok(ImageOutcome::Copied { .. }) => report.images_copied += 1,
            Ok(ImageOutcome::AlreadyPresent) => report.images_present += 1,
            Err(e) => report.images_failed.push(FailedImage {
                repository: request.repository,
                digest: request.digest,
                tags: request.tags,
                error: error_chain(&e),
            }),
        }
    }
    let stats = engine.stats();
    let registry = source.registry().stats();
    report.blobs_copied = stats.blobs_copied.load(Ordering::Relaxed);
    report.blobs_skipped = stats.blobs_skipped.load(Ordering::Relaxed);
    report.bytes_copied = stats.bytes_copied.load(Ordering::Relaxed);
    report.bytes_skipped = stats.bytes_skipped.load(Ordering::Relaxed);
    report.registry_requests = registry.requests.load(Ordering::Relaxed);
    report.blob_gets = registry.blob_gets.load(Ordering::Relaxed);
    report.retries = registry.retries.load(Ordering::Relaxed)
        + stats.blob_retries.load(Ordering::Relaxed)
        + (store.backend().retries() - store_retries);
    report.cost = meter.finish(source, store, Some(engine), &options.prices);
    // One listing of the whole store; a failure costs the estimate, not the backup.
    report.cost.storage = match storage_estimate(store, &options.prices).await {
        Ok(estimate) => Some(estimate),
        Err(e) => {
            tracing::warn!(store = %store.location(), error = %error_chain(&e), "could not measure the store for its storage estimate");
            None
        }
    };
    report.elapsed_seconds = round_ms(started.elapsed());
    report
        .images_failed
        .sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
    Ok(report)
}

fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

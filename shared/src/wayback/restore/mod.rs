//! The restore engine: images from a store back into any registry, digests unchanged.
//!
//! Order of writes for one image, which is what keeps a half-finished restore harmless:
//! blobs (configs, layers) → child manifests → the top manifest, by digest → its tags. A
//! tag is pushed only once its image is whole, so nothing half-written is ever tagged.
//! Blob bytes are hashed as they stream out of the store and the last chunk is held back
//! until the digest matched, so a corrupt blob never completes an upload.
//!
//! A restore is idempotent: every blob is HEADed first, an image whose manifests the
//! target already has moves no blob at all, and a blob this run already placed in another
//! repository is mounted instead of uploaded again.
//!
//! [`select`] picks the images (and `--rename`s them); [`push`] moves one image's blobs
//! and manifests into the target; this module runs them and reports.

pub mod push;
pub mod select;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::error::error_chain;
use crate::filter::ImageFilter;
use crate::oci::digest::{Digest, DigestError};
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::Reporter;
use crate::source::ecr::{EcrError, EcrRegistry};
use crate::source::ecr_settings::KmsKeys;
use crate::source::registry::{RegistryError, RetryPolicy};
use crate::source::Source;
use crate::store::{Store, StoreError};
use crate::wayback::inventory::{self, InventoryError, PointInTime};
use crate::wayback::trust::{self, LateRecord};

pub use select::{select, Rename, RestoreImage};
pub use settings::{AccountMap, SettingsMode, SettingsOptions, SettingsReport};

use push::{Engine, Stats};

/// ECR repositories created at once.
const CREATE_CONCURRENCY: usize = 4;

/// A restore could not start or plan; per-image failures are in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Reading the store, or resolving `--as-of`/`--snapshot`, failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The target registry refused the connection or the credentials.
    #[error("target registry {target} is not usable")]
    Target {
        /// The target.
        target: String,
        /// What it answered.
        #[source]
        source: RegistryError,
    },
    /// `--trusted-before`: records the restore would rely on were written after the trusted
    /// time (so the locked vault does not hold them); nothing was pushed.
    #[error(
        "{} record(s) this restore relies on were written after {trusted_before} (--trusted-before), so the locked vault does not hold them and they may be forged; nothing was pushed. Pin the restore to a point before them (--as-of or --snapshot), or restore the bucket from the vault first:{}",
        records.len(),
        late_list(records)
    )]
    Untrusted {
        /// The trusted time given.
        trusted_before: chrono::DateTime<chrono::Utc>,
        /// The records written after it, oldest first.
        records: Vec<LateRecord>,
    },
    /// Settings could not be restored at all (per-setting failures are in the report).
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// `--rename` is malformed or makes an invalid repository name.
    #[error("invalid --rename {rename:?}: {reason}")]
    Rename {
        /// The rule as given.
        rename: String,
        /// Why it was refused.
        reason: String,
    },
}

/// The first records of a refusal, one per line (the rest counted).
fn late_list(records: &[LateRecord]) -> String {
    const SHOWN: usize = 20;
    let mut text: String = records
        .iter()
        .take(SHOWN)
        .map(|r| format!("\n  {} (written {})", r.key, r.written_at.to_rfc3339()))
        .collect();
    if records.len() > SHOWN {
        text.push_str(&format!("\n  … and {} more", records.len() - SHOWN));
    }
    text
}

impl From<StoreError> for RestoreError {
    fn from(e: StoreError) -> Self {
        RestoreError::Inventory(InventoryError::Store(e))
    }
}

/// Why one image could not be restored; names the image and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The tag points at an image the store has no record of (its copy failed).
    #[error("{repository}@{digest} is not in the store (no image record)")]
    NotBackedUp {
        /// The repository in the store.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
    /// Reading the store failed.
    #[error("reading {repository}@{digest} from the store")]
    Store {
        /// The repository in the store.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// A blob in the store does not match its digest; nothing of it was pushed.
    #[error("blob {blob} of {repository}@{digest} is corrupt in the store")]
    Corrupt {
        /// The repository in the store.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The corrupt blob.
        blob: Digest,
        /// The mismatch.
        #[source]
        source: DigestError,
    },
    /// The target registry failed or refused.
    #[error("pushing {repository}@{digest}")]
    Registry {
        /// The repository in the target.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// The ECR repository could not be created.
    #[error("creating ECR repository {repository}")]
    CreateRepository {
        /// The repository in the target.
        repository: RepositoryName,
        /// The ECR error.
        #[source]
        source: Arc<EcrError>,
    },
}

/// Settings of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Which repositories and tags.
    pub filter: ImageFilter,
    /// Which state of the registry.
    pub point: PointInTime,
    /// Repository renaming, if any.
    pub rename: Option<Rename>,
    /// Also restore, by digest, the untagged images of the snapshot the view is based on
    /// (only without a tag pattern).
    pub include_untagged: bool,
    /// Images restored at once.
    pub image_concurrency: usize,
    /// Blob transfers at once, across all images.
    pub blob_concurrency: usize,
    /// Retries of one blob upload after a transient failure (the stream is reopened).
    pub retry: RetryPolicy,
    /// Refuse to push anything if a record the restore relies on was written after this
    /// time (the creation time of the vault's last recovery point); see [`crate::wayback::trust`].
    pub trusted_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Repository and registry settings (`--settings`, `--settings-only`, `--dry-run`).
    pub settings: SettingsOptions,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            filter: ImageFilter::default(),
            point: PointInTime::Latest,
            rename: None,
            include_untagged: false,
            image_concurrency: 4,
            blob_concurrency: 8,
            retry: RetryPolicy {
                max_retries: 3,
                ..RetryPolicy::default()
            },
            trusted_before: None,
            settings: SettingsOptions::default(),
        }
    }
}

/// One image that could not be restored.
#[derive(Debug, Clone, Serialize)]
pub struct FailedImage {
    /// Its repository in the store.
    pub repository: RepositoryName,
    /// Its repository in the target.
    pub target_repository: RepositoryName,
    /// The image.
    pub digest: Digest,
    /// Tags that were not pushed because of the failure.
    pub tags: Vec<Tag>,
    /// Why, with the cause chain.
    pub error: String,
}

/// The summary of a restore (also its `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The store.
    pub store: String,
    /// The target registry.
    pub target: String,
    /// `latest`, `as of TIME` or `snapshot ID`.
    pub point: String,
    /// The snapshot the tag view starts from, if any.
    pub snapshot: Option<String>,
    /// Images pushed (whole or in part) by this run.
    pub images_restored: u64,
    /// Images the target already had, with every tag.
    pub images_present: u64,
    /// Images that failed; their tags were not pushed.
    pub images_failed: Vec<FailedImage>,
    /// ECR repositories created.
    pub repositories_created: Vec<RepositoryName>,
    /// Blobs uploaded from the store.
    pub blobs_pushed: u64,
    /// Blobs mounted from another repository of the target.
    pub blobs_mounted: u64,
    /// Blobs the target had already.
    pub blobs_skipped: u64,
    /// Manifests (child and top) pushed by digest.
    pub manifests_pushed: u64,
    /// Tags pushed or moved.
    pub tags_pushed: u64,
    /// Bytes uploaded (blobs and manifests).
    pub bytes_pushed: u64,
    /// Bytes not uploaded because the target had them or mounted them.
    pub bytes_skipped: u64,
    /// Registry HTTP requests.
    pub registry_requests: u64,
    /// Retried requests and uploads.
    pub retries: u64,
    /// Wall time, in seconds.
    pub elapsed_seconds: f64,
    /// `--dry-run`: nothing was pushed or changed.
    pub dry_run: bool,
    /// Images the restore selected (with `--dry-run`, those it would push).
    pub images_selected: u64,
    /// What was done with repository and registry settings (`--settings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsReport>,
}

impl RestoreReport {
    /// True when every selected image is in the target with its tags, and every stored
    /// setting that was to be applied was.
    pub fn is_success(&self) -> bool {
        self.images_failed.is_empty() && self.settings.as_ref().is_none_or(|s| s.failed.is_empty())
    }
}

/// Restores every selected image of `store` into `target`.
pub async fn run(
    store: &Store,
    target: &Source,
    options: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    store.ensure_exists().await?;
    target
        .registry()
        .ping()
        .await
        .map_err(|source| RestoreError::Target {
            target: target.name().to_owned(),
            source,
        })?;
    let listing = store.listing(None).await?;
    let view = inventory::view_at(store, &listing, &options.point).await?;
    let images = select(&view, options)?;
    if let Some(trusted_before) = options.trusted_before {
        let at = match &options.point {
            PointInTime::AsOf(t) => Some(*t),
            _ => None,
        };
        let records =
            trust::records_written_after(store, &listing, &view, &images, at, trusted_before)
                .await?;
        if !records.is_empty() {
            return Err(RestoreError::Untrusted {
                trusted_before,
                records,
            });
        }
    }
    let images_selected = images.len() as u64;
    let settings_options = &options.settings;
    let mut settings_plan = None;
    if settings_options.mode != SettingsMode::Off {
        let api = target
            .ecr()
            .ok_or_else(|| settings::SettingsError::NotEcr {
                target: target.name().to_owned(),
            })?;
        // Every selected repository the store knows, images or not: an empty repository
        // is restored with its settings too.
        let mut repositories = BTreeMap::new();
        for repo in listing.keys().filter(|r| options.filter.repository(r)) {
            let renamed = match &options.rename {
                Some(rule) => rule.apply(repo).map_err(|e| RestoreError::Rename {
                    rename: format!("{rule:?}"),
                    reason: format!("{repo}: {e}"),
                })?,
                None => repo.clone(),
            };
            repositories.insert(renamed, repo.clone());
        }
        for image in &images {
            repositories.insert(image.target_repository.clone(), image.repository.clone());
        }
        let at = match &options.point {
            PointInTime::AsOf(t) => Some(*t),
            PointInTime::Snapshot(_) => view.snapshot.as_ref().map(|s| s.observed_at),
            PointInTime::Latest => None,
        };
        let region = EcrRegistry::from_host(target.name()).map(|r| r.region);
        let kms = KmsKeys::from_env(region).await;
        let mut plan =
            settings::prepare(store, api, &kms, &repositories, at, settings_options).await?;
        plan.create_repositories(api, settings_options.dry_run)
            .await;
        settings_plan = Some(plan);
    }
    let images = if settings_options.mode == SettingsMode::Only || settings_options.dry_run {
        Vec::new()
    } else {
        images
    };
    push_planned(
        store,
        target,
        &images,
        options,
        reporter,
        view.snapshot.as_ref().map(|s| s.id.clone()),
        started,
        Planned {
            images_selected,
            settings: settings_plan,
        },
    )
    .await
}

/// Pushes `images` (already selected, with their target names) from `store` into
/// `target` and reports, as [`run`] does after its planning. Restore drills call it with
/// the sample they picked; it restores no settings.
pub async fn push_images(
    store: &Store,
    target: &Source,
    images: &[RestoreImage],
    options: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
    snapshot: Option<String>,
    started: Instant,
) -> Result<RestoreReport, RestoreError> {
    let planned = Planned {
        images_selected: images.len() as u64,
        settings: None,
    };
    push_planned(
        store, target, images, options, reporter, snapshot, started, planned,
    )
    .await
}

/// What [`run`] decided before any image is pushed.
struct Planned {
    images_selected: u64,
    settings: Option<settings::SettingsPlan>,
}

#[allow(clippy::too_many_arguments)]
async fn push_planned(
    store: &Store,
    target: &Source,
    images: &[RestoreImage],
    options: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
    snapshot: Option<String>,
    started: Instant,
    planned: Planned,
) -> Result<RestoreReport, RestoreError> {
    let settings_options = &options.settings;
    let Planned {
        images_selected,
        settings: settings_plan,
    } = planned;
    reporter.images_found(images.len() as u64);

    // Repositories the settings could not create are not created bare: their images fail.
    let mut refused: HashMap<RepositoryName, Arc<EcrError>> = HashMap::new();
    if let Some(plan) = &settings_plan {
        for (repo, reason) in plan.refused() {
            refused.insert(
                repo.clone(),
                Arc::new(EcrError::Invalid {
                    op: "CreateRepository",
                    target: repo.to_string(),
                    reason: reason.to_owned(),
                }),
            );
        }
    }
    let to_create: Vec<RestoreImage> = images
        .iter()
        .filter(|i| !refused.contains_key(&i.target_repository))
        .cloned()
        .collect();
    let (created, refused_plain) = create_repositories(target, &to_create).await;
    refused.extend(refused_plain);
    let engine = Engine {
        store,
        target,
        retry: options.retry,
        permits: Semaphore::new(options.blob_concurrency.max(1)),
        blob_concurrency: options.blob_concurrency.max(1),
        reporter: reporter.clone(),
        stats: Stats::default(),
        placed: Mutex::default(),
    };
    let results: Vec<(&RestoreImage, Result<bool, ImageError>)> = futures::stream::iter(images)
        .map(|image| {
            let engine = &engine;
            let refused = &refused;
            async move {
                engine.reporter.image_started(&image.repository, &image.digest);
                let result = match refused.get(&image.target_repository) {
                    Some(e) => Err(ImageError::CreateRepository {
                        repository: image.target_repository.clone(),
                        source: e.clone(),
                    }),
                    None => engine.restore_image(image).await,
                };
                if let Err(e) = &result {
                    tracing::error!(repository = %image.repository, digest = %image.digest, error = %error_chain(e), "image failed");
                }
                engine
                    .reporter
                    .image_finished(&image.repository, &image.digest, result.is_ok());
                (image, result)
            }
        })
        .buffer_unordered(options.image_concurrency.max(1))
        .collect()
        .await;

    let stats = &engine.stats;
    let registry = target.registry().stats();
    let mut report = RestoreReport {
        store: store.location(),
        target: target.name().to_owned(),
        point: options.point.to_string(),
        snapshot,
        images_restored: 0,
        images_present: 0,
        images_failed: Vec::new(),
        repositories_created: created,
        blobs_pushed: stats.blobs_pushed.load(Ordering::Relaxed),
        blobs_mounted: stats.blobs_mounted.load(Ordering::Relaxed),
        blobs_skipped: stats.blobs_skipped.load(Ordering::Relaxed),
        manifests_pushed: stats.manifests_pushed.load(Ordering::Relaxed),
        tags_pushed: stats.tags_pushed.load(Ordering::Relaxed),
        bytes_pushed: stats.bytes_pushed.load(Ordering::Relaxed),
        bytes_skipped: stats.bytes_skipped.load(Ordering::Relaxed),
        registry_requests: registry.requests.load(Ordering::Relaxed),
        retries: registry.retries.load(Ordering::Relaxed)
            + stats.blob_retries.load(Ordering::Relaxed),
        elapsed_seconds: 0.0,
        dry_run: settings_options.dry_run,
        images_selected,
        settings: None,
    };
    let mut failed_repositories = BTreeSet::new();
    for (image, _) in results.iter().filter(|(_, r)| r.is_err()) {
        failed_repositories.insert(image.target_repository.clone());
    }
    if let (Some(plan), Some(api)) = (settings_plan, target.ecr()) {
        let settings = plan
            .apply_after_images(api, settings_options, &failed_repositories)
            .await;
        for repo in &settings.repositories_created {
            if !report.repositories_created.contains(repo) {
                report.repositories_created.push(repo.clone());
            }
        }
        report.repositories_created.sort();
        report.settings = Some(settings);
    }
    report.elapsed_seconds = started.elapsed().as_millis() as f64 / 1000.0;
    for (image, result) in results {
        match result {
            Ok(true) => report.images_restored += 1,
            Ok(false) => report.images_present += 1,
            Err(e) => report.images_failed.push(FailedImage {
                repository: image.repository.clone(),
                target_repository: image.target_repository.clone(),
                digest: image.digest.clone(),
                tags: image.tags.clone(),
                error: error_chain(&e),
            }),
        }
    }
    report
        .images_failed
        .sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
    Ok(report)
}

/// Creates the ECR repositories the images need; returns those created and those refused.
async fn create_repositories(
    target: &Source,
    images: &[RestoreImage],
) -> (Vec<RepositoryName>, HashMap<RepositoryName, Arc<EcrError>>) {
    let Some(api) = target.ecr() else {
        return (Vec::new(), HashMap::new());
    };
    let repos: BTreeSet<&RepositoryName> = images.iter().map(|i| &i.target_repository).collect();
    let results: Vec<(RepositoryName, Result<bool, EcrError>)> = futures::stream::iter(repos)
        .map(|repo| async move { (repo.clone(), api.create_repository(repo).await) })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut refused = HashMap::new();
    for (repo, result) in results {
        match result {
            Ok(true) => created.push(repo),
            Ok(false) => {}
            Err(e) => {
                refused.insert(repo, Arc::new(e));
            }
        }
    }
    created.sort();
    (created, refused)
}

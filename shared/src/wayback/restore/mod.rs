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

use std::collections::{BTreeSet, HashMap};
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
use crate::source::ecr::EcrError;
use crate::source::registry::{RegistryError, RetryPolicy};
use crate::source::Source;
use crate::store::{Store, StoreError};
use crate::wayback::inventory::{self, InventoryError, PointInTime};
use crate::wayback::trust::{self, LateRecord};

pub use select::{select, Rename, RestoreImage};

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
}

impl RestoreReport {
    /// True when every selected image is in the target with its tags.
    pub fn is_success(&self) -> bool {
        self.images_failed.is_empty()
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
    push_images(
        store,
        target,
        &images,
        options,
        reporter,
        view.snapshot.as_ref().map(|s| s.id.clone()),
        started,
    )
    .await
}

/// Pushes `images` (already selected, with their target names) from `store` into
/// `target` and reports, as [`run`] does after its planning. Restore drills call it with
/// the sample they picked.
pub async fn push_images(
    store: &Store,
    target: &Source,
    images: &[RestoreImage],
    options: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
    snapshot: Option<String>,
    started: Instant,
) -> Result<RestoreReport, RestoreError> {
    reporter.images_found(images.len() as u64);

    let (created, refused) = create_repositories(target, images).await;
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
        elapsed_seconds: started.elapsed().as_millis() as f64 / 1000.0,
    };
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

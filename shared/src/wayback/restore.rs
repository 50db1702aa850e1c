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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backon::Retryable;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::error::error_chain;
use crate::filter::ImageFilter;
use crate::oci::digest::{Digest, DigestError};
use crate::oci::names::{NameError, RepositoryName, Tag};
use crate::progress::Reporter;
use crate::source::ecr::EcrError;
use crate::source::registry::{RegistryError, RetryPolicy};
use crate::source::Source;
use crate::store::records::{BlobRef, ImageRecord};
use crate::store::{Store, StoreError};
use crate::stream::VerifiedStream;
use crate::wayback::inventory::{self, InventoryError, PointInTime, TagView};
use crate::wayback::trust::{self, LateRecord};

/// ECR repositories created at once.
const CREATE_CONCURRENCY: usize = 4;

/// A restore could not start or plan; per-image failures are in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Reading the store, or resolving `--as-of`/`--snapshot`, failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The target registry refused the connection or the credentials.
    #[error("target registry {target} is not usable: {source}")]
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
    #[error("reading {repository}@{digest} from the store: {source}")]
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
    #[error("blob {blob} of {repository}@{digest} is corrupt in the store: {source}")]
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
    #[error("pushing {repository}@{digest}: {source}")]
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
    #[error("creating ECR repository {repository}: {source}")]
    CreateRepository {
        /// The repository in the target.
        repository: RepositoryName,
        /// The ECR error.
        #[source]
        source: Arc<EcrError>,
    },
}

/// A registry to restore into: the same as a source (data-plane client and, for ECR, its
/// API, used here to create repositories, which ECR does not do on push).
pub type Target = Source;

/// `--rename OLD_PREFIX=NEW_PREFIX`: repositories starting with `OLD_PREFIX` are restored
/// under `NEW_PREFIX` instead; others keep their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    from: String,
    to: String,
}

impl Rename {
    /// Parses `OLD=NEW` (`=NEW` prefixes every repository).
    pub fn parse(text: &str) -> Result<Rename, RestoreError> {
        let (from, to) = text.split_once('=').ok_or_else(|| RestoreError::Rename {
            rename: text.into(),
            reason: "expected OLD_PREFIX=NEW_PREFIX".into(),
        })?;
        Ok(Rename {
            from: from.into(),
            to: to.into(),
        })
    }

    /// The repository's name in the target.
    pub fn apply(&self, repo: &RepositoryName) -> Result<RepositoryName, NameError> {
        match repo.as_str().strip_prefix(&self.from) {
            Some(rest) => format!("{}{rest}", self.to).parse(),
            None => Ok(repo.clone()),
        }
    }
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

/// One image to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreImage {
    /// Its repository in the store.
    pub repository: RepositoryName,
    /// Its repository in the target.
    pub target_repository: RepositoryName,
    /// The manifest or index digest.
    pub digest: Digest,
    /// Tags to point at it (empty: restored by digest only).
    pub tags: Vec<Tag>,
}

/// Picks the images of `view` that the options select, grouped by image.
pub fn select(view: &TagView, options: &RestoreOptions) -> Result<Vec<RestoreImage>, RestoreError> {
    let filter = &options.filter;
    let mut by_image: BTreeMap<(RepositoryName, Digest), Vec<Tag>> = BTreeMap::new();
    for ((repo, tag), digest) in &view.tags {
        if filter.repository(repo) && filter.tag(tag) {
            by_image
                .entry((repo.clone(), digest.clone()))
                .or_default()
                .push(tag.clone());
        }
    }
    if options.include_untagged && !filter.has_tag_pattern() {
        for (repo, digests) in view.untagged() {
            if filter.repository(&repo) {
                for d in digests {
                    by_image.entry((repo.clone(), d)).or_default();
                }
            }
        }
    }
    by_image
        .into_iter()
        .map(|((repository, digest), tags)| {
            let target_repository = match &options.rename {
                Some(rule) => rule.apply(&repository).map_err(|e| RestoreError::Rename {
                    rename: format!("{}={}", rule.from, rule.to),
                    reason: format!("{repository}: {e}"),
                })?,
                None => repository.clone(),
            };
            Ok(RestoreImage {
                repository,
                target_repository,
                digest,
                tags,
            })
        })
        .collect()
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
    target: &Target,
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
    let catalog = store.catalog(None).await?;
    let view = inventory::view_at(store, &catalog, &options.point).await?;
    let images = select(&view, options)?;
    if let Some(trusted_before) = options.trusted_before {
        let at = match &options.point {
            PointInTime::AsOf(t) => Some(*t),
            _ => None,
        };
        let records =
            trust::records_written_after(store, &catalog, &view, &images, at, trusted_before)
                .await?;
        if !records.is_empty() {
            return Err(RestoreError::Untrusted {
                trusted_before,
                records,
            });
        }
    }
    reporter.images_found(images.len() as u64);

    let (created, refused) = create_repositories(target, &images).await;
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
    let results: Vec<(&RestoreImage, Result<bool, ImageError>)> = futures::stream::iter(&images)
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
        snapshot: view.snapshot.as_ref().map(|s| s.id.clone()),
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
    target: &Target,
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

/// Transfer counters of one restore.
#[derive(Debug, Default)]
struct Stats {
    blobs_pushed: AtomicU64,
    blobs_mounted: AtomicU64,
    blobs_skipped: AtomicU64,
    manifests_pushed: AtomicU64,
    tags_pushed: AtomicU64,
    bytes_pushed: AtomicU64,
    bytes_skipped: AtomicU64,
    blob_retries: AtomicU64,
}

/// Where one blob is known to be in the target, by repository. Held while the blob is
/// placed, so two images sharing it never upload it twice: the second one mounts it.
type Placement = Arc<tokio::sync::Mutex<Vec<RepositoryName>>>;

struct Engine<'a> {
    store: &'a Store,
    target: &'a Target,
    retry: RetryPolicy,
    permits: Semaphore,
    blob_concurrency: usize,
    reporter: Arc<dyn Reporter>,
    stats: Stats,
    placed: Mutex<HashMap<Digest, Placement>>,
}

/// What placing one blob did.
enum Placed {
    Pushed,
    Mounted,
    Present,
}

/// A failure inside one blob transfer, before it is attributed to its image.
#[derive(Debug)]
enum BlobError {
    Store(StoreError),
    Corrupt(DigestError),
    Registry(RegistryError),
}

impl BlobError {
    fn is_retryable(&self) -> bool {
        match self {
            // The client already retried requests; this is for broken upload bodies.
            BlobError::Registry(e) => e.is_transient(),
            BlobError::Store(e) => e.is_transient(),
            // Bytes at rest do not heal: fail the image.
            BlobError::Corrupt(_) => false,
        }
    }
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Store(e) => e.fmt(f),
            BlobError::Corrupt(e) => e.fmt(f),
            BlobError::Registry(e) => e.fmt(f),
        }
    }
}

impl Engine<'_> {
    /// Restores one image; true if anything was pushed, false if it was all there.
    async fn restore_image(&self, image: &RestoreImage) -> Result<bool, ImageError> {
        let repo = &image.repository;
        let to = &image.target_repository;
        let digest = &image.digest;
        let store_err = |source| ImageError::Store {
            repository: repo.clone(),
            digest: digest.clone(),
            source,
        };
        let registry_err = |source| ImageError::Registry {
            repository: to.clone(),
            digest: digest.clone(),
            source,
        };
        let record = self
            .store
            .image_record(repo, digest)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ImageError::NotBackedUp {
                repository: repo.clone(),
                digest: digest.clone(),
            })?;
        let registry = self.target.registry();

        // A registry accepts a manifest only once what it references is there, so an image
        // whose manifests exist needs no blob HEADs.
        let mut whole = registry
            .manifest_exists(to, digest)
            .await
            .map_err(registry_err)?;
        if whole {
            for child in &record.manifests {
                if !registry
                    .manifest_exists(to, &child.digest)
                    .await
                    .map_err(registry_err)?
                {
                    whole = false;
                    break;
                }
            }
        }
        let mut wrote = !whole;
        if whole {
            self.stats
                .bytes_skipped
                .fetch_add(record.total_size(), Ordering::Relaxed);
        } else {
            self.place_blobs(image, &record).await?;
            // Children bottom-up (the record lists parents before their children).
            for child in record.manifests.iter().rev() {
                if registry
                    .manifest_exists(to, &child.digest)
                    .await
                    .map_err(registry_err)?
                {
                    continue;
                }
                let bytes = self.manifest_bytes(image, &child.digest).await?;
                self.push_manifest(to, &child.digest.to_string(), &child.media_type, bytes)
                    .await
                    .map_err(registry_err)?;
            }
            let bytes = self.manifest_bytes(image, digest).await?;
            self.push_manifest(to, &digest.to_string(), &record.media_type, bytes)
                .await
                .map_err(registry_err)?;
        }

        // Tags last: only now is the image whole in the target.
        let mut top: Option<Bytes> = None;
        for tag in &image.tags {
            let current = registry
                .head_manifest(to, tag.as_str())
                .await
                .map_err(registry_err)?;
            if current.is_some_and(|h| &h.digest == digest) {
                continue;
            }
            let bytes = match &top {
                Some(b) => b.clone(),
                None => top
                    .insert(self.manifest_bytes(image, digest).await?)
                    .clone(),
            };
            self.push_manifest(to, tag.as_str(), &record.media_type, bytes)
                .await
                .map_err(registry_err)?;
            self.stats.tags_pushed.fetch_add(1, Ordering::Relaxed);
            wrote = true;
        }
        Ok(wrote)
    }

    /// Reads a manifest from the store, verified.
    async fn manifest_bytes(
        &self,
        image: &RestoreImage,
        manifest: &Digest,
    ) -> Result<Bytes, ImageError> {
        match self.store.read_blob(manifest).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(ImageError::Store {
                repository: image.repository.clone(),
                digest: image.digest.clone(),
                source: StoreError::NotFound {
                    key: crate::store::Layout::blob(manifest),
                },
            }),
            Err(StoreError::Verify { source, .. }) => Err(ImageError::Corrupt {
                repository: image.repository.clone(),
                digest: image.digest.clone(),
                blob: manifest.clone(),
                source,
            }),
            Err(source) => Err(ImageError::Store {
                repository: image.repository.clone(),
                digest: image.digest.clone(),
                source,
            }),
        }
    }

    async fn push_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let size = bytes.len() as u64;
        self.target
            .registry()
            .put_manifest(repo, reference, media_type, bytes)
            .await?;
        if reference.starts_with("sha256:") {
            self.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.bytes_pushed.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Places every config and layer of the image in its target repository.
    async fn place_blobs(
        &self,
        image: &RestoreImage,
        record: &ImageRecord,
    ) -> Result<(), ImageError> {
        futures::stream::iter(&record.blobs)
            .map(|blob| async move {
                self.place_blob(&image.target_repository, blob)
                    .await
                    .map_err(|e| match e {
                        BlobError::Store(source) => ImageError::Store {
                            repository: image.repository.clone(),
                            digest: image.digest.clone(),
                            source,
                        },
                        BlobError::Corrupt(source) => ImageError::Corrupt {
                            repository: image.repository.clone(),
                            digest: image.digest.clone(),
                            blob: blob.digest.clone(),
                            source,
                        },
                        BlobError::Registry(source) => ImageError::Registry {
                            repository: image.target_repository.clone(),
                            digest: image.digest.clone(),
                            source,
                        },
                    })
            })
            .buffer_unordered(self.blob_concurrency)
            .try_collect::<Vec<Placed>>()
            .await?;
        Ok(())
    }

    fn placement(&self, digest: &Digest) -> Placement {
        self.placed
            .lock()
            .expect("placement lock")
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    /// Makes one blob exist in `repo`: HEAD, else mount, else upload from the store.
    async fn place_blob(&self, repo: &RepositoryName, blob: &BlobRef) -> Result<Placed, BlobError> {
        let digest = &blob.digest;
        let placement = self.placement(digest);
        let mut known = placement.lock().await;
        let registry = self.target.registry();
        let outcome = if known.contains(repo) {
            Placed::Present
        } else {
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            if registry
                .blob_exists(repo, digest)
                .await
                .map_err(BlobError::Registry)?
            {
                Placed::Present
            } else if self.mount(repo, digest, &known).await? {
                Placed::Mounted
            } else {
                self.upload(repo, blob).await?;
                Placed::Pushed
            }
        };
        if !known.contains(repo) {
            known.push(repo.clone());
        }
        let (count, bytes) = match outcome {
            Placed::Pushed => (&self.stats.blobs_pushed, &self.stats.bytes_pushed),
            Placed::Mounted => (&self.stats.blobs_mounted, &self.stats.bytes_skipped),
            Placed::Present => (&self.stats.blobs_skipped, &self.stats.bytes_skipped),
        };
        count.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(blob.size, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn mount(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: &[RepositoryName],
    ) -> Result<bool, BlobError> {
        for source in from {
            match self
                .target
                .registry()
                .mount_blob(repo, digest, source)
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                // A registry without mounts, or a repository we may not read: upload instead.
                Err(e) => tracing::debug!(repository = %repo, %digest, error = %e, "mount refused"),
            }
        }
        Ok(false)
    }

    /// Uploads a blob from the store, verified as it streams; retried by reopening.
    async fn upload(&self, repo: &RepositoryName, blob: &BlobRef) -> Result<(), BlobError> {
        let digest = &blob.digest;
        let size = match blob.size {
            0 => self
                .store
                .blob_size(digest)
                .await
                .map_err(BlobError::Store)?
                .ok_or_else(|| {
                    BlobError::Store(StoreError::NotFound {
                        key: crate::store::Layout::blob(digest),
                    })
                })?,
            size => size,
        };
        let attempt = || async {
            let stream = self
                .store
                .open_blob(digest)
                .await
                .map_err(BlobError::Store)?;
            let reporter = self.reporter.clone();
            let counted = stream.inspect_ok(move |c| reporter.bytes_transferred(c.len() as u64));
            let (verified, failure) =
                VerifiedStream::new(Box::pin(counted), digest.clone(), Some(size));
            match self
                .target
                .registry()
                .push_blob(repo, digest, size, Box::pin(verified))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => match failure.lock().expect("failure lock").take() {
                    Some(mismatch) => Err(BlobError::Corrupt(mismatch)),
                    None => Err(BlobError::Registry(e)),
                },
            }
        };
        attempt
            .retry(self.retry.backoff())
            .when(BlobError::is_retryable)
            .notify(|e, delay| {
                self.stats.blob_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(repository = %repo, %digest, error = %e, delay_ms = delay.as_millis() as u64, "retrying blob upload");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rewrites_prefixes_only() {
        let rule = Rename::parse("team/=restored/team/").unwrap();
        let r = |s: &str| s.parse::<RepositoryName>().unwrap();
        assert_eq!(rule.apply(&r("team/app")).unwrap(), r("restored/team/app"));
        assert_eq!(rule.apply(&r("other")).unwrap(), r("other"));
        assert!(Rename::parse("nothing").is_err());
        assert!(Rename::parse("a=B/").unwrap().apply(&r("a/x")).is_err());
        assert_eq!(
            Rename::parse("=dr/").unwrap().apply(&r("x")).unwrap(),
            r("dr/x")
        );
    }
}

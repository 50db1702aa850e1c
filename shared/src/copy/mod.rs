//! The copy engine: one image, with everything it reaches, from a registry into a store.
//!
//! Order of writes, which is what keeps a store consistent after a crash at any point:
//! blobs (configs, layers) → child manifests → the top manifest → the image record → tag
//! records. Every blob is verified before it becomes visible, so a record never points at
//! a missing or corrupt blob.
//!
//! Owns: copying one image, its referrers and tags, with bounded transfers and retries of
//! broken bodies. May use: `source` (to pull), `store` (to write), and the root modules.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backon::Retryable;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

pub use crate::failure::FailureKind;
use crate::oci::digest::Digest;
use crate::oci::manifest::{self, ManifestError};
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::{NoProgress, Reporter};
use crate::source::registry::{RegistryClient, RegistryError, RetryPolicy};
use crate::source::Source;
use crate::store::records::{BlobRef, ChildManifest, ImageRecord, TagRecord, RECORD_VERSION};
use crate::store::{RepositoryListing, Store, StoreError, WriteOutcome};

/// Deepest nesting of indexes followed (an index of indexes of manifests is depth 2).
const MAX_INDEX_DEPTH: usize = 4;
/// Deepest chain of referrers followed (a signature of an SBOM of an image is 2).
const MAX_REFERRER_DEPTH: usize = 2;

/// Why an image could not be copied; names the image and what failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The registry failed or refused.
    #[error("copying {repository}@{digest}")]
    Registry {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// The store failed, or refused bytes that did not match their digest.
    #[error("copying {repository}@{digest}")]
    Store {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// A manifest could not be understood.
    #[error("copying {repository}@{digest}")]
    Manifest {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The parser's complaint.
        #[source]
        source: ManifestError,
    },
    /// Indexes nest deeper than this tool follows, or an index includes itself.
    #[error("copying {repository}@{digest}: index nesting deeper than {MAX_INDEX_DEPTH} or cyclic at {at}")]
    TooDeep {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// The manifest where it stopped.
        at: Digest,
    },
    /// The image asked for does not exist at the source: its top manifest answered 404.
    #[error("copying {repository}@{digest}: the registry has no such image (its manifest was not found, HTTP 404)")]
    Gone {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
    /// The image exists, but something it references does not: a child manifest of an
    /// index, a config or layer blob, or a referrer the registry listed.
    #[error("copying {repository}@{digest}: {what} {missing} is missing from the registry (not found, HTTP 404)")]
    Missing {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
        /// What is missing (`child manifest`, `blob`, `referrer`).
        what: &'static str,
        /// Its digest.
        missing: Digest,
    },
    /// The image is in ECR's archive storage class and cannot be pulled until restored.
    #[error("{repository}@{digest} is archived in ECR; restore it to ACTIVE to back it up")]
    Archived {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
}

impl CopyError {
    /// The kind of this failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            CopyError::Gone { .. } => FailureKind::Gone,
            CopyError::Missing { .. } => FailureKind::MissingReferenced,
            CopyError::Archived { .. } => FailureKind::Archived,
            CopyError::Registry { source, .. } => source.kind(),
            CopyError::Store { source, .. } => match source {
                StoreError::Verify { .. } | StoreError::CorruptRecord { .. } => {
                    FailureKind::Corrupt
                }
                e if e.is_transient() => FailureKind::Transient,
                _ => FailureKind::Refused,
            },
            CopyError::Manifest { .. } | CopyError::TooDeep { .. } => FailureKind::Corrupt,
        }
    }

    /// True when trying again later may succeed (throttling, 5xx, broken transfers).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), FailureKind::Throttled | FailureKind::Transient)
    }
}

/// Limits of one engine.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// Blob transfers in flight across all images (bounds memory and connections).
    pub blob_concurrency: usize,
    /// Follow the registry's referrers API (signatures, SBOMs) when it has one.
    pub copy_referrers: bool,
    /// Retries of one blob transfer after a transient failure or a digest mismatch.
    pub retry: RetryPolicy,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            blob_concurrency: 8,
            copy_referrers: true,
            // A blob transfer's one retry layer (request, body and digest together).
            retry: RetryPolicy {
                max_retries: 3,
                ..RetryPolicy::default()
            },
        }
    }
}

/// One image to copy: what the source registry showed at `observed_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// The repository.
    pub repository: RepositoryName,
    /// The manifest or index digest.
    pub digest: Digest,
    /// Tags seen on it.
    pub tags: Vec<Tag>,
    /// When the registry was seen in that state.
    pub observed_at: DateTime<Utc>,
}

/// What copying one image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image was copied by this call.
    Copied {
        /// Media type of its top manifest (what `index.json` lists).
        media_type: String,
        /// Size of its top manifest in bytes.
        size: u64,
    },
    /// It was in the store already; only missing tag records (if any) were written.
    AlreadyPresent,
}

/// Transfer counters, shared by all images of a run.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// Blobs and manifests written.
    pub blobs_copied: AtomicU64,
    /// Blobs found in the store already (by HEAD or stat, never downloaded).
    pub blobs_skipped: AtomicU64,
    /// Bytes written.
    pub bytes_copied: AtomicU64,
    /// Bytes not transferred because the blob was present.
    pub bytes_skipped: AtomicU64,
    /// Blob transfers retried.
    pub blob_retries: AtomicU64,
}

/// Copies images from one registry into one store.
#[derive(Clone)]
pub struct CopyEngine {
    registry: RegistryClient,
    store: Store,
    source_name: String,
    options: CopyOptions,
    permits: Arc<Semaphore>,
    in_flight: Arc<InFlight>,
    known: Arc<KnownBlobs>,
    reporter: Arc<dyn Reporter>,
    stats: Arc<CopyStats>,
}

/// Blobs being copied right now, so that images sharing a layer download it once: the
/// second waits for the first, then finds the blob in the store.
#[derive(Default)]
struct InFlight(std::sync::Mutex<std::collections::HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

impl InFlight {
    fn lock_for(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .expect("in-flight map")
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    fn release(&self, digest: &Digest, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.0.lock().expect("in-flight map");
        // Two holders left (the map and this caller) means nobody else waits on it.
        if Arc::strong_count(&lock) <= 2 {
            map.remove(digest);
        }
    }
}

/// Blobs this engine found in the store or wrote, with their sizes, so that a layer
/// shared by many images is looked up once per engine rather than once per image (many
/// corpus: 2 of the 4 store lookups per image, see docs/performance.md).
#[derive(Default)]
struct KnownBlobs(std::sync::Mutex<std::collections::HashMap<Digest, (u64, std::time::Instant)>>);

/// Entries kept at most (about 150 bytes each).
const KNOWN_BLOBS_MAX: usize = 100_000;

/// How long a lookup is trusted. The pipeline never deletes from a store, but an
/// operator's retention command may, and a worker's engine lives as long as its Lambda
/// container: after this long a blob is looked up again (one invocation lasts 15 minutes
/// at most, and one image copy has always relied on one lookup for as long).
const KNOWN_BLOBS_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl KnownBlobs {
    fn size(&self, digest: &Digest) -> Option<u64> {
        let map = self.0.lock().expect("known blobs");
        let &(size, at) = map.get(digest)?;
        (at.elapsed() < KNOWN_BLOBS_TTL).then_some(size)
    }

    fn insert(&self, digest: &Digest, size: u64) {
        let mut map = self.0.lock().expect("known blobs");
        if map.len() >= KNOWN_BLOBS_MAX {
            map.retain(|_, (_, at)| at.elapsed() < KNOWN_BLOBS_TTL);
        }
        if map.len() < KNOWN_BLOBS_MAX {
            map.insert(digest.clone(), (size, std::time::Instant::now()));
        }
    }
}

/// A manifest fetched while walking an image, kept until its children are stored.
struct WalkedManifest {
    digest: Digest,
    bytes: Bytes,
    media_type: String,
    platform: Option<String>,
}

impl CopyEngine {
    /// An engine copying from `source` into `store`, with the default [`CopyOptions`] and
    /// no progress reporting; the one way every caller builds an engine.
    pub fn for_source(source: &Source, store: Store) -> CopyEngine {
        let options = CopyOptions::default();
        CopyEngine {
            registry: source.registry().clone(),
            store,
            source_name: source.name().to_owned(),
            permits: Arc::new(Semaphore::new(options.blob_concurrency.max(1))),
            in_flight: Arc::default(),
            known: Arc::default(),
            options,
            reporter: Arc::new(NoProgress),
            stats: Arc::default(),
        }
    }

    /// The same engine with other limits.
    pub fn with_options(mut self, options: CopyOptions) -> CopyEngine {
        self.permits = Arc::new(Semaphore::new(options.blob_concurrency.max(1)));
        self.options = options;
        self
    }

    /// The same engine, reporting progress to `reporter`.
    pub fn with_reporter(mut self, reporter: Arc<dyn Reporter>) -> CopyEngine {
        self.reporter = reporter;
        self
    }

    /// Transfer counters so far.
    pub fn stats(&self) -> &CopyStats {
        &self.stats
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Copies one image and records its tags. `known` is what a listing of the repository
    /// showed beforehand (saves a request per image); without it the store is asked.
    pub async fn copy_image(
        &self,
        request: &CopyRequest,
        known: Option<&RepositoryListing>,
    ) -> Result<ImageOutcome, CopyError> {
        self.copy_image_at_depth(request, known, 0).await
    }

    async fn copy_image_at_depth(
        &self,
        request: &CopyRequest,
        known: Option<&RepositoryListing>,
        referrer_depth: usize,
    ) -> Result<ImageOutcome, CopyError> {
        let repo = &request.repository;
        let digest = &request.digest;
        let store_err = |source| CopyError::Store {
            repository: repo.clone(),
            digest: digest.clone(),
            source,
        };
        let present = match known {
            Some(listing) => listing.images.contains_key(digest),
            None => self
                .store
                .image_record(repo, digest)
                .await
                .map_err(store_err)?
                .is_some(),
        };
        let outcome = if present {
            ImageOutcome::AlreadyPresent
        } else {
            let (media_type, size) = self.copy_new_image(request).await?;
            if self.options.copy_referrers && referrer_depth < MAX_REFERRER_DEPTH {
                self.copy_referrers(request, referrer_depth).await?;
            }
            ImageOutcome::Copied { media_type, size }
        };
        self.record_tags(request, known).await.map_err(store_err)?;
        Ok(outcome)
    }

    async fn record_tags(
        &self,
        request: &CopyRequest,
        known: Option<&RepositoryListing>,
    ) -> Result<(), StoreError> {
        if request.tags.is_empty() {
            return Ok(());
        }
        let listed;
        let listing = match known {
            Some(c) => c,
            None => {
                listed = self.store.listing(Some(&request.repository)).await?;
                match listed.get(&request.repository) {
                    Some(c) => c,
                    None => &RepositoryListing::default(),
                }
            }
        };
        for tag in &request.tags {
            // The tag log only needs an entry when the tag's latest known state differs.
            let current = listing.tag_as_of(tag, None);
            if current.is_some_and(|c| c.digest == request.digest) {
                continue;
            }
            self.store
                .put_tag_record(&TagRecord {
                    version: RECORD_VERSION,
                    repository: request.repository.clone(),
                    tag: tag.clone(),
                    digest: request.digest.clone(),
                    observed_at: request.observed_at,
                })
                .await?;
        }
        Ok(())
    }

    /// Copies an image the store has no record of; returns its top manifest's media type
    /// and size.
    async fn copy_new_image(&self, request: &CopyRequest) -> Result<(String, u64), CopyError> {
        let repo = &request.repository;
        let digest = &request.digest;
        let registry_err = |source| CopyError::Registry {
            repository: repo.clone(),
            digest: digest.clone(),
            source,
        };
        let store_err = |source| CopyError::Store {
            repository: repo.clone(),
            digest: digest.clone(),
            source,
        };
        self.reporter.image_started(repo, digest);

        // Walk the manifest tree top-down, collecting every blob it reaches.
        let mut walked: Vec<WalkedManifest> = Vec::new();
        let mut blobs: BTreeMap<Digest, BlobRef> = BTreeMap::new();
        let mut queue = vec![(digest.clone(), None::<String>, None::<String>, 0usize)];
        let mut seen = HashSet::new();
        let mut subject = None;
        while let Some((manifest_digest, declared_type, platform, depth)) = queue.pop() {
            if depth > MAX_INDEX_DEPTH {
                return Err(CopyError::TooDeep {
                    repository: repo.clone(),
                    digest: digest.clone(),
                    at: manifest_digest,
                });
            }
            // A manifest named twice (one manifest for two platforms, indexes sharing a
            // child) is walked once. No cycle can be built from verified digests, and the
            // depth limit bounds the walk whatever the input.
            if !seen.insert(manifest_digest.clone()) {
                continue;
            }
            let (bytes, header_type) = match self.fetch_manifest(repo, &manifest_digest).await {
                Ok(fetched) => fetched,
                // The kind is decided here, where it is known which manifest was asked for:
                // the image itself is gone, or only something it references is missing.
                Err(RegistryError::NotFound { .. }) if depth == 0 => {
                    return Err(CopyError::Gone {
                        repository: repo.clone(),
                        digest: digest.clone(),
                    })
                }
                Err(RegistryError::NotFound { .. }) => {
                    return Err(CopyError::Missing {
                        repository: repo.clone(),
                        digest: digest.clone(),
                        what: "child manifest",
                        missing: manifest_digest,
                    })
                }
                Err(e) => return Err(registry_err(e)),
            };
            let parsed = manifest::parse(
                &manifest_digest,
                &bytes,
                header_type.as_deref().or(declared_type.as_deref()),
            )
            .map_err(|source| CopyError::Manifest {
                repository: repo.clone(),
                digest: digest.clone(),
                source,
            })?;
            if depth == 0 {
                subject = parsed.subject.as_ref().map(|s| s.digest.clone());
            }
            for child in &parsed.manifests {
                queue.push((
                    child.digest.clone(),
                    child.media_type.clone(),
                    child.platform.clone(),
                    depth + 1,
                ));
            }
            for blob in &parsed.blobs {
                blobs.entry(blob.digest.clone()).or_insert_with(|| BlobRef {
                    digest: blob.digest.clone(),
                    size: blob.size.unwrap_or(0),
                    media_type: blob.media_type.clone(),
                });
            }
            walked.push(WalkedManifest {
                digest: manifest_digest,
                bytes,
                media_type: parsed.media_type,
                platform,
            });
        }

        // Blobs, in parallel within the engine's global limit.
        let blob_list: Vec<BlobRef> = blobs.into_values().collect();
        // Owned items: closures over borrowed ones are not `Send` for every lifetime,
        // which a spawned worker task needs.
        // Each blob runs on its own task: hashing is the main CPU cost of a transfer, and
        // on one task every blob of every image was hashed on one core (big image: 1.34 s
        // on 2 cores before, see docs/performance.md).
        let sizes: Vec<u64> = futures::stream::iter(blob_list.clone())
            .map(|b| {
                let (engine, repo) = (self.clone(), repo.clone());
                on_own_task(async move {
                    engine
                        .copy_blob(&repo, &b.digest, (b.size > 0).then_some(b.size))
                        .await
                        .map_err(|e| (b.digest, e))
                })
            })
            .buffered(self.options.blob_concurrency.max(1))
            .try_collect()
            .await
            .map_err(|(blob, e)| match e {
                FetchError::Registry(RegistryError::NotFound { .. }) => CopyError::Missing {
                    repository: repo.clone(),
                    digest: digest.clone(),
                    what: "blob",
                    missing: blob,
                },
                FetchError::Registry(source) => registry_err(source),
                FetchError::Store(source) => store_err(source),
            })?;
        let blob_list: Vec<BlobRef> = blob_list
            .into_iter()
            .zip(sizes)
            .map(|(b, size)| BlobRef { size, ..b })
            .collect();

        // Manifests bottom-up: children before the index that names them.
        for m in walked.iter().rev() {
            let outcome = self
                .store
                .put_blob_bytes(&m.digest, m.bytes.clone())
                .await
                .map_err(store_err)?;
            self.count(outcome, m.bytes.len() as u64);
        }

        let top = &walked[0];
        let record = ImageRecord {
            version: RECORD_VERSION,
            repository: repo.clone(),
            digest: digest.clone(),
            media_type: top.media_type.clone(),
            size: top.bytes.len() as u64,
            tags: request.tags.clone(),
            manifests: walked[1..]
                .iter()
                .map(|m| ChildManifest {
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    media_type: m.media_type.clone(),
                    platform: m.platform.clone(),
                })
                .collect(),
            blobs: blob_list,
            subject,
            source: self.source_name.clone(),
            backed_up_at: Utc::now(),
        };
        self.store
            .put_image_record(&record)
            .await
            .map_err(store_err)?;
        Ok((record.media_type, record.size))
    }

    /// A manifest's bytes, from the registry. The store is not asked first: this runs
    /// only for images the store has no record of, whose manifests it rarely holds, and
    /// asking cost a GET per new image (an S3 request for a few KiB the registry serves
    /// as cheaply; see docs/performance.md).
    async fn fetch_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<(Bytes, Option<String>), RegistryError> {
        // The client's fetch is the one retry layer: requests, bodies and digests.
        let fetched = self
            .registry
            .get_manifest(repo, &digest.to_string())
            .await?;
        Ok((fetched.bytes, fetched.media_type))
    }

    fn count(&self, outcome: WriteOutcome, size: u64) {
        let (blobs, bytes) = match outcome {
            WriteOutcome::Written => (&self.stats.blobs_copied, &self.stats.bytes_copied),
            WriteOutcome::AlreadyExists => (&self.stats.blobs_skipped, &self.stats.bytes_skipped),
        };
        blobs.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Copies one blob unless the store has it; returns its size.
    async fn copy_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64, FetchError> {
        if let Some(stored) = self.known.size(digest) {
            self.count(WriteOutcome::AlreadyExists, stored);
            return Ok(stored);
        }
        if let Some(stored) = self
            .store
            .blob_size(digest)
            .await
            .map_err(FetchError::Store)?
        {
            self.known.insert(digest, stored);
            self.count(WriteOutcome::AlreadyExists, stored);
            return Ok(stored);
        }
        let lock = self.in_flight.lock_for(digest);
        let result = async {
            // Another image may have copied it while this one waited: look again then,
            // and only then (an S3 HEAD per new blob saved, see docs/performance.md).
            let _guard = match lock.try_lock() {
                // Free at once, yet another image may have finished this blob between this
                // one's store lookup and now (and released its lock, so this is a new
                // one): the engine's own record of what it wrote says so for free. Without
                // this, a slow lookup under load let one process download a blob twice.
                Ok(guard) => {
                    if let Some(stored) = self.known.size(digest) {
                        self.count(WriteOutcome::AlreadyExists, stored);
                        return Ok(stored);
                    }
                    guard
                }
                Err(_) => {
                    let guard = lock.lock().await;
                    let stored = match self.known.size(digest) {
                        Some(stored) => Some(stored),
                        None => self
                            .store
                            .blob_size(digest)
                            .await
                            .map_err(FetchError::Store)?,
                    };
                    if let Some(stored) = stored {
                        self.count(WriteOutcome::AlreadyExists, stored);
                        return Ok(stored);
                    }
                    guard
                }
            };
            let stored = self.transfer_blob(repo, digest, size).await?;
            self.known.insert(digest, stored);
            Ok(stored)
        }
        .await;
        self.in_flight.release(digest, lock);
        result
    }

    /// Streams one blob from the registry into the store, retrying broken transfers.
    async fn transfer_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64, FetchError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let attempt = || async {
            let stream = self
                .registry
                .get_blob(repo, digest)
                .await
                .map_err(FetchError::Registry)?;
            let reporter = self.reporter.clone();
            let counted =
                stream.inspect_ok(move |chunk| reporter.bytes_transferred(chunk.len() as u64));
            let outcome = self
                .store
                .put_blob(digest, size, Box::pin(counted))
                .await
                .map_err(FetchError::Store)?;
            Ok::<_, FetchError>(outcome)
        };
        // The one retry layer of a blob: the request (429, 5xx, connection), the body and
        // the digest are all retried here, within the engine's policy.
        let max_delay = self.options.retry.max_delay;
        let outcome = attempt
            .retry(self.options.retry.backoff())
            .when(FetchError::is_retryable)
            .adjust(|e, delay| {
                delay.map(|d| e.retry_after().map_or(d, |ra| ra.min(max_delay)))
            })
            .notify(|e, delay| {
                self.stats.blob_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(repository = %repo, %digest, error = %crate::error::error_chain(&e), delay_ms = delay.as_millis() as u64, "retrying blob transfer");
            })
            .await?;
        let stored = match size {
            Some(s) => s,
            None => self
                .store
                .blob_size(digest)
                .await
                .map_err(FetchError::Store)?
                .unwrap_or(0),
        };
        tracing::debug!(repository = %repo, %digest, size = stored, written = outcome == WriteOutcome::Written, "blob transferred");
        self.count(outcome, stored);
        Ok(stored)
    }

    async fn copy_referrers(&self, request: &CopyRequest, depth: usize) -> Result<(), CopyError> {
        let referrers = self
            .registry
            .referrers(&request.repository, &request.digest)
            .await
            .map_err(|source| CopyError::Registry {
                repository: request.repository.clone(),
                digest: request.digest.clone(),
                source,
            })?;
        for referrer in referrers.unwrap_or_default() {
            let child = CopyRequest {
                repository: request.repository.clone(),
                digest: referrer.digest,
                tags: Vec::new(),
                observed_at: request.observed_at,
            };
            match Box::pin(self.copy_image_at_depth(&child, None, depth + 1)).await {
                Ok(_) => {}
                // Listed by the registry, then not served: missing, not "gone" (the image
                // asked for exists).
                Err(CopyError::Gone { digest, .. }) => {
                    return Err(CopyError::Missing {
                        repository: request.repository.clone(),
                        digest: request.digest.clone(),
                        what: "referrer",
                        missing: digest,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Runs `future` on a task of its own, so that it may run on another worker thread; the
/// task is aborted when the returned future is dropped (an image failing on another blob),
/// as the future itself would have been, and a panic in it is passed on.
async fn on_own_task<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(future));
    match (&mut task.0).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => unreachable!("a blob task is only cancelled with its caller: {e}"),
    }
}

/// A failure inside one transfer, before it is attributed to its image.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Store(StoreError),
}

impl FetchError {
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            FetchError::Registry(e) => e.retry_after(),
            FetchError::Store(_) => None,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Registry(e) => e.is_transient(),
            // A mismatch may be a corrupted transfer: fetch again, within the policy.
            FetchError::Store(StoreError::Verify { .. }) => true,
            FetchError::Store(e) => e.is_transient(),
        }
    }
}

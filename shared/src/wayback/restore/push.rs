//! Pushing one image from the store into the target registry: blobs (mounted when this
//! restore already placed them in another repository, HEADed first otherwise), then
//! child manifests, the top manifest by digest, and its tags.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backon::Retryable;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use crate::oci::digest::{Digest, DigestError};
use crate::oci::names::RepositoryName;
use crate::progress::Reporter;
use crate::source::registry::{RegistryError, RetryPolicy};
use crate::source::Source;
use crate::store::records::{BlobRef, ImageRecord};
use crate::store::{Store, StoreError};
use crate::stream::VerifiedStream;

use super::{ImageError, RestoreImage};

/// Transfer counters of one restore.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) blobs_pushed: AtomicU64,
    pub(super) blobs_mounted: AtomicU64,
    pub(super) blobs_skipped: AtomicU64,
    pub(super) manifests_pushed: AtomicU64,
    pub(super) tags_pushed: AtomicU64,
    pub(super) bytes_pushed: AtomicU64,
    pub(super) bytes_skipped: AtomicU64,
    pub(super) blob_retries: AtomicU64,
}

/// Where one blob is known to be in the target, by repository. Held while the blob is
/// placed, so two images sharing it never upload it twice: the second one mounts it.
type Placement = Arc<tokio::sync::Mutex<Vec<RepositoryName>>>;

pub(super) struct Engine<'a> {
    pub(super) store: &'a Store,
    pub(super) target: &'a Source,
    pub(super) retry: RetryPolicy,
    pub(super) permits: Semaphore,
    pub(super) blob_concurrency: usize,
    pub(super) reporter: Arc<dyn Reporter>,
    pub(super) stats: Stats,
    pub(super) placed: Mutex<HashMap<Digest, Placement>>,
}

/// What placing one blob did.
enum Placed {
    Pushed,
    Mounted,
    Present,
}

/// A failure inside one blob transfer, before it is attributed to its image.
#[derive(Debug, thiserror::Error)]
enum BlobError {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Corrupt(DigestError),
    #[error(transparent)]
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

impl Engine<'_> {
    /// Restores one image; true if anything was pushed, false if it was all there.
    pub(super) async fn restore_image(&self, image: &RestoreImage) -> Result<bool, ImageError> {
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
                Err(e) => {
                    tracing::debug!(repository = %repo, %digest, error = %crate::error::error_chain(&e), "mount refused")
                }
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
                tracing::warn!(repository = %repo, %digest, error = %crate::error::error_chain(&e), delay_ms = delay.as_millis() as u64, "retrying blob upload");
            })
            .await
    }
}

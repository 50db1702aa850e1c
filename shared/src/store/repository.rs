//! [`Store`]: the backup repository laid out on a [`Backend`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::layout::{self, Layout};
use super::{
    stream_of, Backend, ByteStream, DirBackend, S3Backend, S3Location, StoreError, WriteOutcome,
};
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::records::{
    latest_instant, DeletionRecord, ImageRecord, TagRecord, SNAPSHOT_VERSION,
};

/// How long a leftover of an interrupted write must have been untouched before it is
/// removed: far longer than any live write goes without touching its file.
pub const LEFTOVER_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where a store lives, parsed from what a user typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory (a plain path or `file://`).
    Dir(PathBuf),
    /// An S3 bucket and prefix (`s3://bucket/prefix`).
    S3(S3Location),
}

impl StoreLocation {
    /// Parses a path, `file://PATH` or `s3://bucket/prefix`; other schemes are refused.
    pub fn parse(text: &str) -> Result<StoreLocation, StoreError> {
        if text.starts_with("s3://") {
            return Ok(StoreLocation::S3(S3Location::parse(text)?));
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(StoreLocation::Dir(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(StoreError::InvalidLocation {
                location: text.into(),
                reason: format!(
                    "unknown scheme {scheme:?}: use a directory path or s3://bucket/prefix"
                ),
            });
        }
        if text.is_empty() {
            return Err(StoreError::InvalidLocation {
                location: text.into(),
                reason: "empty".into(),
            });
        }
        Ok(StoreLocation::Dir(PathBuf::from(text)))
    }
}

/// One tag observation, as listed from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    /// The image the tag pointed at.
    pub digest: Digest,
    /// When the registry was seen so.
    pub observed_at: DateTime<Utc>,
    /// When the record was written, by the store's clock (S3 `LastModified`): unlike
    /// `observed_at`, not chosen by the writer.
    pub written_at: DateTime<Utc>,
}

/// Orders one tag's observations oldest first, as every reader must (`docs/format.md`,
/// "Tags as of time T"): by [`latest_instant`], so that an ECR event of a whole second
/// comes after a run's exact observation within that second. Records of equal time (two
/// pushes of one tag in the same whole second, which ECR events cannot tell apart) are
/// ordered by digest, so that every reader picks the same one; the next run's listing
/// settles which is current.
pub fn sort_observations(entries: &mut [TagEntry]) {
    entries.sort_by(|a, b| {
        (latest_instant(a.observed_at), &a.digest).cmp(&(latest_instant(b.observed_at), &b.digest))
    });
}

/// What the store holds for one repository, from a single listing.
#[derive(Debug, Clone, Default)]
pub struct RepositoryListing {
    /// Images backed up (image record present), with the record's write time (by the
    /// store's clock).
    pub images: BTreeMap<Digest, DateTime<Utc>>,
    /// Every observation of every tag, oldest first.
    pub tags: BTreeMap<Tag, Vec<TagEntry>>,
    /// Images recorded as deleted from the source.
    pub deleted: BTreeMap<Digest, DateTime<Utc>>,
}

impl RepositoryListing {
    /// The latest observation of `tag` at or before `at` (or ever, when `at` is `None`).
    pub fn tag_as_of(&self, tag: &Tag, at: Option<DateTime<Utc>>) -> Option<&TagEntry> {
        self.tags
            .get(tag)?
            .iter()
            .rev()
            .find(|e| at.is_none_or(|at| e.observed_at <= at))
    }
}

/// Everything the store holds, by repository, from one listing of `repositories/`.
pub type Listing = BTreeMap<RepositoryName, RepositoryListing>;

/// A backup repository on a backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Whether this handle's writer holds a write lease (`store/locks.rs`); shared by
    /// every clone, so the copy engine's handle is checked too.
    pub(super) gate: super::locks::SharedGate,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend.location())
    }
}

const OCI_LAYOUT_BYTES: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Store {
    /// A store on the given backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            gate: Default::default(),
        }
    }

    /// Opens the store at `location`, building an S3 client from the environment if needed.
    pub async fn open(location: &StoreLocation) -> Store {
        match location {
            StoreLocation::Dir(path) => Store::new(Arc::new(DirBackend::new(path.clone()))),
            StoreLocation::S3(loc) => {
                let client = S3Backend::client_from_env().await;
                Store::new(Arc::new(S3Backend::new(client, loc.clone())))
            }
        }
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The backend underneath.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Makes the location a store: writes `oci-layout` and an empty `index.json` if missing.
    pub async fn init(&self) -> Result<(), StoreError> {
        self.mark_as_store().await?;
        if self.backend.stat(layout::INDEX_JSON).await?.is_none() {
            self.write_index(&[]).await?;
        }
        Ok(())
    }

    /// Writes the `oci-layout` file if missing, which makes the location a store to every
    /// reader ([`Store::ensure_exists`]).
    ///
    /// Every writer does this, not only the fan-out: push events reach the worker from the
    /// moment the stack is deployed, possibly before the first run, and a store holding
    /// their images must be readable then. Writers race only to write the same bytes.
    /// `index.json` is left to [`Store::init`]: it is rewritten by runs, and a writer that
    /// found it missing could otherwise replace a run's index with an empty one.
    pub async fn mark_as_store(&self) -> Result<(), StoreError> {
        if self.backend.stat(layout::OCI_LAYOUT).await?.is_none() {
            self.backend
                .write(layout::OCI_LAYOUT, Bytes::from_static(OCI_LAYOUT_BYTES))
                .await?;
        }
        Ok(())
    }

    /// Removes what writes interrupted at least [`LEFTOVER_IDLE`] ago left behind (see
    /// [`Backend::remove_leftovers`]); returns how many.
    pub async fn remove_leftovers(&self) -> Result<u64, StoreError> {
        self.backend.remove_leftovers(LEFTOVER_IDLE).await
    }

    /// Fails with `NotAStore` unless the location holds a store.
    pub async fn ensure_exists(&self) -> Result<(), StoreError> {
        match self.backend.stat(layout::OCI_LAYOUT).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotAStore {
                location: self.location(),
            }),
        }
    }

    /// Size of a stored blob, or `None`.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.backend.stat(&Layout::blob(digest)).await
    }

    /// Streams a blob in; visible only once verified (see [`Backend::write_verified`]).
    pub async fn put_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        let key = Layout::blob(digest);
        self.gate.check(&key)?;
        self.backend.write_verified(&key, digest, size, bytes).await
    }

    /// Stores a small blob (a manifest) held in memory.
    pub async fn put_blob_bytes(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<WriteOutcome, StoreError> {
        let size = bytes.len() as u64;
        self.put_blob(digest, Some(size), stream_of(bytes)).await
    }

    /// Reads a small blob whole and checks its digest; `None` when absent.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let key = Layout::blob(digest);
        let Some(bytes) = self.backend.read(&key).await? else {
            return Ok(None);
        };
        digest
            .verify(&bytes)
            .map_err(|source| StoreError::Verify { key, source })?;
        Ok(Some(bytes))
    }

    /// Streams a blob out. The caller verifies the digest as it reads.
    pub async fn open_blob(&self, digest: &Digest) -> Result<ByteStream, StoreError> {
        self.backend.open(&Layout::blob(digest)).await
    }

    /// Reads the record of an image, if it was backed up.
    pub async fn image_record(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ImageRecord>, StoreError> {
        self.read_json(&Layout::image(repo, digest)).await
    }

    /// Writes an image record once. A record already there for the same image is
    /// success: it was written by a concurrent copy of the same content-addressed image
    /// (a duplicate delivery), after the same blobs, and only its write time differs.
    pub async fn put_image_record(&self, record: &ImageRecord) -> Result<(), StoreError> {
        self.write_json_once(
            &Layout::image(&record.repository, &record.digest),
            record,
            Existing::Kept,
        )
        .await
        .map(drop)
    }

    /// Appends a tag observation.
    pub async fn put_tag_record(&self, record: &TagRecord) -> Result<(), StoreError> {
        let key = Layout::tag(
            &record.repository,
            &record.tag,
            &record.digest,
            record.observed_at,
        );
        // The key holds every field, so a record already there must be this one.
        self.write_json_once(&key, record, Existing::MustMatch)
            .await
            .map(drop)
    }

    /// Records that an image was deleted from the source. The first deletion record of
    /// an image is kept (a second event for the same image, such as another tag's
    /// deletion, adds nothing a reader needs).
    pub async fn put_deletion_record(&self, record: &DeletionRecord) -> Result<(), StoreError> {
        self.write_json_once(
            &Layout::deletion(&record.repository, &record.digest),
            record,
            Existing::Kept,
        )
        .await
        .map(drop)
    }

    /// Lists what the store holds, for every repository or for one. For one repository
    /// only its own three record prefixes are listed (its prefix also holds the records
    /// of every repository named `<repo>/...`, which are not read).
    pub async fn listing(&self, only: Option<&RepositoryName>) -> Result<Listing, StoreError> {
        let objects = match only {
            Some(repo) => {
                let [images, tags, deleted] = Layout::record_prefixes(repo);
                let (images, tags, deleted) = futures::try_join!(
                    self.backend.list(&images),
                    self.backend.list(&tags),
                    self.backend.list(&deleted)
                )?;
                let mut all = images;
                all.extend(tags);
                all.extend(deleted);
                all
            }
            None => self.backend.list(layout::REPOSITORIES_PREFIX).await?,
        };
        let mut listing = Listing::new();
        for object in objects {
            let Some((repo, kind, rest)) = Layout::split_record_key(&object.key) else {
                continue;
            };
            if only.is_some_and(|o| o != &repo) {
                continue;
            }
            let entry = listing.entry(repo).or_default();
            match kind {
                "_images" => {
                    if let Some(d) = Layout::digest_from_file_name(rest) {
                        entry.images.insert(d, object.modified);
                    }
                }
                "_deleted" => {
                    if let Some(d) = Layout::digest_from_file_name(rest) {
                        entry.deleted.insert(d, object.modified);
                    }
                }
                "_tags" => {
                    let Some((tag, file)) = rest.split_once('/') else {
                        continue;
                    };
                    let (Ok(tag), Some((observed_at, digest))) =
                        (tag.parse::<Tag>(), Layout::parse_tag_file_name(file))
                    else {
                        continue;
                    };
                    entry.tags.entry(tag).or_default().push(TagEntry {
                        digest,
                        observed_at,
                        written_at: object.modified,
                    });
                }
                _ => {}
            }
        }
        for repo in listing.values_mut() {
            for entries in repo.tags.values_mut() {
                sort_observations(entries);
            }
        }
        Ok(listing)
    }

    /// The entries of the current `index.json` that name a `REPOSITORY:TAG`; empty when
    /// it is missing or unreadable (it is derived data, rebuilt from the records).
    pub async fn index_refs(&self) -> Result<Vec<IndexRef>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "mediaType")]
            media_type: String,
            digest: Digest,
            size: u64,
            #[serde(default)]
            annotations: HashMap<String, String>,
        }
        let Some(bytes) = self.backend.read(layout::INDEX_JSON).await? else {
            return Ok(Vec::new());
        };
        let index: Index = serde_json::from_slice(&bytes).unwrap_or(Index {
            manifests: Vec::new(),
        });
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|e| {
                let name = e.annotations.get("org.opencontainers.image.ref.name")?;
                // Neither a repository name nor a tag holds a `:`.
                let (repository, tag) = name.rsplit_once(':')?;
                Some(IndexRef {
                    repository: repository.parse().ok()?,
                    tag: tag.parse().ok()?,
                    digest: e.digest,
                    media_type: e.media_type,
                    size: e.size,
                })
            })
            .collect())
    }

    /// Rewrites the root `index.json` so stock OCI tools see `REPOSITORY:TAG` refs.
    pub async fn write_index(&self, refs: &[IndexRef]) -> Result<(), StoreError> {
        let manifests: Vec<_> = refs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.to_string(),
                    "size": r.size,
                    "annotations": {
                        "org.opencontainers.image.ref.name": format!("{}:{}", r.repository, r.tag),
                    },
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::manifest::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
        self.backend.write(layout::INDEX_JSON, bytes.into()).await
    }

    pub(super) async fn read_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.backend.read(key).await? else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptRecord {
                key: key.into(),
                source,
            })?;
        if value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) > u64::from(SNAPSHOT_VERSION)
        {
            return Err(StoreError::InvalidLocation {
                location: self.location(),
                reason: format!("record {key} was written by a newer version of ecr-backup"),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|source| StoreError::CorruptRecord {
                key: key.into(),
                source,
            })
    }

    pub(super) async fn write_json_once<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        existing: Existing,
    ) -> Result<WriteOutcome, StoreError> {
        self.gate.check(key)?;
        let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("records serialize"));
        // Records are create-only like blobs, so a bucket policy can demand If-None-Match.
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        let outcome = self
            .backend
            .write_verified(key, &digest, Some(size), stream_of(bytes.clone()))
            .await?;
        if outcome == WriteOutcome::AlreadyExists && existing == Existing::MustMatch {
            let found = self.backend.read(key).await?;
            if found.as_deref() != Some(&bytes[..]) {
                return Err(StoreError::Conflict { key: key.into() });
            }
        }
        Ok(outcome)
    }
}

/// What a create-only record write makes of a record already under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    /// The first record written wins; a later one with other bytes is dropped.
    Kept,
    /// It must have the same bytes, or the write fails with [`StoreError::Conflict`].
    MustMatch,
}

/// One `REPOSITORY:TAG` entry of the root `index.json`.
#[derive(Debug, Clone)]
pub struct IndexRef {
    /// Repository.
    pub repository: RepositoryName,
    /// Tag.
    pub tag: Tag,
    /// The manifest it points at.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

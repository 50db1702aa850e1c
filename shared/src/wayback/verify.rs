//! Verify: proves a store is whole, or names what is broken and which images it breaks.
//!
//! Without reading data, every image record's manifests and blobs must exist with the
//! size the record states, and every tag record must point at a recorded image. With
//! `read_data`, every referenced blob (or a deterministic sample of them) is re-hashed as
//! it streams, which finds corruption at rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::Reporter;
use crate::store::records::ImageRecord;
use crate::store::{Layout, Store, StoreError};
use crate::stream::{ReadError, VerifyingStream};
use crate::wayback::inventory::{self, InventoryError};

/// Records read and blobs stat'ed at once.
const METADATA_CONCURRENCY: usize = 16;

/// Why verification could not run at all; problems found are in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store is missing, not a store, or could not be listed; or `--snapshot` is unknown.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Inventory(InventoryError::Store(e))
    }
}

/// Settings of a verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Re-hash blobs, not only check that they exist with the right size.
    pub read_data: bool,
    /// Re-hash only this percentage of blobs (0–100), picked from their digests so the
    /// same store gives the same sample; implies `read_data`.
    pub sample_percent: Option<f64>,
    /// Also check that every image of this snapshot was backed up.
    pub snapshot: Option<String>,
    /// Blobs re-hashed at once.
    pub read_concurrency: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            read_data: false,
            sample_percent: None,
            snapshot: None,
            read_concurrency: 4,
        }
    }
}

/// An image, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ImageName {
    /// The repository.
    pub repository: RepositoryName,
    /// The image.
    pub digest: Digest,
    /// Tags currently pointing at it.
    pub tags: Vec<Tag>,
}

/// What is wrong with a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum BlobFault {
    /// It is not in the store.
    Missing,
    /// It has another size than the record states.
    WrongSize {
        /// The size the record states.
        expected: u64,
        /// The size in the store.
        actual: u64,
    },
    /// Its bytes do not hash to its digest.
    Corrupt {
        /// What the verifier found.
        detail: String,
    },
    /// Reading it failed.
    Unreadable {
        /// The error.
        error: String,
    },
}

impl std::fmt::Display for BlobFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobFault::Missing => f.write_str("missing"),
            BlobFault::WrongSize { expected, actual } => {
                write!(f, "wrong size: {actual} bytes, expected {expected}")
            }
            BlobFault::Corrupt { detail } => write!(f, "corrupt: {detail}"),
            BlobFault::Unreadable { error } => write!(f, "unreadable: {error}"),
        }
    }
}

/// A broken blob and the images it breaks.
#[derive(Debug, Clone, Serialize)]
pub struct BlobProblem {
    /// The blob.
    pub digest: Digest,
    /// What is wrong.
    #[serde(flatten)]
    pub fault: BlobFault,
    /// Every image that reaches it.
    pub images: Vec<ImageName>,
}

/// An image that cannot be restored whole, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenImage {
    /// The image.
    #[serde(flatten)]
    pub image: ImageName,
    /// Its broken blobs.
    pub blobs: Vec<Digest>,
}

/// A tag record naming an image the store has no record of.
#[derive(Debug, Clone, Serialize)]
pub struct DanglingTag {
    /// The repository.
    pub repository: RepositoryName,
    /// The tag.
    pub tag: Tag,
    /// The image it names.
    pub digest: Digest,
    /// When it was observed.
    pub observed_at: DateTime<Utc>,
}

/// A record that could not be read or does not describe the image its key names.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableRecord {
    /// The record's key.
    pub key: String,
    /// What is wrong.
    pub error: String,
}

/// The result of a verification (also its `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The store.
    pub store: String,
    /// The snapshot checked, if any.
    pub snapshot: Option<String>,
    /// Image records checked.
    pub images_checked: u64,
    /// Tag records checked.
    pub tags_checked: u64,
    /// Distinct blobs (manifests, configs, layers) referenced and checked for size.
    pub blobs_checked: u64,
    /// Their total size.
    pub bytes_checked: u64,
    /// Blobs re-hashed.
    pub blobs_read: u64,
    /// Bytes re-hashed.
    pub bytes_read: u64,
    /// The sample re-hashed, in percent, when not all.
    pub sample_percent: Option<f64>,
    /// Broken blobs, each with the images it breaks.
    pub blob_problems: Vec<BlobProblem>,
    /// Images that cannot be restored whole.
    pub broken_images: Vec<BrokenImage>,
    /// Tag records naming images without a record.
    pub dangling_tags: Vec<DanglingTag>,
    /// Records that could not be read.
    pub unreadable_records: Vec<UnreadableRecord>,
    /// Images of the snapshot that have no record (their backup failed).
    pub missing_images: Vec<ImageName>,
    /// Wall time, in seconds.
    pub elapsed_seconds: f64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.blob_problems.is_empty()
            && self.dangling_tags.is_empty()
            && self.unreadable_records.is_empty()
            && self.missing_images.is_empty()
    }
}

/// One image record as read: its key, and the record or why it could not be read.
type RecordRead = (
    (RepositoryName, Digest),
    Result<Option<ImageRecord>, StoreError>,
);

/// A blob as the records reference it.
#[derive(Debug, Default)]
struct Referenced {
    /// The size stated (0 when a record did not know it).
    size: u64,
    images: BTreeSet<(RepositoryName, Digest)>,
}

/// True when a blob belongs to the sample; digests are uniformly random, so their first
/// bits pick a stable, unbiased sample.
fn sampled(digest: &Digest, percent: f64) -> bool {
    let value = u64::from_str_radix(&digest.hex()[..15], 16).unwrap_or(0);
    (value % 1_000_000) as f64 / 10_000.0 < percent
}

/// Verifies `store`; see the module docs.
pub async fn verify(
    store: &Store,
    options: &VerifyOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    store.ensure_exists().await?;
    let snapshot = match &options.snapshot {
        Some(id) => {
            let run = inventory::complete_run(store, id).await?;
            Some(store.resolve_run(&run).await?)
        }
        None => None,
    };
    let listing = store.listing(None).await?;

    // Tags currently on each image, to name what a problem breaks.
    let mut current_tags: BTreeMap<(RepositoryName, Digest), Vec<Tag>> = BTreeMap::new();
    let mut dangling_tags = Vec::new();
    let mut tags_checked = 0;
    for (repo, c) in &listing {
        for (tag, entries) in &c.tags {
            if let Some(latest) = entries.last() {
                current_tags
                    .entry((repo.clone(), latest.digest.clone()))
                    .or_default()
                    .push(tag.clone());
            }
            for e in entries {
                tags_checked += 1;
                if !c.images.contains_key(&e.digest) {
                    dangling_tags.push(DanglingTag {
                        repository: repo.clone(),
                        tag: tag.clone(),
                        digest: e.digest.clone(),
                        observed_at: e.observed_at,
                    });
                }
            }
        }
    }
    let name = |repo: &RepositoryName, digest: &Digest| ImageName {
        repository: repo.clone(),
        digest: digest.clone(),
        tags: current_tags
            .get(&(repo.clone(), digest.clone()))
            .cloned()
            .unwrap_or_default(),
    };

    // Every image record, and every blob they reference.
    let keys: Vec<(RepositoryName, Digest)> = listing
        .iter()
        .flat_map(|(repo, c)| c.images.keys().map(move |d| (repo.clone(), d.clone())))
        .collect();
    let records: Vec<RecordRead> = futures::stream::iter(keys)
        .map(|(repo, digest)| async move {
            let r = store.image_record(&repo, &digest).await;
            ((repo, digest), r)
        })
        .buffer_unordered(METADATA_CONCURRENCY)
        .collect()
        .await;
    let mut unreadable_records = Vec::new();
    let mut referenced: BTreeMap<Digest, Referenced> = BTreeMap::new();
    let mut images_checked = 0;
    for ((repo, digest), result) in records {
        let record = match result {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                unreadable_records.push(UnreadableRecord {
                    key: Layout::image(&repo, &digest),
                    error: crate::error::error_chain(&e),
                });
                continue;
            }
        };
        images_checked += 1;
        if record.digest != digest || record.repository != repo {
            unreadable_records.push(UnreadableRecord {
                key: Layout::image(&repo, &digest),
                error: format!(
                    "the record describes {}@{}",
                    record.repository, record.digest
                ),
            });
            continue;
        }
        let sizes = std::iter::once((record.digest.clone(), record.size))
            .chain(record.manifests.iter().map(|m| (m.digest.clone(), m.size)))
            .chain(record.blobs.iter().map(|b| (b.digest.clone(), b.size)));
        for (blob, size) in sizes {
            let entry = referenced.entry(blob).or_default();
            if entry.size == 0 {
                entry.size = size;
            }
            entry.images.insert((repo.clone(), digest.clone()));
        }
    }

    // Existence and size of each blob.
    let stats: Vec<(Digest, Result<Option<u64>, StoreError>)> =
        futures::stream::iter(referenced.keys().cloned())
            .map(|d| async move {
                let size = store.blob_size(&d).await;
                (d, size)
            })
            .buffer_unordered(METADATA_CONCURRENCY)
            .collect()
            .await;
    let mut faults: BTreeMap<Digest, BlobFault> = BTreeMap::new();
    let mut to_read = Vec::new();
    let sample = options.sample_percent.map(|p| p.clamp(0.0, 100.0));
    let read_data = options.read_data || sample.is_some();
    let mut bytes_checked = 0;
    for (digest, stat) in stats {
        let expected = referenced[&digest].size;
        match stat {
            Ok(None) => {
                faults.insert(digest, BlobFault::Missing);
            }
            Ok(Some(actual)) if expected != 0 && actual != expected => {
                faults.insert(digest, BlobFault::WrongSize { expected, actual });
            }
            Ok(Some(actual)) => {
                bytes_checked += actual;
                if read_data && sample.is_none_or(|p| sampled(&digest, p)) {
                    to_read.push((digest, actual));
                }
            }
            Err(e) => {
                faults.insert(
                    digest,
                    BlobFault::Unreadable {
                        error: crate::error::error_chain(&e),
                    },
                );
            }
        }
    }

    // Re-hash what was asked for.
    let referenced = &referenced;
    reporter.images_found(to_read.len() as u64);
    let bytes_read = AtomicU64::new(0);
    let blobs_read = to_read.len() as u64;
    let hashed: Vec<(Digest, Option<BlobFault>)> = futures::stream::iter(to_read)
        .map(|(digest, size)| {
            let reporter = reporter.clone();
            let bytes_read = &bytes_read;
            async move {
                let fault = rehash(store, &digest, size, reporter.as_ref(), bytes_read).await;
                if let Some((repo, image)) = referenced[&digest].images.iter().next() {
                    reporter.image_finished(repo, image, fault.is_none());
                }
                (digest, fault)
            }
        })
        .buffer_unordered(options.read_concurrency.max(1))
        .collect()
        .await;
    for (digest, fault) in hashed {
        if let Some(fault) = fault {
            faults.insert(digest, fault);
        }
    }

    // Name every problem and the images it breaks.
    let mut broken: BTreeMap<(RepositoryName, Digest), Vec<Digest>> = BTreeMap::new();
    let blob_problems: Vec<BlobProblem> = faults
        .into_iter()
        .map(|(digest, fault)| {
            let images = &referenced[&digest].images;
            for key in images {
                broken.entry(key.clone()).or_default().push(digest.clone());
            }
            BlobProblem {
                images: images.iter().map(|(r, d)| name(r, d)).collect(),
                digest,
                fault,
            }
        })
        .collect();
    let broken_images = broken
        .into_iter()
        .map(|((repo, digest), blobs)| BrokenImage {
            image: name(&repo, &digest),
            blobs,
        })
        .collect();

    let mut missing_images = Vec::new();
    if let Some(snapshot) = &snapshot {
        for (repo, r) in &snapshot.repositories {
            let has = |d: &Digest| listing.get(repo).is_some_and(|c| c.images.contains_key(d));
            let mut digests: BTreeSet<&Digest> = r.images.iter().collect();
            digests.extend(r.tags.values());
            for digest in digests {
                if !has(digest) {
                    missing_images.push(ImageName {
                        repository: repo.clone(),
                        digest: digest.clone(),
                        tags: r
                            .tags
                            .iter()
                            .filter(|(_, d)| *d == digest)
                            .map(|(t, _)| t.clone())
                            .collect(),
                    });
                }
            }
        }
    }

    Ok(VerifyReport {
        store: store.location(),
        snapshot: snapshot.map(|s| s.id),
        images_checked,
        tags_checked,
        blobs_checked: referenced.len() as u64,
        bytes_checked,
        blobs_read,
        bytes_read: bytes_read.load(Ordering::Relaxed),
        sample_percent: sample,
        blob_problems,
        broken_images,
        dangling_tags,
        unreadable_records,
        missing_images,
        elapsed_seconds: started.elapsed().as_millis() as f64 / 1000.0,
    })
}

/// Streams a blob through the verifier; the fault found, if any.
pub(super) async fn rehash(
    store: &Store,
    digest: &Digest,
    size: u64,
    reporter: &dyn Reporter,
    bytes_read: &AtomicU64,
) -> Option<BlobFault> {
    let unreadable = |e: &dyn std::error::Error| BlobFault::Unreadable {
        error: crate::error::error_chain(e),
    };
    let stream = match store.open_blob(digest).await {
        Ok(s) => s,
        Err(StoreError::NotFound { .. }) => return Some(BlobFault::Missing),
        Err(e) => return Some(unreadable(&e)),
    };
    let mut stream = VerifyingStream::new(stream, digest.clone(), Some(size));
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                reporter.bytes_transferred(chunk.len() as u64);
                bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(ReadError::Io(e)) => return Some(unreadable(&e)),
            Err(ReadError::Digest(e)) => {
                return Some(BlobFault::Corrupt {
                    detail: e.to_string(),
                })
            }
        }
    }
    None
}

impl VerifyReport {
    /// The verification record of this report (`verifications/<id>.json`,
    /// docs/format.md), each problem named with what it breaks.
    pub fn to_record(&self, read_data: bool) -> crate::store::checks::VerifyRecord {
        use crate::store::checks::{check_id, MAX_RECORDED_PROBLEMS};
        let finished_at = Utc::now();
        let name = |i: &ImageName| format!("{}@{}", i.repository, i.digest);
        let mut problems: Vec<String> = Vec::new();
        for p in &self.blob_problems {
            let images: Vec<String> = p.images.iter().map(name).collect();
            problems.push(format!(
                "blob {}: {} (breaks {})",
                p.digest,
                p.fault,
                images.join(", ")
            ));
        }
        for t in &self.dangling_tags {
            problems.push(format!(
                "tag {}:{} points at {}, which has no image record",
                t.repository, t.tag, t.digest
            ));
        }
        for r in &self.unreadable_records {
            problems.push(format!("record {}: {}", r.key, r.error));
        }
        for i in &self.missing_images {
            problems.push(format!("not backed up: {}", name(i)));
        }
        let problem_count = problems.len() as u64;
        problems.truncate(MAX_RECORDED_PROBLEMS);
        crate::store::checks::VerifyRecord {
            version: crate::store::records::RECORD_VERSION,
            id: check_id(finished_at),
            finished_at,
            elapsed_seconds: self.elapsed_seconds,
            snapshot: self.snapshot.clone(),
            read_data: read_data || self.sample_percent.is_some(),
            sample_percent: self.sample_percent,
            images_checked: self.images_checked,
            blobs_checked: self.blobs_checked,
            blobs_read: self.blobs_read,
            clean: self.is_clean(),
            problem_count,
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_stable_and_roughly_sized() {
        let digests: Vec<Digest> = (0..4000u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        let picked = digests.iter().filter(|d| sampled(d, 10.0)).count();
        assert!((300..500).contains(&picked), "{picked}");
        assert_eq!(digests.iter().filter(|d| sampled(d, 100.0)).count(), 4000);
        assert_eq!(digests.iter().filter(|d| sampled(d, 0.0)).count(), 0);
        assert_eq!(
            digests.iter().filter(|d| sampled(d, 10.0)).count(),
            picked,
            "the same digests give the same sample"
        );
    }
}

//! What a store's objects take (`ecr-backup du`, and the storage estimate of every run):
//! the whole store's objects and bytes from one listing, and, from the image records,
//! which blobs each repository alone holds and which it shares, by the age of the image
//! records that reach them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::layout::{self, Layout};
use super::{Store, StoreError};
use crate::cost::{Prices, StorageEstimate, StoredBytes};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;

/// Image records read at once.
const READ_CONCURRENCY: usize = 16;

/// Age buckets of image records: an upper bound in days (exclusive) and a label.
const AGE_BUCKETS: &[(Option<i64>, &str)] = &[
    (Some(1), "< 1 day"),
    (Some(7), "1-7 days"),
    (Some(30), "7-30 days"),
    (Some(90), "30-90 days"),
    (Some(365), "90-365 days"),
    (None, ">= 365 days"),
];

/// Every object of the store, from one listing: the figures its storage is billed on.
pub async fn stored_bytes(store: &Store) -> Result<StoredBytes, StoreError> {
    let mut stored = StoredBytes::default();
    for object in store.backend().list("").await? {
        stored.add(object.size);
    }
    Ok(stored)
}

/// A month of storage of everything the store holds, at `prices`.
pub async fn storage_estimate(
    store: &Store,
    prices: &Prices,
) -> Result<StorageEstimate, StoreError> {
    Ok(StorageEstimate::new(stored_bytes(store).await?, prices))
}

/// Images and bytes whose image records are of one age.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgeBucket {
    /// `< 1 day`, `1-7 days`, … `>= 365 days`.
    pub age: &'static str,
    /// Image records written that long ago.
    pub images: u64,
    /// Bytes of the blobs whose youngest reaching image record is of this age (each blob
    /// counted once: what would be left to keep if every younger image went).
    pub bytes: u64,
}

/// What one repository's images take.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryUsage {
    /// The repository.
    pub repository: RepositoryName,
    /// Images backed up.
    pub images: u64,
    /// Its record objects (image, tag and deletion records).
    pub records: u64,
    /// Bytes of those records.
    pub record_bytes: u64,
    /// Blobs (manifests, configs, layers) only this repository's images reach.
    pub unique_blobs: u64,
    /// Their bytes: what removing the repository would free.
    pub unique_bytes: u64,
    /// Blobs its images reach that other repositories' images reach too.
    pub shared_blobs: u64,
    /// Their bytes (stored once for all of those repositories).
    pub shared_bytes: u64,
    /// By the age of the repository's image records.
    pub by_age: Vec<AgeBucket>,
}

/// What the whole store takes (`ecr-backup du --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// The store.
    pub store: String,
    /// Every object, with the storage estimate.
    pub total: StorageEstimate,
    /// Blob objects.
    pub blobs: StoredBytes,
    /// Record objects (image, tag and deletion records, snapshots, the layout files).
    pub records: StoredBytes,
    /// Blob bytes no image record reaches (copies interrupted before their record).
    pub unreferenced_bytes: u64,
    /// Bytes of blobs reached by more than one repository.
    pub shared_bytes: u64,
    /// Repositories (one, when asked for one).
    pub repositories: Vec<RepositoryUsage>,
    /// The store's image records and blobs by age.
    pub by_age: Vec<AgeBucket>,
}

fn bucket(age: Duration) -> usize {
    let days = age.num_days();
    AGE_BUCKETS
        .iter()
        .position(|(limit, _)| limit.is_none_or(|l| days < l))
        .expect("the last bucket has no limit")
}

fn empty_buckets() -> Vec<AgeBucket> {
    AGE_BUCKETS
        .iter()
        .map(|(_, age)| AgeBucket {
            age,
            images: 0,
            bytes: 0,
        })
        .collect()
}

/// Who reaches a blob: the repositories, and the youngest image record (overall and per
/// repository).
#[derive(Default)]
struct Reach {
    youngest: Option<DateTime<Utc>>,
    by_repository: BTreeMap<RepositoryName, DateTime<Utc>>,
}

/// Measures the store as of `now`: one listing of every object, one read of every image
/// record. With `only`, the repositories list holds that one, its unique and shared bytes
/// still judged against every other repository.
pub async fn usage(
    store: &Store,
    prices: &Prices,
    only: Option<&RepositoryName>,
    now: DateTime<Utc>,
) -> Result<Usage, StoreError> {
    let objects = store.backend().list("").await?;
    let mut total = StoredBytes::default();
    let mut blobs = StoredBytes::default();
    let mut records = StoredBytes::default();
    let mut blob_sizes: HashMap<String, u64> = HashMap::new();
    let mut record_objects: BTreeMap<RepositoryName, StoredBytes> = BTreeMap::new();
    for object in &objects {
        total.add(object.size);
        if let Some(hex) = object.key.strip_prefix(layout::BLOBS_PREFIX) {
            blobs.add(object.size);
            blob_sizes.insert(hex.to_owned(), object.size);
        } else {
            records.add(object.size);
            if let Some((repo, _, _)) = Layout::split_record_key(&object.key) {
                record_objects.entry(repo).or_default().add(object.size);
            }
        }
    }

    let listing = store.listing(None).await?;
    let images: Vec<(RepositoryName, Digest, DateTime<Utc>)> = listing
        .iter()
        .flat_map(|(repo, l)| {
            l.images
                .iter()
                .map(move |(digest, written)| (repo.clone(), digest.clone(), *written))
        })
        .collect();
    let read: Vec<_> = futures::stream::iter(images.iter())
        .map(|(repo, digest, written)| async move {
            let record = store.image_record(repo, digest).await?;
            Ok::<_, StoreError>((repo, *written, record))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let mut reach: HashMap<Digest, Reach> = HashMap::new();
    let mut image_ages: BTreeMap<&RepositoryName, Vec<usize>> = BTreeMap::new();
    let mut store_ages = empty_buckets();
    for (repo, written, record) in &read {
        let age = bucket(now - *written);
        store_ages[age].images += 1;
        image_ages.entry(repo).or_default().push(age);
        let Some(record) = record else { continue };
        let reached = std::iter::once(&record.digest)
            .chain(record.manifests.iter().map(|m| &m.digest))
            .chain(record.blobs.iter().map(|b| &b.digest));
        for digest in reached {
            let r = reach.entry(digest.clone()).or_default();
            r.youngest = r.youngest.max(Some(*written));
            let t = r.by_repository.entry((*repo).clone()).or_insert(*written);
            *t = (*t).max(*written);
        }
    }

    let size_of = |d: &Digest| blob_sizes.get(d.hex()).copied().unwrap_or(0);
    let mut per_repo: BTreeMap<RepositoryName, RepositoryUsage> = BTreeMap::new();
    let mut shared_bytes = 0;
    let mut referenced: BTreeSet<&str> = BTreeSet::new();
    for (digest, r) in &reach {
        let size = size_of(digest);
        referenced.insert(digest.hex());
        if let Some(youngest) = r.youngest {
            store_ages[bucket(now - youngest)].bytes += size;
        }
        let shared = r.by_repository.len() > 1;
        if shared {
            shared_bytes += size;
        }
        for (repo, youngest) in &r.by_repository {
            let u = per_repo
                .entry(repo.clone())
                .or_insert_with(|| empty_usage(repo.clone()));
            if shared {
                u.shared_blobs += 1;
                u.shared_bytes += size;
            } else {
                u.unique_blobs += 1;
                u.unique_bytes += size;
            }
            u.by_age[bucket(now - *youngest)].bytes += size;
        }
    }
    for (repo, ages) in image_ages {
        let u = per_repo
            .entry(repo.clone())
            .or_insert_with(|| empty_usage(repo.clone()));
        u.images = ages.len() as u64;
        for age in ages {
            u.by_age[age].images += 1;
        }
    }
    for (repo, stored) in record_objects {
        let u = per_repo
            .entry(repo.clone())
            .or_insert_with(|| empty_usage(repo));
        u.records = stored.objects;
        u.record_bytes = stored.bytes;
    }
    let unreferenced_bytes = blob_sizes
        .iter()
        .filter(|(hex, _)| !referenced.contains(hex.as_str()))
        .map(|(_, size)| size)
        .sum();
    let repositories = per_repo
        .into_values()
        .filter(|u| only.is_none_or(|o| o == &u.repository))
        .collect();
    Ok(Usage {
        store: store.location(),
        total: StorageEstimate::new(total, prices),
        blobs,
        records,
        unreferenced_bytes,
        shared_bytes,
        repositories,
        by_age: store_ages,
    })
}

fn empty_usage(repository: RepositoryName) -> RepositoryUsage {
    RepositoryUsage {
        repository,
        images: 0,
        records: 0,
        record_bytes: 0,
        unique_blobs: 0,
        unique_bytes: 0,
        shared_blobs: 0,
        shared_bytes: 0,
        by_age: empty_buckets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_into_their_buckets() {
        assert_eq!(bucket(Duration::hours(3)), 0);
        assert_eq!(bucket(Duration::days(1)), 1);
        assert_eq!(bucket(Duration::days(29)), 2);
        assert_eq!(bucket(Duration::days(30)), 3);
        assert_eq!(bucket(Duration::days(400)), 5);
    }
}

//! What a store holds, for people and for the engines that read it back: repositories,
//! tags as of a point in time, and snapshots (`ecr-backup ls`). Restore and export resolve
//! `--as-of` and `--snapshot` here.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::records::Snapshot;
use crate::store::tag_view::{latest_run, tag_view_from};
use crate::store::{Listing, Run, Store, StoreError};

/// Records read at once when a listing needs many of them.
const READ_CONCURRENCY: usize = 16;

/// Why the store's contents could not be listed or resolved.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--snapshot` named a snapshot the store does not have.
    #[error("no snapshot {id:?} in {store} (`ecr-backup ls --snapshots` lists them)")]
    UnknownSnapshot {
        /// The id asked for.
        id: String,
        /// The store.
        store: String,
    },
    /// `--snapshot` named a run some of whose parts are missing.
    #[error("snapshot {id:?} in {store} is incomplete (missing parts: {}); its fan-out did not finish, so it does not describe the whole registry: use --as-of, or another snapshot", if missing.is_empty() { "the last".to_owned() } else { missing.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") })]
    IncompleteRun {
        /// The run.
        id: String,
        /// The store.
        store: String,
        /// Part numbers missing (empty when only the last is unknown).
        missing: Vec<u32>,
    },
    /// `--as-of` is neither RFC 3339 nor `YYYY-MM-DD`.
    #[error(
        "invalid time {text:?}: expected RFC 3339 (2026-11-27T05:30:00Z) or a date (2026-11-27)"
    )]
    InvalidTime {
        /// What was given.
        text: String,
    },
    /// The repository asked for has nothing in the store.
    #[error("repository {repository} has no backup in {store}")]
    UnknownRepository {
        /// The repository.
        repository: RepositoryName,
        /// The store.
        store: String,
    },
}

/// Which state of the registry to read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PointInTime {
    /// The tags as they stand now.
    #[default]
    Latest,
    /// The tags as they stood at this time.
    AsOf(DateTime<Utc>),
    /// Exactly the tags of one snapshot.
    Snapshot(String),
}

impl PointInTime {
    /// From `--as-of` and `--snapshot` (at most one of them given).
    pub fn from_flags(
        as_of: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<PointInTime, InventoryError> {
        match (as_of, snapshot) {
            (_, Some(id)) => Ok(PointInTime::Snapshot(id.to_owned())),
            (Some(text), None) => parse_time(text).map(PointInTime::AsOf),
            (None, None) => Ok(PointInTime::Latest),
        }
    }
}

impl std::fmt::Display for PointInTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointInTime::Latest => f.write_str("latest"),
            PointInTime::AsOf(t) => write!(f, "as of {}", t.to_rfc3339()),
            PointInTime::Snapshot(id) => write!(f, "snapshot {id}"),
        }
    }
}

/// Parses RFC 3339, or a date `YYYY-MM-DD`, which means the end of that day (UTC): the
/// registry as the last backup of that day saw it.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, InventoryError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.succ_opt())
        .and_then(|next| next.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc() - chrono::Duration::microseconds(1))
        .ok_or_else(|| InventoryError::InvalidTime { text: text.into() })
}

/// The tags of the store at one point in time, and the snapshot they start from.
#[derive(Debug, Clone, Default)]
pub struct TagView {
    /// `(repository, tag)` → digest.
    pub tags: BTreeMap<(RepositoryName, Tag), Digest>,
    /// The snapshot the view is based on (the one asked for, or the latest at that time).
    pub snapshot: Option<Snapshot>,
}

impl TagView {
    /// Images of the base snapshot that no tag of the view points at, by repository.
    pub fn untagged(&self) -> BTreeMap<RepositoryName, Vec<Digest>> {
        let mut out = BTreeMap::new();
        let Some(snapshot) = &self.snapshot else {
            return out;
        };
        for (repo, r) in &snapshot.repositories {
            let tagged: Vec<&Digest> = self
                .tags
                .iter()
                .filter(|((tr, _), _)| tr == repo)
                .map(|(_, d)| d)
                .collect();
            let untagged: Vec<Digest> = r
                .images
                .iter()
                .filter(|d| !tagged.contains(d))
                .cloned()
                .collect();
            if !untagged.is_empty() {
                out.insert(repo.clone(), untagged);
            }
        }
        out
    }
}

/// Resolves the tags at `point`: a snapshot's tags exactly, or the tag view of
/// `docs/format.md` (latest snapshot at or before the time, plus later tag records).
pub async fn view_at(
    store: &Store,
    listing: &Listing,
    point: &PointInTime,
) -> Result<TagView, InventoryError> {
    match point {
        PointInTime::Snapshot(id) => {
            let run = complete_run(store, id).await?;
            let snapshot = store.resolve_run(&run).await?;
            let tags = snapshot
                .repositories
                .iter()
                .flat_map(|(repo, r)| {
                    r.tags
                        .iter()
                        .map(|(t, d)| ((repo.clone(), t.clone()), d.clone()))
                })
                .collect();
            Ok(TagView {
                tags,
                snapshot: Some(snapshot),
            })
        }
        PointInTime::Latest | PointInTime::AsOf(_) => {
            let at = match point {
                PointInTime::AsOf(t) => Some(*t),
                _ => None,
            };
            let base = latest_run(store, at).await?;
            Ok(TagView {
                tags: tag_view_from(base.as_ref(), listing, at),
                snapshot: base,
            })
        }
    }
}

/// The run `id` names (a run id or one of its parts' ids), which must be complete: a run
/// with a part missing does not describe the whole registry.
pub async fn complete_run(store: &Store, id: &str) -> Result<Run, InventoryError> {
    let run = store
        .run(id)
        .await?
        .ok_or_else(|| InventoryError::UnknownSnapshot {
            id: id.to_owned(),
            store: store.location(),
        })?;
    if !run.is_complete() {
        return Err(InventoryError::IncompleteRun {
            id: run.id.clone(),
            store: store.location(),
            missing: run.missing_parts(),
        });
    }
    Ok(run)
}

/// One repository in `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct RepositorySummary {
    /// The repository.
    pub repository: RepositoryName,
    /// Images backed up (image records), tagged or not.
    pub images: usize,
    /// Tags as they stand now.
    pub tags: usize,
    /// Images recorded as deleted from the source.
    pub deleted: usize,
    /// The latest tag observation, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_observed: Option<DateTime<Utc>>,
}

/// Every repository of a store, with counts.
pub async fn repositories(store: &Store) -> Result<Vec<RepositorySummary>, InventoryError> {
    store.ensure_exists().await?;
    let listing = store.listing(None).await?;
    let view = tag_view_from(latest_run(store, None).await?.as_ref(), &listing, None);
    let mut tag_counts: BTreeMap<&RepositoryName, usize> = BTreeMap::new();
    for (repo, _) in view.keys() {
        *tag_counts.entry(repo).or_default() += 1;
    }
    let mut out: Vec<RepositorySummary> = listing
        .iter()
        .map(|(repo, c)| RepositorySummary {
            repository: repo.clone(),
            images: c.images.len(),
            tags: tag_counts.get(repo).copied().unwrap_or(0),
            deleted: c.deleted.len(),
            last_observed: c
                .tags
                .values()
                .filter_map(|entries| entries.last().map(|e| e.observed_at))
                .max(),
        })
        .collect();
    // A repository known only from a snapshot (every copy failed) still deserves a line.
    for (repo, count) in tag_counts {
        if !listing.contains_key(repo) {
            out.push(RepositorySummary {
                repository: repo.clone(),
                images: 0,
                tags: count,
                deleted: 0,
                last_observed: None,
            });
        }
    }
    out.sort_by(|a, b| a.repository.cmp(&b.repository));
    Ok(out)
}

/// One tag of a repository in `ls REPOSITORY`.
#[derive(Debug, Clone, Serialize)]
pub struct TagSummary {
    /// The tag.
    pub tag: Tag,
    /// The image it points at now.
    pub digest: Digest,
    /// Bytes the image references (manifests, configs, layers); `None` when the image
    /// record is missing.
    pub size: Option<u64>,
    /// The image's media type, from its record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Platforms of a multi-platform image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// When the image was backed up (its record was written).
    pub backed_up_at: Option<DateTime<Utc>>,
    /// First time the tag was seen on this digest.
    pub first_observed: Option<DateTime<Utc>>,
    /// Last time the tag was seen on this digest (the latest snapshot, or a later event).
    pub last_observed: Option<DateTime<Utc>>,
}

/// An image of a repository no current tag points at.
#[derive(Debug, Clone, Serialize)]
pub struct UntaggedImage {
    /// The image.
    pub digest: Digest,
    /// Bytes it references.
    pub size: Option<u64>,
    /// When it was backed up.
    pub backed_up_at: Option<DateTime<Utc>>,
    /// The image it refers to, for signatures and SBOMs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// True when the source recorded its deletion.
    pub deleted: bool,
}

/// One repository in detail.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryDetail {
    /// The repository.
    pub repository: RepositoryName,
    /// Its tags as they stand now.
    pub tags: Vec<TagSummary>,
    /// Backed-up images no current tag points at.
    pub untagged: Vec<UntaggedImage>,
}

/// The tags and images of one repository.
pub async fn repository(
    store: &Store,
    repo: &RepositoryName,
) -> Result<RepositoryDetail, InventoryError> {
    store.ensure_exists().await?;
    let listing = store.listing(Some(repo)).await?;
    // Only this repository's tree of the latest run is read.
    let latest = match store.latest_run(None).await? {
        Some(run) => {
            let mut base = Snapshot::new(run.source.clone(), run.observed_at);
            base.id = run.id.clone();
            if let Some(state) = store.run_repository(&run, repo).await? {
                base.repositories.insert(repo.clone(), state);
            }
            Some(base)
        }
        None => None,
    };
    let view = tag_view_from(latest.as_ref(), &listing, None);
    let current: BTreeMap<Tag, Digest> = view
        .into_iter()
        .filter(|((r, _), _)| r == repo)
        .map(|((_, t), d)| (t, d))
        .collect();
    let empty = Default::default();
    let known = listing.get(repo).unwrap_or(&empty);
    if current.is_empty() && known.images.is_empty() {
        return Err(InventoryError::UnknownRepository {
            repository: repo.clone(),
            store: store.location(),
        });
    }
    let records: BTreeMap<Digest, crate::store::records::ImageRecord> = futures::stream::iter(
        known.images.keys(),
    )
    .map(|d| async move { Ok::<_, StoreError>((d.clone(), store.image_record(repo, d).await?)) })
    .buffer_unordered(READ_CONCURRENCY)
    .try_filter_map(|(d, r)| async move { Ok(r.map(|r| (d, r))) })
    .try_collect()
    .await?;

    let mut tags = Vec::new();
    for (tag, digest) in &current {
        let record = records.get(digest);
        let observations: Vec<DateTime<Utc>> = known
            .tags
            .get(tag)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| &e.digest == digest)
                    .map(|e| e.observed_at)
                    .collect()
            })
            .unwrap_or_default();
        let in_latest = latest
            .as_ref()
            .filter(|s| {
                s.repositories
                    .get(repo)
                    .and_then(|r| r.tags.get(tag))
                    .is_some_and(|d| d == digest)
            })
            .map(|s| s.observed_at);
        tags.push(TagSummary {
            tag: tag.clone(),
            digest: digest.clone(),
            size: record.map(|r| r.total_size()),
            media_type: record.map(|r| r.media_type.clone()),
            platforms: record
                .map(|r| {
                    r.manifests
                        .iter()
                        .filter_map(|m| m.platform.clone())
                        .collect()
                })
                .unwrap_or_default(),
            backed_up_at: record.map(|r| r.backed_up_at),
            first_observed: observations.iter().min().copied().or(in_latest),
            last_observed: observations.iter().copied().chain(in_latest).max(),
        });
    }
    let untagged = records
        .values()
        .filter(|r| !current.values().any(|d| d == &r.digest))
        .map(|r| UntaggedImage {
            digest: r.digest.clone(),
            size: Some(r.total_size()),
            backed_up_at: Some(r.backed_up_at),
            subject: r.subject.clone(),
            deleted: known.deleted.contains_key(&r.digest),
        })
        .collect();
    Ok(RepositoryDetail {
        repository: repo.clone(),
        tags,
        untagged,
    })
}

/// One run in `ls --snapshots`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The run's id (what `--snapshot` takes).
    pub id: String,
    /// When the registry was enumerated (`observed_at` in the JSON output).
    #[serde(rename = "taken_at")]
    pub observed_at: DateTime<Utc>,
    /// The registry.
    pub source: String,
    /// Snapshot parts found.
    pub parts: usize,
    /// True when every part is there: only complete runs are used by `--as-of` and "now".
    pub complete: bool,
    /// Repositories seen.
    pub repositories: usize,
    /// Images seen, tagged or not.
    pub images: usize,
    /// Tags seen.
    pub tags: usize,
}

/// Every run, oldest first, its parts merged.
pub async fn snapshots(store: &Store) -> Result<Vec<SnapshotSummary>, InventoryError> {
    store.ensure_exists().await?;
    Ok(store
        .runs()
        .await?
        .into_iter()
        .map(|run| {
            // Counts come from the parts: no tree is read to list runs.
            SnapshotSummary {
                repositories: run.entries().len(),
                images: run.image_count() as usize,
                tags: run.tag_count() as usize,
                parts: run.parts.len(),
                complete: run.is_complete(),
                id: run.id,
                observed_at: run.observed_at,
                source: run.source,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_dates() {
        let t = parse_time("2026-11-27T05:30:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T04:30:00+00:00");
        let d = parse_time("2026-11-27").unwrap();
        assert_eq!(d.to_rfc3339(), "2026-11-27T23:59:59.999999+00:00");
        for bad in ["", "yesterday", "2026-13-01", "27/11/2026"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_pick_a_point() {
        assert_eq!(
            PointInTime::from_flags(None, None).unwrap(),
            PointInTime::Latest
        );
        assert_eq!(
            PointInTime::from_flags(None, Some("x")).unwrap(),
            PointInTime::Snapshot("x".into())
        );
        assert!(matches!(
            PointInTime::from_flags(Some("2026-01-01"), None).unwrap(),
            PointInTime::AsOf(_)
        ));
    }
}

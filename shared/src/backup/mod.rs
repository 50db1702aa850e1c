//! A backup run: enumerate a source, work out what the store lacks, copy it, and record
//! the registry's state as a snapshot. The CLI runs all of it in one process; the
//! fan-out Lambda runs [`plan`] and hands the copies to workers through a queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::copy::{CopyEngine, CopyError, CopyRequest, ImageOutcome};
use crate::error::error_chain;
use crate::filter::ImageFilter;
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::Reporter;
use crate::source::{Source, SourceError, SourceImage};
use crate::store::records::{Snapshot, SnapshotRepository};
use crate::store::{observed_after_run, Catalog, IndexRef, RepositoryCatalog, Store, StoreError};

/// Repositories enumerated at once.
const REPOSITORY_CONCURRENCY: usize = 4;

/// A run could not even start or finish its bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Enumerating the source failed.
    #[error("enumerating {source_name}: {error}")]
    Source {
        /// The registry.
        source_name: String,
        /// What failed.
        #[source]
        error: SourceError,
    },
    /// Reading or writing the store's records failed.
    #[error("updating the store: {0}")]
    Store(#[from] StoreError),
}

/// What a source holds, and what the store lacks of it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The registry's state at enumeration time.
    pub snapshot: Snapshot,
    /// Images (with their selected tags) to copy or to record tags for.
    pub work: Vec<CopyRequest>,
    /// Images selected and already complete in the store.
    pub up_to_date: usize,
    /// Archived ECR images that cannot be pulled now.
    pub archived: Vec<SourceImage>,
}

/// Enumerates `source` and compares it with what `catalog` says the store holds.
pub async fn plan(
    source: &Source,
    filter: &ImageFilter,
    catalog: &Catalog,
) -> Result<Plan, BackupError> {
    let taken_at = Utc::now();
    let repositories = selected_repositories(source, filter).await?;
    let listed: Vec<(RepositoryName, Vec<SourceImage>)> = futures::stream::iter(repositories)
        .map(|repo| async move {
            let images = source.images(&repo).await?;
            Ok::<_, SourceError>((repo, images))
        })
        .buffered(REPOSITORY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|error| source_error(source, error))?;

    let mut plan = Plan {
        snapshot: Snapshot::new(source.name().to_owned(), taken_at),
        work: Vec::new(),
        up_to_date: 0,
        archived: Vec::new(),
    };
    let empty = RepositoryCatalog::default();
    for (repo, images) in listed {
        let known = catalog.get(&repo).unwrap_or(&empty);
        plan_repository(&mut plan, filter, &repo, images, known, taken_at);
    }
    Ok(plan)
}

/// The source's repositories that the filter selects, sorted by name.
pub async fn selected_repositories(
    source: &Source,
    filter: &ImageFilter,
) -> Result<Vec<RepositoryName>, BackupError> {
    let mut repositories: Vec<RepositoryName> = source
        .repositories()
        .await
        .map_err(|error| source_error(source, error))?
        .into_iter()
        .filter(|r| filter.repository(r))
        .collect();
    repositories.sort();
    Ok(repositories)
}

/// Wraps an enumeration failure with the source's name.
pub fn source_error(source: &Source, error: SourceError) -> BackupError {
    BackupError::Source {
        source_name: source.name().to_owned(),
        error,
    }
}

/// Adds one repository's images to a plan: into the snapshot, and into the work list
/// when the store lacks the image or a tag's latest record names another digest.
pub fn plan_repository(
    plan: &mut Plan,
    filter: &ImageFilter,
    repo: &RepositoryName,
    images: Vec<SourceImage>,
    known: &RepositoryCatalog,
    taken_at: DateTime<Utc>,
) {
    let entry: &mut SnapshotRepository =
        plan.snapshot.repositories.entry(repo.clone()).or_default();
    for image in images {
        let Some(tags) = filter.select_tags(&image.tags) else {
            continue;
        };
        entry.images.push(image.digest.clone());
        for t in &tags {
            entry.tags.insert(t.clone(), image.digest.clone());
        }
        let stored = known.images.contains_key(&image.digest);
        if image.archived {
            // ECR cannot serve it until it is restored to ACTIVE. Backed up already, it
            // is restorable (the snapshot carries its tags); otherwise it is named as not
            // backed up, never sent to a worker that could only fail on it.
            if stored {
                plan.up_to_date += 1;
            } else {
                plan.archived.push(image);
            }
            continue;
        }
        let complete = stored
            && tags.iter().all(|t| {
                known
                    .tag_as_of(t, None)
                    .is_some_and(|e| e.digest == image.digest)
            });
        if complete {
            plan.up_to_date += 1;
        } else {
            plan.work.push(CopyRequest {
                repository: repo.clone(),
                digest: image.digest,
                tags,
                observed_at: taken_at,
            });
        }
    }
}

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
    let catalog = store.catalog(None).await?;
    let plan = plan(source, &options.filter, &catalog).await?;
    reporter.images_found(plan.work.len() as u64);

    let empty = Default::default();
    let results: Vec<(CopyRequest, Result<ImageOutcome, CopyError>)> = futures::stream::iter(plan.work.iter())
        .map(|request| {
            let known = catalog.get(&request.repository).unwrap_or(&empty);
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

    store.put_snapshot(&plan.snapshot).await?;
    let copied: HashMap<Digest, (String, u64)> = results
        .iter()
        .filter_map(|(request, result)| match result {
            Ok(ImageOutcome::Copied { media_type, size }) => {
                Some((request.digest.clone(), (media_type.clone(), *size)))
            }
            _ => None,
        })
        .collect();
    rebuild_index(store, &copied).await?;

    let mut report = BackupReport {
        source: source.name().to_owned(),
        store: store.location(),
        snapshot: plan.snapshot.id.clone(),
        images_copied: 0,
        images_present: plan.up_to_date as u64,
        images_failed: Vec::new(),
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
    report.elapsed_seconds = round_ms(started.elapsed());
    report
        .images_failed
        .sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
    Ok(report)
}

fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// The newest complete run taken at or before `at` (or ever), all its parts merged (see
/// [`Store::latest_run`]).
pub async fn latest_run(
    store: &Store,
    at: Option<DateTime<Utc>>,
) -> Result<Option<Snapshot>, StoreError> {
    Ok(store.latest_run(at).await?.map(|run| run.snapshot()))
}

/// The tags as they stand now, or as they stood at `at`: from the latest complete run at
/// or before that time, updated by tag records observed after it (push events between
/// runs, or a run's own copies). "After" follows [`observed_after_run`].
pub async fn tag_view(
    store: &Store,
    catalog: &Catalog,
    at: Option<DateTime<Utc>>,
) -> Result<BTreeMap<(RepositoryName, Tag), Digest>, StoreError> {
    let base = latest_run(store, at).await?;
    Ok(tag_view_from(base.as_ref(), catalog, at))
}

/// [`tag_view`] on a run already read.
pub fn tag_view_from(
    base: Option<&Snapshot>,
    catalog: &Catalog,
    at: Option<DateTime<Utc>>,
) -> BTreeMap<(RepositoryName, Tag), Digest> {
    let mut view = BTreeMap::new();
    let since = base.map(|s| s.taken_at);
    if let Some(snapshot) = base {
        for (repo, r) in &snapshot.repositories {
            for (tag, digest) in &r.tags {
                view.insert((repo.clone(), tag.clone()), digest.clone());
            }
        }
    }
    for (repo, r) in catalog {
        for tag in r.tags.keys() {
            if let Some(e) = r.tag_as_of(tag, at) {
                if since.is_none_or(|s| observed_after_run(e.observed_at, s)) {
                    view.insert((repo.clone(), tag.clone()), e.digest.clone());
                }
            }
        }
    }
    view
}

/// Rewrites the root `index.json` from the current tag view, so that stock OCI tools find
/// `REPOSITORY:TAG`. Entries whose image is not in the store are left out. `copied` gives
/// the media type and size of manifests the caller has just stored, whose records need
/// not be read back.
pub async fn rebuild_index(
    store: &Store,
    copied: &HashMap<Digest, (String, u64)>,
) -> Result<(), StoreError> {
    let catalog = store.catalog(None).await?;
    let view = tag_view(store, &catalog, None).await?;
    let mut refs = Vec::new();
    // Manifests already in the index, or just copied, need no record read: a record is
    // read only for an image some other process copied (a worker, for the fan-out).
    let mut known: HashMap<Digest, (String, u64)> = store.indexed_manifests().await?;
    known.extend(copied.iter().map(|(d, m)| (d.clone(), m.clone())));
    for ((repo, tag), digest) in view {
        if !catalog
            .get(&repo)
            .is_some_and(|c| c.images.contains_key(&digest))
        {
            continue;
        }
        if !known.contains_key(&digest) {
            if let Some(record) = store.image_record(&repo, &digest).await? {
                known.insert(digest.clone(), (record.media_type, record.size));
            }
        }
        if let Some((media_type, size)) = known.get(&digest) {
            refs.push(IndexRef {
                repository: repo,
                tag,
                digest,
                media_type: media_type.clone(),
                size: *size,
            });
        }
    }
    store.write_index(&refs).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TagEntry;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn image(repo: &RepositoryName, name: &[u8], tag: &str, archived: bool) -> SourceImage {
        SourceImage {
            repository: repo.clone(),
            digest: Digest::of(name),
            tags: vec![tag.parse().unwrap()],
            media_type: None,
            archived,
        }
    }

    /// An archived image missing from the store is named, not sent to a worker and not
    /// counted as backed up; one already backed up is restorable, so it is up to date.
    #[test]
    fn an_archived_image_is_named_unless_it_is_already_backed_up() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let taken = at("2026-11-27T05:30:00.400Z");
        let mut plan = Plan {
            snapshot: Snapshot::new("r".into(), taken),
            work: Vec::new(),
            up_to_date: 0,
            archived: Vec::new(),
        };
        let mut known = RepositoryCatalog::default();
        known.images.insert(Digest::of(b"kept"), taken);
        let images = vec![
            image(&repo, b"cold", "old", true),
            image(&repo, b"kept", "older", true),
            image(&repo, b"live", "v1", false),
        ];
        plan_repository(
            &mut plan,
            &ImageFilter::default(),
            &repo,
            images,
            &known,
            taken,
        );
        assert_eq!(
            plan.archived.iter().map(|i| &i.digest).collect::<Vec<_>>(),
            vec![&Digest::of(b"cold")]
        );
        assert_eq!(
            plan.work.iter().map(|r| &r.digest).collect::<Vec<_>>(),
            vec![&Digest::of(b"live")]
        );
        assert_eq!(plan.up_to_date, 1, "the archived image already backed up");
        // The snapshot still says what the registry holds, archived images included.
        assert_eq!(plan.snapshot.repositories[&repo].images.len(), 3);
    }

    /// A one-repository snapshot taken at `taken` in which `tag` names `digest`.
    fn snapshot_with(
        repo: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
        taken: DateTime<Utc>,
    ) -> Snapshot {
        let mut snapshot = Snapshot::new("r".into(), taken);
        snapshot
            .repositories
            .entry(repo.clone())
            .or_default()
            .tags
            .insert(tag.clone(), digest.clone());
        snapshot
    }

    /// A tag observation (its write time is not what these tests are about).
    fn entry(digest: &Digest, observed_at: DateTime<Utc>) -> TagEntry {
        TagEntry {
            digest: digest.clone(),
            observed_at,
            written_at: at("2026-11-28T00:00:00Z"),
        }
    }

    /// A push event seconds-resolved to the run's own second names a digest pushed after
    /// the run listed the repository: it wins over the snapshot.
    #[test]
    fn a_tag_record_of_the_run_s_second_wins_over_the_snapshot() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let tag: Tag = "latest".parse().unwrap();
        let (old, new) = (Digest::of(b"old"), Digest::of(b"new"));
        let snapshot = snapshot_with(&repo, &tag, &old, at("2026-11-27T05:30:00.400Z"));
        let mut catalog = Catalog::new();
        let entries = catalog
            .entry(repo.clone())
            .or_default()
            .tags
            .entry(tag.clone())
            .or_default();
        entries.push(entry(&old, at("2026-11-26T05:30:00.100Z")));
        entries.push(entry(&new, at("2026-11-27T05:30:00Z")));
        let view = tag_view_from(Some(&snapshot), &catalog, None);
        assert_eq!(view[&(repo.clone(), tag.clone())], new);
        // A record of the second before the run is older than the run.
        catalog.get_mut(&repo).unwrap().tags.get_mut(&tag).unwrap()[1].observed_at =
            at("2026-11-27T05:29:59.900Z");
        let view = tag_view_from(Some(&snapshot), &catalog, None);
        assert_eq!(view[&(repo, tag)], old);
    }

    /// The run's own copy records the tag at the run's exact time; a push event of that
    /// same whole second was after the listing (had it been before, the listing would
    /// name its digest), so it must sort after the run's record, not before it.
    #[test]
    fn a_push_event_of_the_run_s_second_sorts_after_the_run_s_own_record() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let tag: Tag = "latest".parse().unwrap();
        let (old, new) = (Digest::of(b"old"), Digest::of(b"new"));
        let taken = at("2026-11-27T05:30:00.850Z");
        let snapshot = snapshot_with(&repo, &tag, &old, taken);
        let mut entries = vec![entry(&new, at("2026-11-27T05:30:00Z")), entry(&old, taken)];
        crate::store::sort_observations(&mut entries);
        assert_eq!(entries.last().unwrap().digest, new);
        let mut catalog = Catalog::new();
        catalog
            .entry(repo.clone())
            .or_default()
            .tags
            .insert(tag.clone(), entries);
        let view = tag_view_from(Some(&snapshot), &catalog, None);
        assert_eq!(view[&(repo.clone(), tag.clone())], new);
        // As of the run's exact time the event (stamped at the second's start) is already
        // included: it may have happened any time in that second.
        let view = tag_view_from(Some(&snapshot), &catalog, Some(taken));
        assert_eq!(view[&(repo, tag)], new);
    }
}

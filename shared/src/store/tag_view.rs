//! Tags as of a time: the latest complete run at or before it, updated by the tag
//! records observed after that run; and the root `index.json`, kept to the latest run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::layout::Layout;
use crate::store::records::Snapshot;
use crate::store::{observed_after_run, IndexRef, Listing, Run, Store, StoreError};

/// Repositories whose `index.json` entries are rebuilt at once.
const INDEX_CONCURRENCY: usize = 8;

/// The newest complete run taken at or before `at` (or ever), all its parts merged (see
/// [`Store::latest_run`]).
pub async fn latest_run(
    store: &Store,
    at: Option<DateTime<Utc>>,
) -> Result<Option<Snapshot>, StoreError> {
    match store.latest_run(at).await? {
        Some(run) => Ok(Some(store.resolve_run(&run).await?)),
        None => Ok(None),
    }
}

/// The tags as they stand now, or as they stood at `at`: from the latest complete run at
/// or before that time, updated by tag records observed after it (push events between
/// runs, or a run's own copies). "After" follows [`observed_after_run`].
pub async fn tag_view(
    store: &Store,
    listing: &Listing,
    at: Option<DateTime<Utc>>,
) -> Result<BTreeMap<(RepositoryName, Tag), Digest>, StoreError> {
    let base = latest_run(store, at).await?;
    Ok(tag_view_from(base.as_ref(), listing, at))
}

/// [`tag_view`] on a run already read.
pub fn tag_view_from(
    base: Option<&Snapshot>,
    listing: &Listing,
    at: Option<DateTime<Utc>>,
) -> BTreeMap<(RepositoryName, Tag), Digest> {
    let mut view = BTreeMap::new();
    let since = base.map(|s| s.observed_at);
    if let Some(snapshot) = base {
        for (repo, r) in &snapshot.repositories {
            for (tag, digest) in &r.tags {
                view.insert((repo.clone(), tag.clone()), digest.clone());
            }
        }
    }
    for (repo, r) in listing {
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

/// What [`update_index`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexUpdate {
    /// Repositories whose entries were rebuilt.
    pub repositories: usize,
    /// True when `index.json` was written.
    pub written: bool,
}

/// Brings the root `index.json` (one `REPOSITORY:TAG` entry per tag of the latest run
/// whose image is in the store, so that stock OCI tools find them) up to date with the
/// complete run `run`, given the complete run before it (`previous`, the run the writer
/// planned against).
///
/// Only what changed since `previous` is rebuilt: a repository whose
/// tree is the same and which both runs found complete keeps its entries, without a
/// store request. A run in which nothing changed writes nothing. `copied` gives the
/// media type and size of manifests the caller has just stored.
pub async fn update_index(
    store: &Store,
    run: &Run,
    previous: Option<&Run>,
    copied: &HashMap<Digest, (String, u64)>,
) -> Result<IndexUpdate, StoreError> {
    let current = run.entries();
    let index_exists = store
        .backend()
        .stat(crate::store::layout::INDEX_JSON)
        .await?
        .is_some();
    let dirty: BTreeSet<&RepositoryName> = match (previous, index_exists) {
        (Some(previous), true) => {
            let before = previous.entries();
            let mut dirty: BTreeSet<&RepositoryName> = current
                .iter()
                .filter(|(repo, entry)| {
                    !entry.confirmed()
                        || before.get(*repo).is_none_or(|b| {
                            !b.confirmed() || b.tree_digest() != entry.tree_digest()
                        })
                })
                .map(|(repo, _)| *repo)
                .collect();
            dirty.extend(before.keys().filter(|r| !current.contains_key(*r)).copied());
            dirty
        }
        _ => current.keys().copied().collect(),
    };
    if dirty.is_empty() && index_exists {
        return Ok(IndexUpdate::default());
    }
    let existing = store.index_refs().await?;
    let mut known: HashMap<Digest, (String, u64)> = existing
        .iter()
        .map(|r| (r.digest.clone(), (r.media_type.clone(), r.size)))
        .collect();
    known.extend(copied.iter().map(|(d, m)| (d.clone(), m.clone())));
    let mut refs: Vec<IndexRef> = existing
        .into_iter()
        .filter(|r| current.contains_key(&r.repository) && !dirty.contains(&r.repository))
        .collect();
    let known = &known;
    // Owned names: a stream of borrowed ones trips the compiler's higher-ranked lifetime
    // check once the future is spawned (the worker runs this in a task).
    let targets: Vec<RepositoryName> = dirty
        .iter()
        .filter(|r| current.contains_key(**r))
        .map(|r| (*r).clone())
        .collect();
    let rebuilt: Vec<Vec<IndexRef>> = futures::stream::iter(targets)
        .map(|repo| async move { repository_refs(store, run, &repo, known).await })
        .buffer_unordered(INDEX_CONCURRENCY)
        .try_collect()
        .await?;
    refs.extend(rebuilt.into_iter().flatten());
    refs.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    store.write_index(&refs).await?;
    Ok(IndexUpdate {
        repositories: dirty.len(),
        written: true,
    })
}

/// The `index.json` entries of one repository of `run`: its tags whose image is in the
/// store (one tree read, one listing of its image records).
async fn repository_refs(
    store: &Store,
    run: &Run,
    repo: &RepositoryName,
    known: &HashMap<Digest, (String, u64)>,
) -> Result<Vec<IndexRef>, StoreError> {
    let Some(state) = store.run_repository(run, repo).await? else {
        return Ok(Vec::new());
    };
    let stored: BTreeSet<Digest> = store
        .backend()
        .list(&Layout::images(repo))
        .await?
        .iter()
        .filter_map(|o| {
            let (_, kind, rest) = Layout::split_record_key(&o.key)?;
            (kind == "_images").then(|| Layout::digest_from_file_name(rest))?
        })
        .collect();
    let mut refs = Vec::new();
    for (tag, digest) in state.tags {
        if !stored.contains(&digest) {
            continue;
        }
        let (media_type, size) = match known.get(&digest) {
            Some(m) => m.clone(),
            // An image some other process copied (a worker, for the fan-out).
            None => match store.image_record(repo, &digest).await? {
                Some(record) => (record.media_type, record.size),
                None => continue,
            },
        };
        refs.push(IndexRef {
            repository: repo.clone(),
            tag,
            digest,
            media_type,
            size,
        });
    }
    Ok(refs)
}

/// Rewrites `index.json` for the latest complete run from scratch (a store whose index
/// was lost or hand-edited); nothing when the store has no complete run.
pub async fn rebuild_index(store: &Store) -> Result<IndexUpdate, StoreError> {
    let Some(run) = store.latest_run(None).await? else {
        return Ok(IndexUpdate::default());
    };
    let current = run.entries();
    let known = HashMap::new();
    let mut refs: Vec<IndexRef> = Vec::new();
    for repo in current.keys() {
        refs.extend(repository_refs(store, &run, repo, &known).await?);
    }
    store.write_index(&refs).await?;
    Ok(IndexUpdate {
        repositories: current.len(),
        written: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TagEntry;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
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
        let mut listing = Listing::new();
        let entries = listing
            .entry(repo.clone())
            .or_default()
            .tags
            .entry(tag.clone())
            .or_default();
        entries.push(entry(&old, at("2026-11-26T05:30:00.100Z")));
        entries.push(entry(&new, at("2026-11-27T05:30:00Z")));
        let view = tag_view_from(Some(&snapshot), &listing, None);
        assert_eq!(view[&(repo.clone(), tag.clone())], new);
        // A record of the second before the run is older than the run.
        listing.get_mut(&repo).unwrap().tags.get_mut(&tag).unwrap()[1].observed_at =
            at("2026-11-27T05:29:59.900Z");
        let view = tag_view_from(Some(&snapshot), &listing, None);
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
        let mut listing = Listing::new();
        listing
            .entry(repo.clone())
            .or_default()
            .tags
            .insert(tag.clone(), entries);
        let view = tag_view_from(Some(&snapshot), &listing, None);
        assert_eq!(view[&(repo.clone(), tag.clone())], new);
        // As of the run's exact time the event (stamped at the second's start) is already
        // included: it may have happened any time in that second.
        let view = tag_view_from(Some(&snapshot), &listing, Some(taken));
        assert_eq!(view[&(repo, tag)], new);
    }
}

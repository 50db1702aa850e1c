//! Tags as of a time: the latest complete run at or before it, updated by the tag
//! records observed after that run; and the root `index.json` rebuilt from that view.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::records::Snapshot;
use crate::store::{observed_after_run, IndexRef, Listing, Store, StoreError};

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

/// Rewrites the root `index.json` from the current tag view, so that stock OCI tools find
/// `REPOSITORY:TAG`. Entries whose image is not in the store are left out. `copied` gives
/// the media type and size of manifests the caller has just stored, whose records need
/// not be read back.
pub async fn rebuild_index(
    store: &Store,
    copied: &HashMap<Digest, (String, u64)>,
) -> Result<(), StoreError> {
    let listing = store.listing(None).await?;
    let view = tag_view(store, &listing, None).await?;
    let mut refs = Vec::new();
    // Manifests already in the index, or just copied, need no record read: a record is
    // read only for an image some other process copied (a worker, for the fan-out).
    let mut known: HashMap<Digest, (String, u64)> = store.indexed_manifests().await?;
    known.extend(copied.iter().map(|(d, m)| (d.clone(), m.clone())));
    for ((repo, tag), digest) in view {
        if !listing
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

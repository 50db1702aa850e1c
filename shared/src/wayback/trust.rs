//! Pinning a restore to what the locked vault already holds (`restore --trusted-before`).
//!
//! Create-only writes stop overwrites, not new records: whoever can write to the bucket
//! can add a tag record or a snapshot that points "latest" at an image of their choosing,
//! with any `observedAt` they like (docs/format.md, "Threat model"). What a writer cannot
//! choose is when the store received the object: its write time is the store's clock (S3
//! `LastModified`). Given the creation time of the vault's last recovery point, a restore
//! checks that every record it relies on was written before it, and so is also held by
//! the locked copy in the backup account. A record written later is not corroborated by
//! anything the attacker cannot touch, so the restore refuses to act on it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{observed_after_run, Layout, Listing, Store, StoreError};
use crate::wayback::inventory::TagView;
use crate::wayback::restore::RestoreImage;

/// A record a restore would rely on that was written after the trusted time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LateRecord {
    /// Its key in the store.
    pub key: String,
    /// When the store received it.
    pub written_at: DateTime<Utc>,
}

/// Every record behind `images` (as chosen from `view`, as of `at`) written after
/// `trusted_before`: the parts of the snapshot the view starts from, each image's record,
/// and each tag record that sets a tag the snapshot does not already give. Oldest first.
pub async fn records_written_after(
    store: &Store,
    listing: &Listing,
    view: &TagView,
    images: &[RestoreImage],
    at: Option<DateTime<Utc>>,
    trusted_before: DateTime<Utc>,
) -> Result<Vec<LateRecord>, StoreError> {
    let mut late = Vec::new();
    let mut note = |key: String, written_at: DateTime<Utc>| {
        if written_at > trusted_before {
            late.push(LateRecord { key, written_at });
        }
    };
    if let Some(snapshot) = &view.snapshot {
        for (_, object) in store.part_objects(&snapshot.id).await? {
            note(object.key, object.modified);
        }
    }
    for image in images {
        let known = listing.get(&image.repository);
        match known.and_then(|c| c.images.get(&image.digest)) {
            Some(written_at) => note(Layout::image(&image.repository, &image.digest), *written_at),
            // Not backed up: the restore reports the image as failed, with nothing to trust.
            None => continue,
        }
        for tag in &image.tags {
            let from_snapshot = view.snapshot.as_ref().is_some_and(|s| {
                s.repositories
                    .get(&image.repository)
                    .and_then(|r| r.tags.get(tag))
                    == Some(&image.digest)
            });
            if from_snapshot {
                continue;
            }
            let entry = known.and_then(|c| c.tag_as_of(tag, at)).filter(|e| {
                e.digest == image.digest
                    && view
                        .snapshot
                        .as_ref()
                        .is_none_or(|s| observed_after_run(e.observed_at, s.observed_at))
            });
            if let Some(e) = entry {
                note(
                    Layout::tag(&image.repository, tag, &e.digest, e.observed_at),
                    e.written_at,
                );
            }
        }
    }
    late.sort_by(|a, b| (a.written_at, &a.key).cmp(&(b.written_at, &b.key)));
    Ok(late)
}

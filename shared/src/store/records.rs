//! The JSON records a store keeps besides blobs: images, tag observations, deletions and
//! snapshots. Their layout and meaning are specified in `docs/format.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};

/// Version written into every record; readers refuse records with a newer one.
pub const RECORD_VERSION: u32 = 1;

/// A blob an image reaches, with its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, when the manifest names one.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "mediaType")]
    pub media_type: Option<String>,
}

/// "Image `digest` of `repository` is backed up": written once, after every blob it reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Record format version.
    pub version: u32,
    /// The repository the image was copied from.
    pub repository: RepositoryName,
    /// The digest of its top manifest (or index).
    pub digest: Digest,
    /// The top manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The top manifest's size in bytes.
    pub size: u64,
    /// Tags the image carried when it was first backed up.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Child manifests, for an index (nested indexes flattened), with their platforms.
    #[serde(default)]
    pub manifests: Vec<ChildManifest>,
    /// Every config and layer blob the image reaches, once each.
    #[serde(default)]
    pub blobs: Vec<BlobRef>,
    /// The image this one refers to (a signature, an SBOM), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// Where it was copied from (registry URL).
    pub source: String,
    /// When the record was written.
    #[serde(rename = "backedUpAt")]
    pub backed_up_at: DateTime<Utc>,
}

impl ImageRecord {
    /// Bytes the image references: manifests, configs and layers.
    pub fn total_size(&self) -> u64 {
        self.size
            + self.manifests.iter().map(|m| m.size).sum::<u64>()
            + self.blobs.iter().map(|b| b.size).sum::<u64>()
    }
}

/// A manifest reached from an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `os/arch[/variant]` from the index, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// The last instant a recorded time may stand for, by which observations are ordered.
///
/// ECR events carry whole seconds: a time with no fractional second means "some time in
/// that second", so it is read as the second's last instant. Every other time (a run's
/// listing, a copy) is exact. Without this a push a few milliseconds after a run listed
/// its repository (`05:30:00` against the run's `05:30:00.400`) would read as older than
/// what the run saw, and its tag would vanish until the next run (`docs/format.md`,
/// "Tags as of time T").
pub fn latest_instant(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.timestamp_subsec_nanos() == 0 {
        t + chrono::Duration::nanoseconds(999_999_999)
    } else {
        t
    }
}

/// "Tag `tag` of `repository` pointed at `digest` at `observed_at`": an append-only log
/// entry, written once after the image record exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// Record format version.
    pub version: u32,
    /// The repository.
    pub repository: RepositoryName,
    /// The tag.
    pub tag: Tag,
    /// The image it pointed at.
    pub digest: Digest,
    /// When the registry was seen with this tag on this digest.
    #[serde(rename = "observedAt")]
    pub observed_at: DateTime<Utc>,
}

/// "Image `digest` was deleted from the source registry": the backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    /// Record format version.
    pub version: u32,
    /// The repository.
    pub repository: RepositoryName,
    /// The deleted image.
    pub digest: Digest,
    /// The tag named by the deletion event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    /// When the deletion happened (event time).
    #[serde(rename = "deletedAt")]
    pub deleted_at: DateTime<Utc>,
}

/// The whole state of a source registry as seen by one backup run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Record format version.
    pub version: u32,
    /// Identifier, also the file name: `YYYYMMDDTHHMMSSZ-<6 hex>`, sorting by time.
    pub id: String,
    /// The registry that was enumerated.
    pub source: String,
    /// When enumeration started: the snapshot describes the registry at this time.
    #[serde(rename = "takenAt")]
    pub observed_at: DateTime<Utc>,
    /// The run this snapshot is part of; a run too large for one fan-out invocation is
    /// written in parts (`<run>`, `<run>.1`, `<run>.2`, …). Absent: the snapshot's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Which part of the run this is (0 for the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    /// True on the run's final part: only runs whose last part exists are complete.
    #[serde(default = "yes")]
    pub last: bool,
    /// On the final part: how many parts the run has, so that a reader can tell a run
    /// with a part missing from a complete one (absent in stores written before it was
    /// recorded: then the final part's number plus one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// Repository name → its images and tags.
    pub repositories: BTreeMap<RepositoryName, SnapshotRepository>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

/// One repository in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRepository {
    /// Tag → digest.
    #[serde(default)]
    pub tags: BTreeMap<Tag, Digest>,
    /// Every image digest, tagged or not.
    #[serde(default)]
    pub images: Vec<Digest>,
}

impl Snapshot {
    /// A new, empty snapshot taken now.
    pub fn new(source: String, observed_at: DateTime<Utc>) -> Snapshot {
        Snapshot {
            version: RECORD_VERSION,
            id: format!(
                "{}-{:06x}",
                observed_at.format("%Y%m%dT%H%M%SZ"),
                rand::random::<u32>() & 0xff_ffff
            ),
            source,
            observed_at,
            run: None,
            part: 0,
            last: true,
            parts: Some(1),
            repositories: BTreeMap::new(),
        }
    }

    /// Part `part` of run `run` (ids `<run>` for part 0, `<run>.<part>` after); the last
    /// part records the run's part count.
    pub fn part_of(
        run: &str,
        part: u32,
        source: String,
        observed_at: DateTime<Utc>,
        last: bool,
    ) -> Snapshot {
        Snapshot {
            version: RECORD_VERSION,
            id: crate::store::part_id(run, part),
            source,
            observed_at,
            run: Some(run.to_owned()),
            part,
            last,
            parts: last.then_some(part + 1),
            repositories: BTreeMap::new(),
        }
    }

    /// The run this snapshot belongs to.
    pub fn run_id(&self) -> &str {
        self.run.as_deref().unwrap_or(&self.id)
    }

    /// Number of images across repositories.
    pub fn image_count(&self) -> usize {
        self.repositories.values().map(|r| r.images.len()).sum()
    }
}

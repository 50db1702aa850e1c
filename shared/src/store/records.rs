//! The JSON records a store keeps besides blobs: images, tag observations, deletions and
//! snapshots. Their layout and meaning are specified in `docs/format.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};

/// Version written into image, tag and deletion records (unchanged since the first
/// format).
pub const RECORD_VERSION: u32 = 1;

/// Version written into snapshot parts and trees: 2 since runs are stored as trees of
/// per-repository objects (`docs/format.md`, "Snapshots"). Readers read versions up to
/// this one and refuse newer records.
pub const SNAPSHOT_VERSION: u32 = 2;

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

/// The whole state of a source registry as seen by one backup run (or one part of it),
/// every repository's state in memory. Stored as a [`SnapshotPart`] naming a [`Tree`] per
/// repository; [`crate::store::Store::snapshot`] reads one back whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Record format version.
    pub version: u32,
    /// Identifier, also the file name: `YYYYMMDDTHHMMSSZ-<6 hex>`, sorting by time.
    pub id: String,
    /// The registry that was enumerated.
    pub source: String,
    /// When enumeration started: the snapshot describes the registry at this time.
    pub observed_at: DateTime<Utc>,
    /// The run this snapshot is part of; a run too large for one fan-out invocation is
    /// written in parts (`<run>`, `<run>.1`, `<run>.2`, …). Absent: the snapshot's own id.
    pub run: Option<String>,
    /// Which part of the run this is (0 for the first).
    pub part: u32,
    /// True on the run's final part: only runs whose last part exists are complete.
    pub last: bool,
    /// On the final part: how many parts the run has.
    pub parts: Option<u32>,
    /// Repository name → its images and tags.
    pub repositories: BTreeMap<RepositoryName, SnapshotRepository>,
}

/// One stored snapshot part (`snapshots/<id>.json`): the run's header and, per
/// repository, the tree that holds its state (version 2) or the state itself (version 1
/// stores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// Record format version (1 or 2).
    pub version: u32,
    /// The part's id, also its file name.
    pub id: String,
    /// The registry that was enumerated.
    pub source: String,
    /// When enumeration started.
    #[serde(rename = "takenAt")]
    pub observed_at: DateTime<Utc>,
    /// The run this part belongs to; absent: the part's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Which part of the run this is (0 for the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    /// True on the run's final part.
    #[serde(default = "yes")]
    pub last: bool,
    /// On the final part: how many parts the run has (absent in stores written before it
    /// was recorded: then the final part's number plus one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// Repository name → where its state is.
    pub repositories: BTreeMap<RepositoryName, RepositoryEntry>,
}

/// A repository's entry in a snapshot part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RepositoryEntry {
    /// Version 2: the digest of a [`Tree`] object, with counts.
    Tree(TreeRef),
    /// Version 1: the state inline.
    Inline(SnapshotRepository),
}

/// A version-2 entry: which tree holds the repository's state, and what a reader may
/// know without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    /// The tree object (`trees/sha256/<hex>`).
    pub tree: Digest,
    /// Images in the tree.
    pub images: u64,
    /// Tags in the tree.
    pub tags: u64,
    /// Images of the tree the run did not find complete in the store when it wrote the
    /// part (sent to be copied, failed, or archived at the source): while this is not 0,
    /// the next run compares the repository with the store again.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub pending: u64,
}

impl RepositoryEntry {
    /// Images in the repository's state.
    pub fn image_count(&self) -> u64 {
        match self {
            RepositoryEntry::Tree(t) => t.images,
            RepositoryEntry::Inline(r) => r.images.len() as u64,
        }
    }

    /// Tags in the repository's state.
    pub fn tag_count(&self) -> u64 {
        match self {
            RepositoryEntry::Tree(t) => t.tags,
            RepositoryEntry::Inline(r) => r.tags.len() as u64,
        }
    }

    /// The digest of the tree that holds this state (computed for a version-1 entry).
    pub fn tree_digest(&self) -> Digest {
        match self {
            RepositoryEntry::Tree(t) => t.tree.clone(),
            RepositoryEntry::Inline(r) => Tree::of(r).digest(),
        }
    }

    /// True when the run that wrote the entry found every image of it complete in the
    /// store; `false` for a version-1 entry, which did not record it.
    pub fn confirmed(&self) -> bool {
        matches!(self, RepositoryEntry::Tree(t) if t.pending == 0)
    }
}

/// A repository's state as a content-addressed object (`trees/sha256/<hex>`): the same
/// state is the same object in every run that saw it, so an unchanged repository costs no
/// storage and no write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Record format version (2).
    pub version: u32,
    /// Tag → digest, sorted by tag.
    pub tags: BTreeMap<Tag, Digest>,
    /// Every image digest, tagged or not, sorted.
    pub images: Vec<Digest>,
}

impl Tree {
    /// The canonical tree of a repository's state (images sorted and deduplicated).
    pub fn of(state: &SnapshotRepository) -> Tree {
        let mut images = state.images.clone();
        images.sort();
        images.dedup();
        Tree {
            version: SNAPSHOT_VERSION,
            tags: state.tags.clone(),
            images,
        }
    }

    /// The bytes stored for the tree: they, not the struct, define its digest.
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec_pretty(self)
            .expect("trees serialize")
            .into()
    }

    /// The tree's digest.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// The repository state it holds.
    pub fn into_state(self) -> SnapshotRepository {
        SnapshotRepository {
            tags: self.tags,
            images: self.images,
        }
    }
}

impl SnapshotPart {
    /// The run this part belongs to.
    pub fn run_id(&self) -> &str {
        self.run.as_deref().unwrap_or(&self.id)
    }

    /// Images across the part's repositories.
    pub fn image_count(&self) -> u64 {
        self.repositories
            .values()
            .map(RepositoryEntry::image_count)
            .sum()
    }

    /// The part's header as an empty in-memory snapshot.
    pub fn header(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            id: self.id.clone(),
            source: self.source.clone(),
            observed_at: self.observed_at,
            run: self.run.clone(),
            part: self.part,
            last: self.last,
            parts: self.parts,
            repositories: BTreeMap::new(),
        }
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
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
            version: SNAPSHOT_VERSION,
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
            version: SNAPSHOT_VERSION,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree's bytes depend only on the state: the order the registry listed images in
    /// and duplicates do not change its digest, and the empty tree is the one
    /// `docs/format.md` names.
    #[test]
    fn a_tree_is_the_same_bytes_for_the_same_state() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut one = SnapshotRepository {
            images: vec![b.clone(), a.clone(), b.clone()],
            ..Default::default()
        };
        one.tags.insert("v1".parse().unwrap(), a.clone());
        let mut two = SnapshotRepository {
            images: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        two.tags.insert("v1".parse().unwrap(), a.clone());
        assert_eq!(Tree::of(&one).to_bytes(), Tree::of(&two).to_bytes());
        let mut sorted = vec![a.clone(), b.clone()];
        sorted.sort();
        assert_eq!(Tree::of(&one).images, sorted);
        two.tags.insert("latest".parse().unwrap(), b);
        assert_ne!(Tree::of(&one).digest(), Tree::of(&two).digest());
        assert_eq!(
            Tree::of(&SnapshotRepository::default())
                .digest()
                .to_string(),
            "sha256:a36a75b34c9b92bd0d5cfef9690132a56cf7c16cd266c2b8168814c2082e4036"
        );
    }

    /// A version-1 part's inline state and a version-2 part's tree reference both parse;
    /// only the second records which images were complete.
    #[test]
    fn parts_of_both_versions_parse() {
        let v1: SnapshotPart = serde_json::from_str(
            r#"{"version":1,"id":"20261127T053000Z-3fa2c1","source":"r","takenAt":"2026-11-27T05:30:00Z",
                "repositories":{"team/app":{"tags":{},"images":[]}}}"#,
        )
        .unwrap();
        let entry = &v1.repositories[&"team/app".parse::<RepositoryName>().unwrap()];
        assert!(matches!(entry, RepositoryEntry::Inline(_)));
        assert!(!entry.confirmed(), "version 1 did not record completeness");
        assert_eq!(
            entry.tree_digest(),
            Tree::of(&SnapshotRepository::default()).digest()
        );
        let v2: SnapshotPart = serde_json::from_str(
            r#"{"version":2,"id":"20261127T053000Z-3fa2c1","source":"r","takenAt":"2026-11-27T05:30:00Z",
                "repositories":{"team/app":{"tree":"sha256:a36a75b34c9b92bd0d5cfef9690132a56cf7c16cd266c2b8168814c2082e4036","images":0,"tags":0},
                                "team/web":{"tree":"sha256:a36a75b34c9b92bd0d5cfef9690132a56cf7c16cd266c2b8168814c2082e4036","images":0,"tags":0,"pending":1}}}"#,
        )
        .unwrap();
        let confirmed: Vec<bool> = v2.repositories.values().map(|e| e.confirmed()).collect();
        assert_eq!(confirmed, vec![true, false]);
    }
}

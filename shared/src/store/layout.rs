//! Where each kind of object lives in a store. The only place keys are spelled out.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};

/// How observation times are spelled in tag record names; sorts as text in time order.
const TAG_TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";

/// Key builders for the store layout of `docs/format.md`.
pub struct Layout;

/// Prefix of every blob.
pub const BLOBS_PREFIX: &str = "blobs/sha256/";
/// Prefix of every per-repository record.
pub const REPOSITORIES_PREFIX: &str = "repositories/";
/// Prefix of every snapshot.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
/// Where the trees of snapshots live (content-addressed, like blobs).
pub const TREES_PREFIX: &str = "trees/sha256/";
/// Prefix of every registry settings record (`docs/format.md`, "Settings records").
pub const REGISTRY_SETTINGS_PREFIX: &str = "registry-settings/";
/// The OCI layout marker at the root.
pub const OCI_LAYOUT: &str = "oci-layout";
/// The OCI layout index at the root.
pub const INDEX_JSON: &str = "index.json";
/// Prefix of every verification record (`ecr-backup verify`).
pub const VERIFICATIONS_PREFIX: &str = "verifications/";
/// Prefix of every restore drill record (`ecr-backup drill`, the drill Lambda).
pub const DRILLS_PREFIX: &str = "drills/";

impl Layout {
    /// `blobs/sha256/<hex>`.
    pub fn blob(digest: &Digest) -> String {
        format!("{BLOBS_PREFIX}{}", digest.hex())
    }

    /// `repositories/<repo>/`.
    pub fn repository(repo: &RepositoryName) -> String {
        format!("{REPOSITORIES_PREFIX}{repo}/")
    }

    /// `repositories/<repo>/_images/`.
    pub fn images(repo: &RepositoryName) -> String {
        format!("{REPOSITORIES_PREFIX}{repo}/_images/")
    }

    /// `repositories/<repo>/_images/sha256-<hex>.json`.
    pub fn image(repo: &RepositoryName, digest: &Digest) -> String {
        format!("{}sha256-{}.json", Self::images(repo), digest.hex())
    }

    /// `repositories/<repo>/_tags/`.
    pub fn tags(repo: &RepositoryName) -> String {
        format!("{REPOSITORIES_PREFIX}{repo}/_tags/")
    }

    /// `repositories/<repo>/_tags/<tag>/<observed>_sha256-<hex>.json`, where `observed`
    /// (`YYYYMMDDTHHMMSS.ffffffZ`) is when the registry was seen with that tag.
    pub fn tag(
        repo: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
        observed: DateTime<Utc>,
    ) -> String {
        format!(
            "{}{tag}/{}_sha256-{}.json",
            Self::tags(repo),
            observed.format(TAG_TIME_FORMAT),
            digest.hex()
        )
    }

    /// Parses the file name of a tag record into its observation time and digest.
    pub fn parse_tag_file_name(name: &str) -> Option<(DateTime<Utc>, Digest)> {
        let (time, rest) = name.split_once('_')?;
        let digest = Self::digest_from_file_name(rest)?;
        let time = NaiveDateTime::parse_from_str(time, TAG_TIME_FORMAT)
            .ok()?
            .and_utc();
        Some((time, digest))
    }

    /// `repositories/<repo>/_deleted/sha256-<hex>.json`.
    pub fn deletion(repo: &RepositoryName, digest: &Digest) -> String {
        format!(
            "{REPOSITORIES_PREFIX}{repo}/_deleted/sha256-{}.json",
            digest.hex()
        )
    }

    /// `trees/sha256/<hex>`: a repository's state in a run.
    pub fn tree(digest: &Digest) -> String {
        format!("{TREES_PREFIX}{}", digest.hex())
    }

    /// `repositories/<repo>/_images/`, `repositories/<repo>/_tags/` and
    /// `repositories/<repo>/_deleted/`: the record prefixes of exactly one repository
    /// (the repository's own prefix also holds the records of `<repo>/<more>`).
    pub fn record_prefixes(repo: &RepositoryName) -> [String; 3] {
        ["_images", "_tags", "_deleted"].map(|kind| format!("{REPOSITORIES_PREFIX}{repo}/{kind}/"))
    }

    /// `repositories/<repo>/_settings/`: the settings records of one repository.
    pub fn repository_settings(repo: &RepositoryName) -> String {
        format!("{REPOSITORIES_PREFIX}{repo}/_settings/")
    }

    /// `registry-settings/<part>/`: the settings records of one part of the registry's
    /// settings (`policy`, `replication`, `scanning`).
    pub fn registry_settings(part: &str) -> String {
        format!("{REGISTRY_SETTINGS_PREFIX}{part}/")
    }

    /// `<prefix><observed>_sha256-<hex>.json` below a settings prefix: the settings
    /// document `digest` (a blob) was what the registry had at `observed`.
    pub fn settings_record(prefix: &str, digest: &Digest, observed: DateTime<Utc>) -> String {
        format!(
            "{prefix}{}_sha256-{}.json",
            observed.format(TAG_TIME_FORMAT),
            digest.hex()
        )
    }

    /// `snapshots/<id>.json`.
    pub fn snapshot(id: &str) -> String {
        format!("{SNAPSHOTS_PREFIX}{id}.json")
    }

    /// `snapshots/<run>`: the prefix every part of a run's snapshot starts with.
    pub fn snapshot_prefix(run: &str) -> String {
        format!("{SNAPSHOTS_PREFIX}{run}")
    }

    /// `verifications/<id>.json`.
    pub fn verification(id: &str) -> String {
        format!("{VERIFICATIONS_PREFIX}{id}.json")
    }

    /// `drills/<id>.json`.
    pub fn drill(id: &str) -> String {
        format!("{DRILLS_PREFIX}{id}.json")
    }

    /// Parses `repositories/<repo>/<kind>/<rest>` into its parts.
    pub fn split_record_key(key: &str) -> Option<(RepositoryName, &str, &str)> {
        let rest = key.strip_prefix(REPOSITORIES_PREFIX)?;
        // The first `/_` ends the repository name (no name component starts with `_`);
        // what follows may hold another one, as in the records of a tag named `_images`.
        let (i, kind) = ["/_images/", "/_tags/", "/_deleted/", "/_settings/"]
            .into_iter()
            .filter_map(|kind| rest.find(kind).map(|i| (i, kind)))
            .min_by_key(|&(i, _)| i)?;
        let repo = rest[..i].parse().ok()?;
        Some((repo, &kind[1..kind.len() - 1], &rest[i + kind.len()..]))
    }

    /// Parses `sha256-<hex>.json` into a digest.
    pub fn digest_from_file_name(name: &str) -> Option<Digest> {
        let hex = name.strip_prefix("sha256-")?.strip_suffix(".json")?;
        format!("sha256:{hex}").parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_round_trip() {
        let repo: RepositoryName = "team/app/api".parse().unwrap();
        let tag: Tag = "v1.0".parse().unwrap();
        let d = Digest::of(b"x");
        let now = chrono::Utc::now();
        let k = Layout::tag(&repo, &tag, &d, now);
        let (r, kind, rest) = Layout::split_record_key(&k).unwrap();
        assert_eq!((r, kind), (repo.clone(), "_tags"));
        let (t, file) = rest.split_once('/').unwrap();
        assert_eq!(t, "v1.0");
        let (time, digest) = Layout::parse_tag_file_name(file).unwrap();
        assert_eq!(digest, d);
        assert_eq!(time.timestamp_micros(), now.timestamp_micros());
        // Tags may be named like the record directories.
        for name in ["_images", "_deleted", "_tags"] {
            let k = Layout::tag(&repo, &name.parse().unwrap(), &d, now);
            let (r, kind, rest) = Layout::split_record_key(&k).unwrap();
            assert_eq!(
                (r, kind, rest.split('/').next()),
                (repo.clone(), "_tags", Some(name))
            );
        }
        // Settings records: the repository, then a file name spelled like a tag record's.
        let settings_key = Layout::settings_record(&Layout::repository_settings(&repo), &d, now);
        let (r, kind, rest) = Layout::split_record_key(&settings_key).unwrap();
        assert_eq!((r, kind), (repo.clone(), "_settings"));
        let (time, digest) = Layout::parse_tag_file_name(rest).unwrap();
        assert_eq!(
            (time.timestamp_micros(), digest),
            (now.timestamp_micros(), d.clone())
        );
        let image_key = Layout::image(&repo, &d);
        let (r, kind, rest) = Layout::split_record_key(&image_key).unwrap();
        assert_eq!(
            (r, kind, Layout::digest_from_file_name(rest)),
            (repo, "_images", Some(d))
        );
    }
}

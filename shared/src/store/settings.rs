//! Settings records: what a repository or the registry was configured with (policies,
//! tag mutability, scanning, encryption, resource tags, replication), versioned by
//! observation time like tag records (`docs/format.md`, "Settings records").
//!
//! A settings *document* is stored as a blob, so it is content-addressed and written once;
//! a *record* under [`SettingsSubject::prefix`] says "at `<time>` the subject's settings
//! were document `<digest>`", and its key holds all of that, so readers never open it.
//! The store does not interpret documents: it compares digests, which is what makes an
//! unchanged run write nothing.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::repository::Existing;
use super::{Store, StoreError, WriteOutcome};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::store::records::RECORD_VERSION;

/// The parts of a registry's own settings, each recorded on its own, so that one part
/// that cannot be read leaves the others recorded.
pub const REGISTRY_PARTS: &[&str] = &["policy", "replication", "scanning"];

/// Whose settings a record describes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SettingsSubject {
    /// One repository.
    Repository(RepositoryName),
    /// One part of the registry's settings (one of [`REGISTRY_PARTS`]).
    Registry(&'static str),
}

impl SettingsSubject {
    /// The key prefix its records live under.
    pub fn prefix(&self) -> String {
        match self {
            SettingsSubject::Repository(repo) => Layout::repository_settings(repo),
            SettingsSubject::Registry(part) => Layout::registry_settings(part),
        }
    }
}

impl std::fmt::Display for SettingsSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsSubject::Repository(repo) => write!(f, "repository {repo}"),
            SettingsSubject::Registry(part) => write!(f, "registry {part}"),
        }
    }
}

/// The body of a settings record; readers use only its key, the body repeats it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// Record format version.
    pub version: u32,
    /// The repository, for a repository's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryName>,
    /// The part, for the registry's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// The settings document (a blob).
    pub digest: Digest,
    /// When the registry was seen with these settings.
    #[serde(rename = "observedAt")]
    pub observed_at: DateTime<Utc>,
}

/// One settings observation, as listed from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsEntry {
    /// The settings document.
    pub digest: Digest,
    /// When the registry was seen with it.
    pub observed_at: DateTime<Utc>,
    /// When the record was written, by the store's clock.
    pub written_at: DateTime<Utc>,
}

/// What [`Store::put_settings`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsWrite {
    /// A new record (and, unless the store had it, a new document) was written.
    Written,
    /// The latest record already names the same document: nothing was written.
    Unchanged,
}

impl Store {
    /// Every settings observation of `subject`, oldest first (by observation time, then
    /// digest, as tag records are ordered), from one listing of its prefix.
    pub async fn settings_history(
        &self,
        subject: &SettingsSubject,
    ) -> Result<Vec<SettingsEntry>, StoreError> {
        let prefix = subject.prefix();
        let mut entries: Vec<SettingsEntry> = self
            .backend()
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|object| {
                let name = object.key.strip_prefix(&prefix)?;
                // A key in a sub-directory is not a record of this subject.
                if name.contains('/') {
                    return None;
                }
                let (observed_at, digest) = Layout::parse_tag_file_name(name)?;
                Some(SettingsEntry {
                    digest,
                    observed_at,
                    written_at: object.modified,
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.observed_at, &a.digest).cmp(&(b.observed_at, &b.digest)));
        Ok(entries)
    }

    /// The settings of `subject` as of `at` (or the latest, when `at` is `None`).
    pub async fn settings_as_of(
        &self,
        subject: &SettingsSubject,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<SettingsEntry>, StoreError> {
        Ok(self
            .settings_history(subject)
            .await?
            .into_iter()
            .rev()
            .find(|e| at.is_none_or(|at| e.observed_at <= at)))
    }

    /// The bytes of a settings document, verified against its digest.
    pub async fn settings_document(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        self.read_blob(digest)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: Layout::blob(digest),
            })
    }

    /// Records that `subject` had the settings `document` at `observed_at`, unless its
    /// latest record already names the same document (then nothing is written). The
    /// document is written before the record that names it.
    pub async fn put_settings(
        &self,
        subject: &SettingsSubject,
        document: Bytes,
        observed_at: DateTime<Utc>,
    ) -> Result<SettingsWrite, StoreError> {
        let digest = Digest::of(&document);
        let latest = self.settings_as_of(subject, None).await?;
        if latest.is_some_and(|l| l.digest == digest) {
            return Ok(SettingsWrite::Unchanged);
        }
        match self.put_blob_bytes(&digest, document).await? {
            WriteOutcome::Written | WriteOutcome::AlreadyExists => {}
        }
        let record = SettingsRecord {
            version: RECORD_VERSION,
            repository: match subject {
                SettingsSubject::Repository(repo) => Some(repo.clone()),
                SettingsSubject::Registry(_) => None,
            },
            part: match subject {
                SettingsSubject::Registry(part) => Some((*part).to_owned()),
                SettingsSubject::Repository(_) => None,
            },
            digest: digest.clone(),
            observed_at,
        };
        let key = Layout::settings_record(&subject.prefix(), &digest, observed_at);
        // The key holds every field, so a record already there must be this one.
        self.write_json_once(&key, &record, Existing::MustMatch)
            .await?;
        Ok(SettingsWrite::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirBackend;
    use std::sync::Arc;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// An unchanged document writes nothing; a changed one writes a record, and each
    /// time reads back the document it had then.
    #[tokio::test]
    async fn settings_are_versioned_by_observation_and_unchanged_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(DirBackend::new(dir.path())));
        store.init().await.unwrap();
        let subject = SettingsSubject::Repository("team/app".parse().unwrap());
        let one = Bytes::from_static(br#"{"policy":"one"}"#);
        let two = Bytes::from_static(br#"{"policy":"two"}"#);
        let t1 = at("2026-11-27T05:30:00.412345Z");
        let t2 = at("2026-11-28T05:30:00.207431Z");
        assert_eq!(
            store.put_settings(&subject, one.clone(), t1).await.unwrap(),
            SettingsWrite::Written
        );
        let count = || {
            walk(dir.path())
                .into_iter()
                .filter(|p| !p.contains("/tmp/"))
                .count()
        };
        let files = count();
        assert_eq!(
            store
                .put_settings(&subject, one.clone(), t1 + chrono::Duration::hours(1))
                .await
                .unwrap(),
            SettingsWrite::Unchanged
        );
        assert_eq!(count(), files, "an unchanged run writes no object");
        store.put_settings(&subject, two.clone(), t2).await.unwrap();
        let read = |t| {
            let store = store.clone();
            let subject = subject.clone();
            async move {
                let e = store.settings_as_of(&subject, t).await.unwrap()?;
                Some(store.settings_document(&e.digest).await.unwrap())
            }
        };
        assert_eq!(read(Some(t1)).await, Some(one.clone()));
        assert_eq!(
            read(Some(t2 - chrono::Duration::seconds(1))).await,
            Some(one)
        );
        assert_eq!(read(None).await, Some(two));
        assert_eq!(read(Some(t1 - chrono::Duration::seconds(1))).await, None);
        // The repository's listing (images, tags) is not confused by settings records.
        let listing = store.listing(None).await.unwrap();
        let repo = &listing[&"team/app".parse::<RepositoryName>().unwrap()];
        assert!(repo.images.is_empty() && repo.tags.is_empty());
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
        out
    }
}

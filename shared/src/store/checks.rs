//! Records of the checks run against a store: each `verify` leaves a verification record
//! (`verifications/<id>.json`) and each restore drill a drill record (`drills/<id>.json`),
//! so that `ecr-backup status` and monitoring can say when the backup was last proven and
//! with what result. Both are create-only; their format is in `docs/format.md`, "Check
//! records".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::{self, Layout};
use super::repository::Existing;
use super::{Store, StoreError, WriteOutcome};
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};

/// Most problems a check record spells out; the rest are counted.
pub const MAX_RECORDED_PROBLEMS: usize = 100;

/// The id of a check started at `at`: `YYYYMMDDTHHMMSSZ-<6 hex>`, as run ids, so ids
/// sort by the second the check started.
pub fn check_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Whether `id` is spelled as [`check_id`] spells ids (so stray keys are ignored).
fn is_check_id(id: &str) -> bool {
    let Some((second, suffix)) = id.split_once('-') else {
        return false;
    };
    second.len() == 16
        && chrono::NaiveDateTime::parse_from_str(second, "%Y%m%dT%H%M%SZ").is_ok()
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// "`ecr-backup verify` checked the store, and found this": written once per verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRecord {
    /// Record format version.
    pub version: u32,
    /// The record's id (its key's name).
    pub id: String,
    /// When the verification finished.
    pub finished_at: DateTime<Utc>,
    /// How long it took, in seconds.
    pub elapsed_seconds: f64,
    /// The snapshot checked against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Whether blobs were re-hashed (all, or a sample).
    pub read_data: bool,
    /// The sample re-hashed, in percent, when not all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<f64>,
    /// Image records checked.
    pub images_checked: u64,
    /// Blobs checked for presence and size.
    pub blobs_checked: u64,
    /// Blobs re-hashed.
    pub blobs_read: u64,
    /// True when nothing was wrong.
    pub clean: bool,
    /// How many problems were found (of every kind).
    pub problem_count: u64,
    /// The first [`MAX_RECORDED_PROBLEMS`] problems, each naming what it breaks.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// One image a drill restored and compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillImage {
    /// Its repository in the store.
    pub repository: RepositoryName,
    /// The image.
    pub digest: Digest,
    /// The run's tags on it (restored too).
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Where it was restored, under the scratch prefix.
    pub scratch_repository: String,
    /// Blobs (manifests, configs, layers) re-hashed from the store and compared in the target.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// True when every digest matched.
    pub ok: bool,
    /// Why not, with the cause chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a drill could remove of what it restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillCleanup {
    /// `ecr` (BatchDeleteImage then DeleteRepository), `registry` (manifest DELETEs) or
    /// `none` (nothing was restored).
    pub method: String,
    /// True when nothing the drill pushed is left in the target.
    pub complete: bool,
    /// Scratch repositories deleted (ECR).
    #[serde(default)]
    pub repositories_deleted: u64,
    /// Scratch images (manifests) deleted.
    #[serde(default)]
    pub images_deleted: u64,
    /// What is left behind and why, one line each.
    #[serde(default)]
    pub left_over: Vec<String>,
}

/// "A restore drill restored a sample of run `run` and compared every digest": written
/// once per drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillRecord {
    /// Record format version.
    pub version: u32,
    /// The record's id (its key's name).
    pub id: String,
    /// The run the sample was drawn from (its snapshot id).
    pub run: String,
    /// The registry that run enumerated.
    pub source: String,
    /// The registry restored into.
    pub target: String,
    /// The repository prefix the drill restored under.
    pub scratch_prefix: String,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// True when every sampled image was restored with every digest intact.
    pub passed: bool,
    /// The sample asked for (`5`, `10%`).
    pub sample: String,
    /// Images in the run (the population sampled).
    pub images_in_run: u64,
    /// Blobs of the sampled images that failed their re-hash from the store (missing,
    /// wrong size or corrupt).
    #[serde(default)]
    pub blob_problems: u64,
    /// The sampled images and their results.
    pub images: Vec<DrillImage>,
    /// Problems that are not one image's (a target that could not be reached, a cleanup
    /// that failed), one line each.
    #[serde(default)]
    pub problems: Vec<String>,
    /// What was cleaned up.
    pub cleanup: DrillCleanup,
}

impl Store {
    /// Writes a verification record, once (create-only; an id is never reused).
    pub async fn put_verify_record(&self, record: &VerifyRecord) -> Result<(), StoreError> {
        self.put_check(&Layout::verification(&record.id), record)
            .await
    }

    /// Writes a drill record, once (create-only; an id is never reused).
    pub async fn put_drill_record(&self, record: &DrillRecord) -> Result<(), StoreError> {
        self.put_check(&Layout::drill(&record.id), record).await
    }

    /// The latest verification record (by id), if any.
    pub async fn latest_verify_record(&self) -> Result<Option<VerifyRecord>, StoreError> {
        match self.latest_check_id(layout::VERIFICATIONS_PREFIX).await? {
            Some(id) => self.read_json(&Layout::verification(&id)).await,
            None => Ok(None),
        }
    }

    /// The latest drill record (by id), if any.
    pub async fn latest_drill_record(&self) -> Result<Option<DrillRecord>, StoreError> {
        match self.latest_check_id(layout::DRILLS_PREFIX).await? {
            Some(id) => self.read_json(&Layout::drill(&id)).await,
            None => Ok(None),
        }
    }

    async fn put_check<T: Serialize>(&self, key: &str, record: &T) -> Result<(), StoreError> {
        match self
            .write_json_once(key, record, Existing::MustMatch)
            .await?
        {
            WriteOutcome::Written | WriteOutcome::AlreadyExists => Ok(()),
        }
    }

    /// The greatest well-formed id under `prefix`: ids start with the second their check
    /// started, so it is the latest check (of two in one second, the one whose id sorts
    /// last).
    async fn latest_check_id(&self, prefix: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .backend()
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let id = o.key.strip_prefix(prefix)?.strip_suffix(".json")?;
                is_check_id(id).then(|| id.to_owned())
            })
            .max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_ids_sort_by_time_and_parse_back() {
        let a = check_id("2026-11-27T05:30:00Z".parse().unwrap());
        let b = check_id("2026-11-27T05:30:01Z".parse().unwrap());
        assert!(a < b);
        assert!(is_check_id(&a) && is_check_id(&b));
        assert!(a.starts_with("20261127T053000Z-"));
        for bad in [
            "",
            "x",
            "20261127T053000Z",
            "20261127T053000Z-",
            "2026-11-27-abc",
        ] {
            assert!(!is_check_id(bad), "{bad}");
        }
    }
}

//! Restore drills: a backup that was never restored is a hope, so a drill proves, on a
//! random sample of the latest complete run, that the way back works.
//!
//! For each sampled image it (1) re-hashes every blob it reaches from the store, (2)
//! restores it with the restore engine into a scratch repository
//! `<prefix>/<drill id>/<repository>` of the target registry, tags included, (3) reads
//! it back from the target and compares every digest (the manifest's bytes by GET, every
//! child manifest, config and layer by HEAD, every tag), then (4) deletes what it pushed,
//! only ever under the scratch prefix, and (5) writes a drill record into the store
//! (`drills/<id>.json`, docs/format.md) naming every image and every problem.
//!
//! Cleanup: in ECR, `BatchDeleteImage` then `DeleteRepository` of each scratch
//! repository; in another registry, a manifest `DELETE` per image (the distribution API
//! cannot delete a repository, and blob storage is reclaimed only by the registry's
//! garbage collection); a registry without deletes enabled answers 405, and the record
//! says what was left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use rand::seq::IndexedRandom;
use serde::Serialize;

use crate::error::error_chain;
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::progress::{NoProgress, Reporter};
use crate::source::registry::{Deleted, RegistryError};
use crate::source::Source;
use crate::store::checks::{check_id, DrillCleanup, DrillImage, DrillRecord};
use crate::store::records::{ImageRecord, RECORD_VERSION};
use crate::store::tag_view::latest_run;
use crate::store::{Store, StoreError};
use crate::wayback::restore::{self, RestoreImage, RestoreOptions};
use crate::wayback::verify::rehash;

/// The scratch prefix when none is given.
pub const DEFAULT_SCRATCH_PREFIX: &str = "ecr-backup-drill";

/// Images sampled when no sample is given.
pub const DEFAULT_SAMPLE: usize = 5;

/// How many images a drill samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// This many images (all, if the run has fewer).
    Count(usize),
    /// This percentage of the run's images, rounded up (at least one).
    Percent(f64),
}

impl Sample {
    /// Parses `N` or `P%`.
    pub fn parse(text: &str) -> Result<Sample, DrillError> {
        let bad = |reason: &str| DrillError::InvalidSample {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let text_trimmed = text.trim();
        if let Some(p) = text_trimmed.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad("not a number"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad("a percentage must be above 0 and at most 100"));
            }
            return Ok(Sample::Percent(p));
        }
        match text_trimmed.parse::<usize>() {
            Ok(0) => Err(bad("a drill restores at least one image")),
            Ok(n) => Ok(Sample::Count(n)),
            Err(_) => Err(bad("expected a number of images (5) or a percentage (10%)")),
        }
    }

    /// How many of `population` images to take.
    pub fn size(&self, population: usize) -> usize {
        let n = match *self {
            Sample::Count(n) => n,
            Sample::Percent(p) => ((population as f64) * p / 100.0).ceil() as usize,
        };
        n.clamp(population.min(1), population)
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sample::Count(n) => write!(f, "{n}"),
            Sample::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Settings of a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// How many images.
    pub sample: Sample,
    /// The repository prefix restores go under; cleanup never touches anything else.
    pub scratch_prefix: String,
    /// Concurrency and retries of the restore.
    pub restore: RestoreOptions,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            sample: Sample::Count(DEFAULT_SAMPLE),
            scratch_prefix: DEFAULT_SCRATCH_PREFIX.to_owned(),
            restore: RestoreOptions::default(),
        }
    }
}

/// Why a drill could not run; failures of images are in its record instead.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Reading the store failed.
    #[error("reading the store")]
    Store(#[source] Box<StoreError>),
    /// The store holds no complete run to draw a sample from.
    #[error(
        "{store} holds no complete backup run to drill (`ecr-backup ls --snapshots` lists runs)"
    )]
    NoCompleteRun {
        /// The store.
        store: String,
    },
    /// `--sample` is malformed.
    #[error("invalid sample {text:?}: {reason}")]
    InvalidSample {
        /// What was given.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--scratch-prefix` is not a repository name.
    #[error("invalid scratch prefix {prefix:?}: it must be a repository name (lower-case, e.g. ecr-backup-drill)")]
    ScratchPrefix {
        /// What was given.
        prefix: String,
    },
    /// The target registry cannot be reached or refused the credentials; the drill record
    /// (written all the same, as failed) is `record`.
    #[error("target registry {target} is not usable; drill {id} failed")]
    Target {
        /// The target.
        target: String,
        /// The drill's id.
        id: String,
        /// What it answered.
        #[source]
        source: Box<RegistryError>,
    },
    /// The drill ran but its record could not be written.
    #[error("writing drill record {id}")]
    Record {
        /// The drill's id.
        id: String,
        /// The store error.
        #[source]
        source: Box<StoreError>,
    },
}

impl From<StoreError> for DrillError {
    fn from(e: StoreError) -> Self {
        DrillError::Store(Box::new(e))
    }
}

/// A drill's result: the record it wrote, and what the metrics count.
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    /// The store.
    pub store: String,
    /// The record's key in the store.
    pub key: String,
    /// The record as written (docs/format.md, "Drill records").
    pub record: DrillRecord,
    /// Wall time, in seconds.
    pub elapsed_seconds: f64,
}

impl DrillOutcome {
    /// Images that failed.
    pub fn failures(&self) -> u64 {
        self.record.images.iter().filter(|i| !i.ok).count() as u64
    }
}

/// One sampled image as it goes through the drill.
struct Candidate {
    repository: RepositoryName,
    digest: Digest,
    tags: Vec<Tag>,
    scratch: Result<RepositoryName, String>,
    record: Option<ImageRecord>,
    blobs: u64,
    bytes: u64,
    error: Option<String>,
}

/// Runs a drill of `store` into `target`; see the module docs.
pub async fn drill(
    store: &Store,
    target: &Source,
    options: &DrillOptions,
) -> Result<DrillOutcome, DrillError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let id = check_id(started_at);
    let prefix: RepositoryName =
        options
            .scratch_prefix
            .parse()
            .map_err(|_| DrillError::ScratchPrefix {
                prefix: options.scratch_prefix.clone(),
            })?;
    store.ensure_exists().await?;
    let run = latest_run(store, None)
        .await?
        .ok_or_else(|| DrillError::NoCompleteRun {
            store: store.location(),
        })?;

    // The population: every image of the run, with the run's tags on it.
    let mut population: BTreeMap<(RepositoryName, Digest), Vec<Tag>> = BTreeMap::new();
    for (repo, r) in &run.repositories {
        for digest in &r.images {
            population
                .entry((repo.clone(), digest.clone()))
                .or_default();
        }
        for (tag, digest) in &r.tags {
            population
                .entry((repo.clone(), digest.clone()))
                .or_default()
                .push(tag.clone());
        }
    }
    let all: Vec<_> = population.into_iter().collect();
    let size = options.sample.size(all.len());
    let mut picked: Vec<_> = all
        .choose_multiple(&mut rand::rng(), size)
        .cloned()
        .collect();
    picked.sort();
    // Scratch repositories are named after the drill, so that concurrent drills never
    // share one and cleanup removes exactly this drill's.
    let scratch_root = format!("{prefix}/{}", id.to_ascii_lowercase());
    let mut candidates: Vec<Candidate> = picked
        .into_iter()
        .map(|((repository, digest), tags)| Candidate {
            scratch: format!("{scratch_root}/{repository}")
                .parse::<RepositoryName>()
                .map_err(|e| format!("scratch repository name for {repository}: {e}")),
            repository,
            digest,
            tags,
            record: None,
            blobs: 0,
            bytes: 0,
            error: None,
        })
        .collect();

    let mut problems = Vec::new();
    let reachable = target.registry().ping().await;
    let target_error = reachable.err();
    if let Some(e) = &target_error {
        problems.push(format!(
            "target registry {} is not usable: {}",
            target.name(),
            error_chain(e)
        ));
    }

    // 1. Every blob of every sampled image, re-hashed from the store.
    let mut blob_problems = 0;
    for c in &mut candidates {
        if let Err(e) = &c.scratch {
            c.error = Some(e.clone());
            continue;
        }
        match store.image_record(&c.repository, &c.digest).await {
            Ok(Some(record)) => c.record = Some(record),
            Ok(None) => {
                c.error = Some(format!(
                    "{}@{} is not in the store (no image record): its backup failed",
                    c.repository, c.digest
                ));
                continue;
            }
            Err(e) => {
                c.error = Some(format!(
                    "reading the image record of {}@{}: {}",
                    c.repository,
                    c.digest,
                    error_chain(&e)
                ));
                continue;
            }
        }
        let record = c.record.as_ref().expect("set above");
        let blobs = std::iter::once((record.digest.clone(), record.size))
            .chain(record.manifests.iter().map(|m| (m.digest.clone(), m.size)))
            .chain(record.blobs.iter().map(|b| (b.digest.clone(), b.size)));
        let mut faults = Vec::new();
        for (blob, size) in blobs {
            let read = AtomicU64::new(0);
            let expected = if size == 0 {
                store.blob_size(&blob).await.ok().flatten().unwrap_or(0)
            } else {
                size
            };
            if let Some(fault) = rehash(store, &blob, expected, &NoProgress, &read).await {
                faults.push(format!("blob {blob}: {fault}"));
            }
            c.blobs += 1;
            c.bytes += read.into_inner();
        }
        if !faults.is_empty() {
            blob_problems += faults.len() as u64;
            c.error = Some(format!(
                "{}@{} is broken in the store: {}",
                c.repository,
                c.digest,
                faults.join("; ")
            ));
        }
    }

    // 2. Restore what the store holds whole.
    let to_restore: Vec<RestoreImage> = candidates
        .iter()
        .filter(|c| c.error.is_none() && target_error.is_none())
        .map(|c| RestoreImage {
            repository: c.repository.clone(),
            target_repository: c.scratch.clone().expect("checked above"),
            digest: c.digest.clone(),
            tags: c.tags.clone(),
        })
        .collect();
    let mut pushed: BTreeSet<RepositoryName> = BTreeSet::new();
    if !to_restore.is_empty() {
        let reporter: Arc<dyn Reporter> = Arc::new(NoProgress);
        let report = restore::push_images(
            store,
            target,
            &to_restore,
            &options.restore,
            reporter,
            Some(run.id.clone()),
            Instant::now(),
        )
        .await;
        match report {
            Ok(report) => {
                for failed in report.images_failed {
                    if let Some(c) = candidates
                        .iter_mut()
                        .find(|c| c.repository == failed.repository && c.digest == failed.digest)
                    {
                        c.error = Some(format!(
                            "restoring into {}: {}",
                            failed.target_repository, failed.error
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("restore: {}", error_chain(&e))),
        }
        // Whatever was attempted may have left something in the target.
        pushed.extend(to_restore.iter().map(|i| i.target_repository.clone()));
    }

    // 3. Every digest, read back from the target.
    for c in candidates.iter_mut().filter(|c| c.error.is_none()) {
        if target_error.is_some() {
            c.error = Some("not restored: the target registry is not usable".into());
            continue;
        }
        let scratch = c.scratch.clone().expect("checked above");
        let record = c.record.as_ref().expect("read above");
        let compared = compare(target, &scratch, c, record).await;
        if let Err(e) = compared {
            c.error = Some(e);
        }
    }

    // 4. Cleanup, under the scratch prefix only.
    let cleanup = clean_up(target, &prefix, &pushed, &candidates).await;
    for line in &cleanup.left_over {
        problems.push(format!("cleanup: {line}"));
    }

    // 5. The record.
    let images: Vec<DrillImage> = candidates
        .into_iter()
        .map(|c| DrillImage {
            scratch_repository: match &c.scratch {
                Ok(s) => s.to_string(),
                Err(_) => String::new(),
            },
            repository: c.repository,
            digest: c.digest,
            tags: c.tags,
            blobs: c.blobs,
            bytes: c.bytes,
            ok: c.error.is_none(),
            error: c.error,
        })
        .collect();
    let passed = target_error.is_none() && images.iter().all(|i| i.ok);
    let record = DrillRecord {
        version: RECORD_VERSION,
        id: id.clone(),
        run: run.id.clone(),
        source: run.source.clone(),
        target: target.name().to_owned(),
        scratch_prefix: prefix.to_string(),
        started_at,
        finished_at: Utc::now(),
        passed,
        sample: options.sample.to_string(),
        images_in_run: all.len() as u64,
        blob_problems,
        images,
        problems,
        cleanup,
    };
    store
        .put_drill_record(&record)
        .await
        .map_err(|source| DrillError::Record {
            id: id.clone(),
            source: Box::new(source),
        })?;
    if let Some(source) = target_error {
        return Err(DrillError::Target {
            target: target.name().to_owned(),
            id,
            source: Box::new(source),
        });
    }
    Ok(DrillOutcome {
        store: store.location(),
        key: crate::store::Layout::drill(&id),
        record,
        elapsed_seconds: started.elapsed().as_millis() as f64 / 1000.0,
    })
}

/// Reads a restored image back from the target: its manifest's bytes must hash to its
/// digest, and every child manifest, blob and tag must be there as the record says.
async fn compare(
    target: &Source,
    scratch: &RepositoryName,
    c: &Candidate,
    record: &ImageRecord,
) -> Result<(), String> {
    let registry = target.registry();
    let fail = |what: String, e: RegistryError| format!("{what}: {}", error_chain(&e));
    let fetched = registry
        .get_manifest(scratch, &c.digest.to_string())
        .await
        .map_err(|e| fail(format!("reading back {scratch}@{}", c.digest), e))?;
    if fetched.digest != c.digest || Digest::of(&fetched.bytes) != c.digest {
        return Err(format!(
            "{scratch}@{} came back as {}",
            c.digest,
            Digest::of(&fetched.bytes)
        ));
    }
    for child in &record.manifests {
        if !registry
            .manifest_exists(scratch, &child.digest)
            .await
            .map_err(|e| fail(format!("checking {scratch}@{}", child.digest), e))?
        {
            return Err(format!(
                "child manifest {} is missing in {scratch}",
                child.digest
            ));
        }
    }
    for blob in &record.blobs {
        if !registry
            .blob_exists(scratch, &blob.digest)
            .await
            .map_err(|e| fail(format!("checking blob {} in {scratch}", blob.digest), e))?
        {
            return Err(format!("blob {} is missing in {scratch}", blob.digest));
        }
    }
    for tag in &c.tags {
        let head = registry
            .head_manifest(scratch, tag.as_str())
            .await
            .map_err(|e| fail(format!("reading back {scratch}:{tag}"), e))?;
        match head {
            Some(h) if h.digest == c.digest => {}
            Some(h) => {
                return Err(format!(
                    "{scratch}:{tag} points at {}, expected {}",
                    h.digest, c.digest
                ))
            }
            None => return Err(format!("{scratch}:{tag} is missing")),
        }
    }
    Ok(())
}

/// Removes what the drill pushed, and says what could not be removed. Never touches a
/// repository outside `prefix/`.
async fn clean_up(
    target: &Source,
    prefix: &RepositoryName,
    pushed: &BTreeSet<RepositoryName>,
    candidates: &[Candidate],
) -> DrillCleanup {
    let mut cleanup = DrillCleanup {
        method: if pushed.is_empty() {
            "none"
        } else if target.ecr().is_some() {
            "ecr"
        } else {
            "registry"
        }
        .to_owned(),
        complete: true,
        repositories_deleted: 0,
        images_deleted: 0,
        left_over: Vec::new(),
    };
    let inside = format!("{prefix}/");
    for repo in pushed {
        if !repo.as_str().starts_with(&inside) {
            // Cannot happen (names are built under the prefix); refuse all the same.
            cleanup.complete = false;
            cleanup.left_over.push(format!(
                "{repo} is outside the scratch prefix {prefix}; not touched"
            ));
            continue;
        }
        // Every manifest the drill may have pushed there: children first is not needed
        // for a delete, but an index's children must go too or the repository stays.
        let mut digests: Vec<Digest> = Vec::new();
        for c in candidates
            .iter()
            .filter(|c| c.scratch.as_ref().ok() == Some(repo))
        {
            digests.push(c.digest.clone());
            if let Some(r) = &c.record {
                digests.extend(r.manifests.iter().map(|m| m.digest.clone()));
            }
        }
        if let Some(api) = target.ecr() {
            match api.delete_images(repo, &digests).await {
                Ok(n) => cleanup.images_deleted += n,
                Err(e) => {
                    cleanup.complete = false;
                    cleanup
                        .left_over
                        .push(format!("{repo}: deleting its images: {}", error_chain(&e)));
                    continue;
                }
            }
            match api.delete_repository(repo).await {
                Ok(_) => cleanup.repositories_deleted += 1,
                Err(e) => {
                    cleanup.complete = false;
                    cleanup.left_over.push(format!(
                        "{repo}: deleting the repository: {}",
                        error_chain(&e)
                    ));
                }
            }
            continue;
        }
        for digest in digests {
            match target.registry().delete_manifest(repo, &digest).await {
                Ok(Deleted::Deleted) => cleanup.images_deleted += 1,
                Ok(Deleted::Absent) => {}
                Ok(Deleted::Unsupported) => {
                    cleanup.complete = false;
                    cleanup.left_over.push(format!(
                        "{repo}@{digest}: the registry does not allow deletes (HTTP 405; CNCF distribution needs storage.delete.enabled: true); delete the scratch repositories under {prefix}/ by hand"
                    ));
                    break;
                }
                Err(e) => {
                    cleanup.complete = false;
                    cleanup
                        .left_over
                        .push(format!("{repo}@{digest}: {}", error_chain(&e)));
                }
            }
        }
    }
    cleanup
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_and_size() {
        assert_eq!(Sample::parse("5").unwrap(), Sample::Count(5));
        assert_eq!(Sample::parse("10%").unwrap(), Sample::Percent(10.0));
        for bad in ["0", "-1", "x", "0%", "101%", "%"] {
            assert!(Sample::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Sample::Count(5).size(3), 3);
        assert_eq!(Sample::Count(5).size(0), 0);
        assert_eq!(Sample::Percent(10.0).size(25), 3);
        assert_eq!(Sample::Percent(1.0).size(3), 1, "at least one image");
        assert_eq!(Sample::Percent(100.0).size(7), 7);
    }
}

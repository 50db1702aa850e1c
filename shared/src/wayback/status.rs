//! How fresh and how proven a backup is, from the store alone: the last complete run and
//! the images it failed to copy, the last verification and the last restore drill (their
//! records), and, given the source, the images it has that the store lacks. `ecr-backup
//! status` adds the queues' side and decides whether all of it is healthy.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::source::{Source, SourceError};
use crate::store::checks::{DrillRecord, VerifyRecord};
use crate::store::tag_view::latest_run;
use crate::store::{Listing, Store, StoreError};

/// Most images a status names in a list; the rest are counted.
const NAMED: usize = 20;

/// The last complete run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// Its id.
    pub id: String,
    /// The registry it enumerated.
    pub source: String,
    /// When it enumerated the registry.
    pub taken_at: DateTime<Utc>,
    /// Seconds since then.
    pub age_seconds: i64,
    /// Repositories it saw.
    pub repositories: u64,
    /// Images it saw.
    pub images: u64,
    /// Images it saw that the store has no record of (their copy failed or is pending).
    pub failures: u64,
    /// The first of them, `repository@digest`.
    pub failed: Vec<String>,
}

/// What the store says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// The store.
    pub store: String,
    /// The last complete run, if any.
    pub last_run: Option<RunStatus>,
    /// The last verification's record, if any.
    pub last_verify: Option<VerifyRecord>,
    /// The last restore drill's record, if any.
    pub last_drill: Option<DrillRecord>,
}

/// Images the source has that the store lacks.
#[derive(Debug, Clone, Serialize)]
pub struct SourceGap {
    /// The source registry.
    pub source: String,
    /// Images it lists (archived ones included).
    pub images_seen: u64,
    /// Images it lists that the store has no record of.
    pub missing: u64,
    /// The first of them, `repository@digest`.
    pub first_missing: Vec<String>,
    /// Of those, images in ECR's archive storage class (they cannot be copied until
    /// restored to ACTIVE).
    pub archived: u64,
}

/// Reads the store's side of the status.
pub async fn store_status(
    store: &Store,
    now: DateTime<Utc>,
) -> Result<(StoreStatus, Listing), StoreError> {
    store.ensure_exists().await?;
    let listing = store.listing(None).await?;
    let last_run = latest_run(store, None).await?.map(|run| {
        let mut missing = Vec::new();
        for (repo, r) in &run.repositories {
            let digests: BTreeSet<&Digest> = r.images.iter().chain(r.tags.values()).collect();
            for digest in digests {
                if !has(&listing, repo, digest) {
                    missing.push(format!("{repo}@{digest}"));
                }
            }
        }
        RunStatus {
            age_seconds: (now - run.observed_at).num_seconds(),
            repositories: run.repositories.len() as u64,
            images: run.image_count() as u64,
            failures: missing.len() as u64,
            failed: missing.into_iter().take(NAMED).collect(),
            id: run.id,
            source: run.source,
            taken_at: run.observed_at,
        }
    });
    let status = StoreStatus {
        store: store.location(),
        last_run,
        last_verify: store.latest_verify_record().await?,
        last_drill: store.latest_drill_record().await?,
    };
    Ok((status, listing))
}

fn has(listing: &Listing, repo: &RepositoryName, digest: &Digest) -> bool {
    listing
        .get(repo)
        .is_some_and(|r| r.images.contains_key(digest))
}

/// Enumerates `source` (every repository and image it lists) and names what `listing`
/// lacks.
/// Repositories outside `filter` are not listed (the backup does not select them).
pub async fn source_gap(
    source: &Source,
    listing: &Listing,
    filter: &crate::filter::ImageFilter,
) -> Result<SourceGap, SourceError> {
    let mut gap = SourceGap {
        source: source.name().to_owned(),
        images_seen: 0,
        missing: 0,
        first_missing: Vec::new(),
        archived: 0,
    };
    for repo in source.repositories().await? {
        if !filter.repository(&repo) {
            continue;
        }
        for image in source.images(&repo).await? {
            gap.images_seen += 1;
            if has(listing, &repo, &image.digest) {
                continue;
            }
            gap.missing += 1;
            if image.archived {
                gap.archived += 1;
            }
            if gap.first_missing.len() < NAMED {
                gap.first_missing.push(format!("{repo}@{}", image.digest));
            }
        }
    }
    Ok(gap)
}

/// The thresholds `status` applies.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// The last complete run may be at most this old.
    pub max_age: chrono::Duration,
    /// The last drill may be at most this old, when given.
    pub max_drill_age: Option<chrono::Duration>,
    /// The last verification may be at most this old, when given.
    pub max_verify_age: Option<chrono::Duration>,
}

/// Why the store's side is not healthy, one reason a line (empty: healthy).
pub fn store_reasons(
    status: &StoreStatus,
    gap: Option<&SourceGap>,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let hours = |d: chrono::Duration| format!("{:.1} h", d.num_seconds() as f64 / 3600.0);
    match &status.last_run {
        None => reasons.push(format!("{} holds no complete backup run", status.store)),
        Some(run) => {
            // From the exact time: whole seconds would let a run 1.9 s old pass `1s`.
            let age = now - run.taken_at;
            if age > thresholds.max_age {
                reasons.push(format!(
                    "stale: the last complete run {} was taken {} ago (more than --max-age {})",
                    run.id,
                    hours(age),
                    hours(thresholds.max_age)
                ));
            }
            if run.failures > 0 {
                reasons.push(format!(
                    "the last complete run {} lists {} image(s) the store has no record of (first: {})",
                    run.id,
                    run.failures,
                    run.failed.join(", ")
                ));
            }
        }
    }
    if let Some(gap) = gap.filter(|g| g.missing > 0) {
        reasons.push(format!(
            "{} image(s) in {} are not in the store yet{} (first: {})",
            gap.missing,
            gap.source,
            if gap.archived > 0 {
                format!(", {} of them archived in ECR", gap.archived)
            } else {
                String::new()
            },
            gap.first_missing.join(", ")
        ));
    }
    match &status.last_verify {
        Some(v) if !v.clean => reasons.push(format!(
            "the last verify ({}) found {} problem(s): {}",
            v.id,
            v.problem_count,
            v.problems.first().cloned().unwrap_or_default()
        )),
        Some(v) => {
            if let Some(max) = thresholds.max_verify_age {
                if now - v.finished_at > max {
                    reasons.push(format!(
                        "the last verify ({}) is {} old (more than --max-verify-age {})",
                        v.id,
                        hours(now - v.finished_at),
                        hours(max)
                    ));
                }
            }
        }
        None if thresholds.max_verify_age.is_some() => {
            reasons.push("no verify recorded in the store".into())
        }
        None => {}
    }
    match &status.last_drill {
        Some(d) if !d.passed => {
            let failed: Vec<String> = d
                .images
                .iter()
                .filter(|i| !i.ok)
                .map(|i| format!("{}@{}", i.repository, i.digest))
                .collect();
            let what = if failed.is_empty() {
                d.problems.first().cloned().unwrap_or_default()
            } else {
                format!("failed: {}", failed.join(", "))
            };
            reasons.push(format!("the last restore drill ({}) failed: {what}", d.id));
        }
        Some(d) => {
            if let Some(max) = thresholds.max_drill_age {
                if now - d.finished_at > max {
                    reasons.push(format!(
                        "the last restore drill ({}) is {} old (more than --max-drill-age {})",
                        d.id,
                        hours(now - d.finished_at),
                        hours(max)
                    ));
                }
            }
        }
        None if thresholds.max_drill_age.is_some() => {
            reasons.push("no restore drill recorded in the store".into())
        }
        None => {}
    }
    reasons
}

//! Retention: `forget` (which runs to keep) and `prune` (delete what nothing kept
//! reaches), the only code that deletes from a store. Why this can never delete what a
//! kept run, or a backup running at the same time, needs is argued in `docs/format.md`,
//! "Deletion and retention".
//!
//! One retention pass ([`retain`]): raise a prune fence and wait until every writer's
//! lease is released or has run out (`store/locks.rs`); remove the snapshot parts of the
//! runs the policy forgets; mark from every remaining part and every recent tag record;
//! sweep the rest, newest kind of write first; lower the fence. With `dry_run` nothing is
//! written at all (no fence either) and the report says what would go.

pub mod forget;
pub mod policy;
pub mod prune;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::locks::HeldLease;
use crate::store::{LockTimings, PruneFence, Store, StoreError};
pub use forget::RunDecision;
pub use policy::{KeepPolicy, KeepReason, PolicyError};
pub use prune::{Kind, PruneOptions, PrunePlan, Tally};

/// What went wrong in a retention pass. Nothing was deleted unless the error says so.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The keep policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A store request failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record the marking must read could not be read: it might be what keeps an
    /// object, so nothing was deleted.
    #[error(
        "cannot read {key}, so nothing was deleted (repair or remove it by hand, then prune again)"
    )]
    Unreadable {
        /// The record.
        key: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A record listed a moment ago is gone: something else deletes from this store.
    #[error("{key} was listed but is gone: something else is deleting from the store; nothing more was deleted")]
    Vanished {
        /// The record.
        key: String,
    },
    /// Writers still held leases when the wait ran out; nothing was deleted.
    #[error("{} backup writer(s) still hold a lease after waiting {waited:?} ({}); nothing was deleted, prune again later", leases.len(), leases.iter().map(|l| format!("{} by {} until {}", l.key, l.holder, l.until)).collect::<Vec<_>>().join(", "))]
    WritersRunning {
        /// The leases.
        leases: Vec<HeldLease>,
        /// How long the pass waited.
        waited: Duration,
    },
}

/// What a retention pass does.
#[derive(Debug, Clone, Default)]
pub struct RetentionOptions {
    /// Forget runs by this policy first (`None`: prune only).
    pub forget: Option<KeepPolicy>,
    /// Prune after forgetting (`forget` alone removes only snapshot parts).
    pub prune: Option<PruneOptions>,
    /// Compute and report, write and delete nothing.
    pub dry_run: bool,
    /// How long to wait for writers' leases before giving up.
    pub wait: Duration,
    /// Lease and fence timings.
    pub timings: LockTimings,
}

/// What a retention pass did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    /// Where.
    pub store: String,
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Every run and what forget decided (empty when not forgetting).
    pub runs: Vec<RunDecision>,
    /// Snapshot parts removed by forget.
    pub parts_deleted: u64,
    /// Objects and bytes deleted (or that would be) by prune, by kind.
    pub deleted: BTreeMap<Kind, Tally>,
    /// Objects and bytes kept by prune, by kind.
    pub kept: BTreeMap<Kind, Tally>,
    /// Objects prune would have deleted but were written within the grace period.
    pub in_grace: u64,
    /// Old lock objects removed.
    pub locks_deleted: u64,
    /// Seconds spent waiting for writers' leases.
    pub waited_seconds: f64,
    /// Seconds in all.
    pub elapsed_seconds: f64,
}

/// Runs one retention pass over `store`.
pub async fn retain(
    store: &Store,
    options: &RetentionOptions,
) -> Result<RetentionReport, RetentionError> {
    let started = Instant::now();
    store.ensure_exists().await?;
    let mut report = RetentionReport {
        store: store.location(),
        dry_run: options.dry_run,
        runs: Vec::new(),
        parts_deleted: 0,
        deleted: BTreeMap::new(),
        kept: BTreeMap::new(),
        in_grace: 0,
        locks_deleted: 0,
        waited_seconds: 0.0,
        elapsed_seconds: 0.0,
    };
    if options.dry_run {
        let forgotten = match &options.forget {
            Some(policy) => {
                report.runs = forget::plan(store, policy).await?;
                forget::forgotten_keys(&report.runs)
            }
            None => HashSet::new(),
        };
        report.parts_deleted = forgotten.len() as u64;
        if let Some(prune) = &options.prune {
            let plan = prune::plan(store, prune, &forgotten).await?;
            fill(&mut report, &plan, plan.deleted());
        }
        report.elapsed_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let (fence, mut held) = PruneFence::raise(store, options.timings).await?;
    let result = async {
        let wait_started = Instant::now();
        while !held.is_empty() {
            if wait_started.elapsed() >= options.wait {
                return Err(RetentionError::WritersRunning {
                    leases: held,
                    waited: wait_started.elapsed(),
                });
            }
            tracing::info!(leases = held.len(), "waiting for backup writers to finish");
            tokio::time::sleep(Duration::from_millis(500).min(options.wait)).await;
            held = fence.held_leases().await?;
        }
        report.waited_seconds = wait_started.elapsed().as_secs_f64();
        if let Some(policy) = &options.forget {
            report.runs = forget::plan(store, policy).await?;
            let keys: Vec<String> = forget::forgotten_keys(&report.runs).into_iter().collect();
            for batch in keys.chunks(1000) {
                fence.check()?;
                store.backend().delete(batch).await?;
                report.parts_deleted += batch.len() as u64;
            }
        }
        if let Some(prune) = &options.prune {
            let plan = prune::plan(store, prune, &HashSet::new()).await?;
            let deleted = prune::sweep(store, &fence, &plan).await?;
            fill(&mut report, &plan, deleted);
            // Lock objects whose lease or fence ended long ago (never a live one: every
            // lease ends within its duration, and a prune only waits for the listed ones).
            let horizon = chrono::Utc::now()
                - chrono::Duration::from_std(
                    options.timings.lease + options.timings.fence + 2 * options.timings.skew,
                )
                .unwrap_or(chrono::Duration::MAX);
            let stale = crate::store::locks::stale_locks(store, horizon, fence.key()).await?;
            for batch in stale.chunks(1000) {
                fence.check()?;
                store.backend().delete(batch).await?;
                report.locks_deleted += batch.len() as u64;
            }
        }
        Ok(())
    }
    .await;
    // The fence goes whatever happened: writers need not wait for it to run out.
    let lowered = fence.lower().await;
    result?;
    lowered?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn fill(report: &mut RetentionReport, plan: &PrunePlan, deleted: BTreeMap<Kind, Tally>) {
    report.deleted = deleted;
    report.kept = plan.kept.clone();
    report.in_grace = plan.in_grace;
}

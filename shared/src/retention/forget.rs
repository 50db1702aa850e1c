//! `forget`: which runs a keep policy drops, and removing their snapshot parts. What only
//! the forgotten runs reached is left to `prune`, which must see the whole store to know.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{KeepPolicy, KeepReason};
use super::RetentionError;
use crate::store::{Layout, Run, Store};

/// An incomplete run older than this and older than the latest complete run is a
/// fan-out that died: forget removes it (a live fan-out finishes within minutes).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What forget decided about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunDecision {
    /// The run's id.
    pub id: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// Whether every part is there.
    pub complete: bool,
    /// Whether it stays.
    pub keep: bool,
    /// Why it stays (the rules that chose it), or why it goes (`abandoned`, `policy`).
    pub reasons: Vec<String>,
    /// Its snapshot parts' keys.
    #[serde(skip)]
    pub part_keys: Vec<String>,
}

/// Decides which runs of `store` `policy` keeps; deletes nothing.
pub async fn plan(store: &Store, policy: &KeepPolicy) -> Result<Vec<RunDecision>, RetentionError> {
    if policy.is_empty() {
        return Err(super::policy::PolicyError::Empty.into());
    }
    let runs: Vec<Run> = store.runs().await?;
    let complete: Vec<(String, DateTime<Utc>)> = runs
        .iter()
        .filter(|r| r.is_complete())
        .map(|r| (r.id.clone(), r.observed_at))
        .collect();
    let latest_complete = complete.iter().map(|(_, at)| *at).max();
    let reasons = policy.apply(&complete);
    let abandoned_before =
        Utc::now() - chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or(chrono::Duration::MAX);
    let mut decisions = Vec::new();
    for run in runs {
        let part_keys = run
            .parts
            .values()
            .map(|p| Layout::snapshot(&p.id))
            .collect();
        let (keep, why) = if run.is_complete() {
            let kept: &Vec<KeepReason> = &reasons[&run.id];
            if kept.is_empty() {
                (false, vec!["policy".to_owned()])
            } else {
                (true, kept.iter().map(ToString::to_string).collect())
            }
        } else if run.observed_at < abandoned_before
            && latest_complete.is_some_and(|latest| run.observed_at < latest)
        {
            (false, vec!["abandoned".to_owned()])
        } else {
            (true, vec!["in-progress".to_owned()])
        };
        let complete = run.is_complete();
        decisions.push(RunDecision {
            id: run.id,
            taken_at: run.observed_at,
            complete,
            keep,
            reasons: why,
            part_keys,
        });
    }
    decisions.sort_by(|a, b| (a.taken_at, &a.id).cmp(&(b.taken_at, &b.id)));
    Ok(decisions)
}

/// The snapshot part keys of the runs `decisions` drops.
pub fn forgotten_keys(decisions: &[RunDecision]) -> HashSet<String> {
    decisions
        .iter()
        .filter(|d| !d.keep)
        .flat_map(|d| d.part_keys.iter().cloned())
        .collect()
}

//! The fan-out: enumerate the registry, send a copy message for every image the store
//! lacks (or whose tags moved), and write the run's snapshot.
//!
//! A registry too large for one Lambda invocation is split by continuation: when the time
//! budget (or the part's repository limit) runs out between repositories, the fan-out
//! writes what it has as a snapshot part, *then* sends a `continue-fanout` message naming
//! the last repository done, and a worker picks the run up from there. Every part but the
//! last is marked so; the last says how many parts the run has, and a run counts as a
//! complete snapshot only when all of them exist ([`crate::store::Run`]). A crash
//! between the part and the message leaves an incomplete run, which readers ignore and
//! the next scheduled run replaces; the other order could leave a run that looks complete
//! with a part missing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::backup::{BackupError, Baseline, Plan, Planner};
use crate::oci::names::RepositoryName;
pub use crate::pipeline::message::FanoutRun;
use crate::pipeline::message::{Message, Reason};
use crate::pipeline::queue::{QueueError, SqsQueue, SEND_BATCH_SIZE};
use crate::source::Source;
use crate::store::records::Snapshot;
use crate::store::tag_view::update_index;
use crate::store::{Store, StoreError};

/// The fan-out failed; what it had sent stays sent.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// Enumeration or store bookkeeping failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Sending messages failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The store failed.
    #[error("updating the store")]
    Store(#[from] StoreError),
    /// A filter pattern does not compile.
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
}

/// What a fan-out invocation did (logged, and emitted as metrics).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// The run.
    pub run_id: String,
    /// The part done.
    pub part: u32,
    /// Repositories enumerated in this part.
    pub repositories: u64,
    /// Images seen.
    pub images_seen: u64,
    /// Copy messages sent.
    pub images_enqueued: u64,
    /// Images already complete in the store.
    pub images_up_to_date: u64,
    /// Archived images skipped.
    pub images_archived: u64,
    /// Repositories the previous run saw in the same state, complete: not compared with
    /// the store again.
    pub repositories_unchanged: u64,
    /// True when `index.json` was rewritten (only when the run changed something).
    pub index_written: bool,
    /// `SendMessageBatch` calls.
    pub send_calls: u64,
    /// Set when the budget ran out: the run continues after this repository.
    pub continued_after: Option<RepositoryName>,
    /// True when this part was the run's last, so the run is complete.
    pub run_complete: bool,
    /// True when another invocation had already written this part differently (a
    /// duplicate continuation message): this one stopped without continuing the run.
    pub duplicate: bool,
    /// Repository and registry settings recorded by this part.
    pub settings: crate::backup::settings::SettingsReport,
    /// Wall time in seconds.
    pub elapsed_seconds: f64,
}

/// Runs one part of a fan-out within `budget`.
pub async fn fan_out(
    source: &Source,
    store: &Store,
    queue: &SqsQueue,
    run: &FanoutRun,
    budget: Duration,
) -> Result<FanoutReport, FanoutError> {
    let started = Instant::now();
    let filter = run.filter.compile()?;
    store.init().await?;
    let sent_before = queue
        .stats()
        .send_calls
        .load(std::sync::atomic::Ordering::Relaxed);
    let baseline = Baseline::load(store).await?;
    let planner = Planner::new(source, store, &filter, run.observed_at, &baseline);
    let repositories = planner.repositories(run.after.as_ref()).await?;

    let mut plan = Plan::new(
        Snapshot::part_of(
            &run.run_id,
            run.part,
            source.name().to_owned(),
            run.observed_at,
            true,
        ),
        &baseline,
    );
    let mut report = FanoutReport {
        run_id: run.run_id.clone(),
        part: run.part,
        repositories: 0,
        images_seen: 0,
        images_enqueued: 0,
        images_up_to_date: 0,
        images_archived: 0,
        repositories_unchanged: 0,
        index_written: false,
        send_calls: 0,
        continued_after: None,
        run_complete: false,
        duplicate: false,
        settings: Default::default(),
        elapsed_seconds: 0.0,
    };

    // Ordered, so that "the last repository done" is a clean cut for a continuation.
    // Boxed so it can be dropped after the cut: enumerations still in flight stop.
    let mut listings = Box::pin(planner.each(repositories.clone()));
    // Messages wait here until ten are ready, so batches are full across repositories.
    let mut pending: Vec<Message> = Vec::new();
    let mut last_done: Option<RepositoryName> = None;
    while let Some(planned) = listings.next().await {
        let mut planned = planned?;
        report.repositories += 1;
        report.images_seen += planned.images_seen as u64;
        for image in &planned.archived {
            tracing::warn!(repository = %image.repository, digest = %image.digest, tags = ?image.tags, "image is archived in ECR and not backed up; restore it to ACTIVE and the next run copies it");
        }
        for request in planned.work.drain(..) {
            pending.push(Message::copy(
                &request,
                Reason::Schedule,
                Some(run.run_id.clone()),
            ));
        }
        last_done = Some(planned.repository.clone());
        // The fan-out does not copy: the workers read the store themselves.
        planned.known = Default::default();
        plan.add(planned);
        let full = pending.len() - pending.len() % SEND_BATCH_SIZE;
        if full > 0 {
            queue.send(&pending[..full]).await?;
            report.images_enqueued += full as u64;
            pending.drain(..full);
        }
        let part_full = run
            .part_repositories
            .is_some_and(|n| report.repositories >= u64::from(n.max(1)));
        if started.elapsed() >= budget || part_full {
            break;
        }
    }
    drop(listings);
    queue.send(&pending).await?;
    report.images_enqueued += pending.len() as u64;
    // The settings of this part's repositories (the registry's own with the first part).
    if let Some(api) = source.ecr() {
        report.settings = crate::backup::settings::collect(
            api,
            store,
            plan.snapshot.repositories.keys().cloned(),
            run.part == 0,
            run.observed_at,
        )
        .await;
    }

    let unfinished = last_done
        .as_ref()
        .is_some_and(|l| repositories.last() != Some(l));
    if unfinished {
        plan.snapshot.last = false;
        plan.snapshot.parts = None;
    }
    // The part first, then the message that continues the run (see the module docs).
    let mut continue_after = unfinished.then(|| last_done.clone().expect("set when unfinished"));
    match store.put_snapshot(&plan.snapshot, &plan.context).await {
        Ok(_) => {}
        Err(StoreError::Conflict { key }) => {
            // Another invocation wrote this part (SQS delivers at least once, and a send
            // that failed after the part was written is retried). Its part is the one the
            // run keeps, so the run goes on from *its* cut: whether it sent the
            // continuation cannot be known, and a second one only repeats work (the next
            // part then conflicts the same way), where none would leave the run
            // incomplete for good.
            let existing = store
                .snapshot_part(&plan.snapshot.id)
                .await?
                .ok_or_else(|| FanoutError::Store(StoreError::NotFound { key: key.clone() }))?;
            tracing::warn!(run_id = %run.run_id, part = run.part, key = %key, "this part of the run was already written by another invocation; going on from its cut");
            report.duplicate = true;
            continue_after = if existing.last {
                None
            } else {
                existing
                    .repositories
                    .keys()
                    .next_back()
                    .cloned()
                    .or_else(|| run.after.clone())
            };
            if continue_after.is_none() && !existing.last {
                // A part without repositories that is not the last is never written.
                return Err(FanoutError::Store(StoreError::Conflict { key }));
            }
        }
        Err(e) => return Err(e.into()),
    }
    match continue_after {
        Some(after) => {
            queue
                .send(&[Message::continue_fanout(&run.next(after.clone()))])
                .await?;
            report.continued_after = Some(after);
        }
        None => {
            report.run_complete = true;
            if let Some(complete) = store.run(&run.run_id).await? {
                report.index_written =
                    update_index(store, &complete, baseline.run(), &Default::default())
                        .await?
                        .written;
            }
        }
    }
    report.images_up_to_date = plan.up_to_date as u64;
    report.images_archived = plan.archived.len() as u64;
    report.repositories_unchanged = plan.unchanged as u64;
    report.send_calls = queue
        .stats()
        .send_calls
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent_before;
    report.elapsed_seconds = started.elapsed().as_millis() as f64 / 1000.0;
    Ok(report)
}

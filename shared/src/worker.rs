//! The worker's logic, independent of Lambda: run one queue message's task, and run a
//! batch of them with bounded concurrency, one task (and span) per message, keeping long
//! copies invisible on the queue, and dead-lettering a message with its error on its last
//! allowed attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tracing::Instrument;

use crate::backup::error_chain;
use crate::copy::{CopyEngine, CopyError, ImageOutcome};
use crate::fanout::{fan_out, FanoutError, FanoutReport, FanoutRun};
use crate::filter::ImageFilter;
use crate::message::{self, MessageError, Reason, Task};
use crate::queue::{
    OutgoingMessage, QueueError, SqsQueue, ERROR_ATTRIBUTE, RECEIVE_COUNT_ATTRIBUTE,
};
use crate::records::{DeletionRecord, RECORD_VERSION};
use crate::source::Source;
use crate::store::StoreError;

/// How often a long task's message is hidden again, and for how long.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);
const HEARTBEAT_VISIBILITY: i32 = 300;
/// Time a continued fan-out may take inside a worker invocation.
const CONTINUATION_BUDGET: Duration = Duration::from_secs(10 * 60);

/// What one message's task did.
#[derive(Debug, Clone)]
pub enum TaskOutcome {
    /// An image was copied.
    Copied,
    /// The image was in the store already.
    AlreadyPresent,
    /// A deletion was recorded.
    DeletionRecorded,
    /// A fan-out part ran.
    FanoutContinued(FanoutReport),
    /// Nothing to do, and why.
    Ignored(String),
    /// The image no longer exists at the source; nothing to copy, and why.
    Gone(String),
}

/// A task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The message could not be understood (permanent).
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    /// Copying failed (boxed: copy errors are large, and this travels through tasks).
    #[error(transparent)]
    Copy(Box<CopyError>),
    /// Writing a record failed.
    #[error("recording a deletion: {0}")]
    Store(#[from] StoreError),
    /// A continued fan-out failed.
    #[error("continuing the fan-out: {0}")]
    Fanout(#[from] FanoutError),
    /// The task panicked (a bug); the message is retried, then dead-lettered.
    #[error("the task panicked: {0}")]
    Panicked(String),
}

impl From<CopyError> for TaskError {
    fn from(e: CopyError) -> Self {
        TaskError::Copy(Box::new(e))
    }
}

/// Everything a worker needs, built once per process.
pub struct Worker {
    engine: CopyEngine,
    source: Source,
    queue: SqsQueue,
    dead_letter: Option<(u32, SqsQueue)>,
    filter: ImageFilter,
}

/// One queue message of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// SQS message id, reported back on failure.
    pub message_id: String,
    /// Receipt handle, to extend visibility.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// Receives so far, this one included.
    pub receive_count: u32,
    /// String attributes, carried over when dead-lettering.
    pub attributes: HashMap<String, String>,
}

/// What a batch did.
#[derive(Debug, Default, Clone)]
pub struct BatchResult {
    /// Message ids to report as failed (SQS redelivers them).
    pub failed: Vec<String>,
    /// Images copied.
    pub copied: u64,
    /// Images already present.
    pub present: u64,
    /// Messages that failed (reported or dead-lettered).
    pub errors: u64,
    /// Messages dead-lettered by the worker with their error.
    pub dead_lettered: u64,
    /// Messages acknowledged with nothing to do (ignored events, images gone).
    pub skipped: u64,
}

impl Worker {
    /// A worker copying with `engine` from `source`, continuing fan-outs on `queue`.
    /// `dead_letter` is the queue's `maxReceiveCount` and dead-letter queue.
    pub fn new(
        engine: CopyEngine,
        source: Source,
        queue: SqsQueue,
        dead_letter: Option<(u32, SqsQueue)>,
    ) -> Worker {
        Worker {
            engine,
            source,
            queue,
            dead_letter,
            filter: ImageFilter::default(),
        }
    }

    /// Applies the fan-out's repository and tag selection to push events too.
    pub fn with_filter(mut self, filter: ImageFilter) -> Worker {
        self.filter = filter;
        self
    }

    /// The copy engine (for its counters).
    pub fn engine(&self) -> &CopyEngine {
        &self.engine
    }

    /// Runs the task of one message body.
    pub async fn run_task(&self, body: &str) -> Result<TaskOutcome, TaskError> {
        match message::parse(body)? {
            Task::Copy {
                mut request,
                reason,
            } => {
                if reason == Reason::Push {
                    // The push rule sees every repository; the selection applies here.
                    if !self.filter.repository(&request.repository) {
                        return Ok(TaskOutcome::Ignored(format!(
                            "{} is not selected for backup",
                            request.repository
                        )));
                    }
                    match self.filter.select_tags(&request.tags) {
                        Some(tags) => request.tags = tags,
                        None => {
                            return Ok(TaskOutcome::Ignored(format!(
                                "no selected tag on {}@{}",
                                request.repository, request.digest
                            )))
                        }
                    }
                }
                tracing::info!(repository = %request.repository, digest = %request.digest, ?reason, "copying image");
                match self.engine.copy_image(&request, None).await {
                    Ok(ImageOutcome::Copied { .. }) => Ok(TaskOutcome::Copied),
                    Ok(ImageOutcome::AlreadyPresent) => Ok(TaskOutcome::AlreadyPresent),
                    Err(e) if e.is_gone() => Ok(TaskOutcome::Gone(error_chain(&e))),
                    Err(e @ CopyError::Archived { .. }) => Ok(TaskOutcome::Gone(e.to_string())),
                    Err(e) => Err(e.into()),
                }
            }
            Task::RecordDeletion {
                repository,
                digest,
                tag,
                deleted_at,
            } => {
                self.engine
                    .store()
                    .put_deletion_record(&DeletionRecord {
                        version: RECORD_VERSION,
                        repository,
                        digest,
                        tag,
                        deleted_at,
                    })
                    .await?;
                Ok(TaskOutcome::DeletionRecorded)
            }
            Task::ContinueFanout {
                run_id,
                part,
                after,
                observed_at,
                filter,
            } => {
                let run = FanoutRun {
                    run_id,
                    part,
                    after: Some(after),
                    taken_at: observed_at,
                    filter,
                };
                let report = fan_out(
                    &self.source,
                    self.engine.store(),
                    &self.queue,
                    &run,
                    CONTINUATION_BUDGET,
                )
                .await?;
                Ok(TaskOutcome::FanoutContinued(report))
            }
            Task::Ignore { why } => Ok(TaskOutcome::Ignored(why)),
        }
    }

    /// Runs a batch: at most `concurrency` messages at once, each in its own task.
    pub async fn run_batch(
        self: &Arc<Self>,
        items: Vec<BatchItem>,
        concurrency: usize,
    ) -> BatchResult {
        let outcomes: Vec<(BatchItem, Result<TaskOutcome, TaskError>)> = futures::stream::iter(items)
            .map(|item| {
                let worker = self.clone();
                async move {
                    let span = tracing::info_span!("message", message_id = %item.message_id, receive_count = item.receive_count);
                    let result = worker.run_guarded(&item).instrument(span).await;
                    (item, result)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;

        let mut result = BatchResult::default();
        for (item, outcome) in outcomes {
            match outcome {
                Ok(TaskOutcome::Copied) => result.copied += 1,
                Ok(TaskOutcome::AlreadyPresent) => result.present += 1,
                Ok(TaskOutcome::Gone(why)) => {
                    tracing::warn!(message_id = %item.message_id, reason = %why, "image no longer at the source; message acknowledged");
                    result.skipped += 1;
                }
                Ok(TaskOutcome::Ignored(why)) => {
                    tracing::info!(message_id = %item.message_id, reason = %why, "nothing to do");
                    result.skipped += 1;
                }
                Ok(TaskOutcome::DeletionRecorded | TaskOutcome::FanoutContinued(_)) => {}
                Err(e) => {
                    result.errors += 1;
                    let error = error_chain(&e);
                    tracing::error!(message_id = %item.message_id, error = %error, "message failed");
                    match self.dead_letter_if_last(&item, &error).await {
                        Ok(true) => result.dead_lettered += 1,
                        Ok(false) => result.failed.push(item.message_id.clone()),
                        Err(dlq_error) => {
                            tracing::error!(message_id = %item.message_id, error = %dlq_error, "could not dead-letter; leaving it to SQS");
                            result.failed.push(item.message_id.clone());
                        }
                    }
                }
            }
        }
        result
    }

    /// Runs a task in its own tokio task (a panic fails only its message), keeping the
    /// message invisible while it runs.
    async fn run_guarded(self: &Arc<Self>, item: &BatchItem) -> Result<TaskOutcome, TaskError> {
        let worker = self.clone();
        let body = item.body.clone();
        let mut task = tokio::spawn(async move { worker.run_task(&body).await }.in_current_span());
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + HEARTBEAT_EVERY,
            HEARTBEAT_EVERY,
        );
        loop {
            tokio::select! {
                joined = &mut task => {
                    return joined.unwrap_or_else(|e| Err(TaskError::Panicked(e.to_string())));
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = self.queue.extend_visibility(&item.receipt_handle, HEARTBEAT_VISIBILITY).await {
                        tracing::warn!(error = %e, "could not extend the message's visibility");
                    }
                }
            }
        }
    }

    /// On the last receive SQS allows, sends the message to the dead-letter queue with its
    /// error attached (so `ecr-backup dlq ls` can say why), and reports it handled.
    async fn dead_letter_if_last(&self, item: &BatchItem, error: &str) -> Result<bool, QueueError> {
        let Some((max_receives, dlq)) = &self.dead_letter else {
            return Ok(false);
        };
        if item.receive_count < *max_receives {
            return Ok(false);
        }
        let mut attributes = item.attributes.clone();
        let mut error = error.to_owned();
        error.truncate(1000);
        attributes.insert(ERROR_ATTRIBUTE.into(), error);
        attributes.insert(
            RECEIVE_COUNT_ATTRIBUTE.into(),
            item.receive_count.to_string(),
        );
        attributes.insert("ecr-backup-failed-at".into(), Utc::now().to_rfc3339());
        dlq.send_raw(&[OutgoingMessage {
            body: item.body.clone(),
            attributes,
        }])
        .await?;
        Ok(true)
    }
}

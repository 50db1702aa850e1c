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

use crate::copy::{CopyEngine, CopyError, CopyRequest, FailureKind, ImageOutcome};
use crate::error::error_chain;
use crate::filter::ImageFilter;
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::pipeline::fanout::{fan_out, FanoutError, FanoutReport};
use crate::pipeline::message::{self, MessageError, Reason, Task};
use crate::pipeline::queue::{
    OutgoingMessage, QueueError, SqsQueue, ERROR_ATTRIBUTE, FAILED_AT_ATTRIBUTE,
    FIRST_RECEIVED_ATTRIBUTE, ORIGINAL_ID_ATTRIBUTE, RECEIVE_COUNT_ATTRIBUTE,
};
use crate::source::ecr::EcrImageState;
use crate::source::Source;
use crate::store::records::{DeletionRecord, RECORD_VERSION};
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
    /// The image no longer exists at the source (its manifest answered 404, and ECR's
    /// API, when there is one, does not list it): nothing to copy.
    Gone {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
    /// The image is archived in ECR and cannot be pulled until it is restored; it is not
    /// backed up, and is counted (`ImagesArchived`) rather than retried until it is.
    Archived {
        /// The repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
}

/// What a 404 for the image asked for means, given what ECR's API says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// Deleted since it was listed: acknowledge.
    Gone,
    /// Archived meanwhile: acknowledge, count it.
    Archived,
    /// ECR lists it as pullable, yet the registry would not serve it: a failure, retried
    /// and finally dead-lettered, never acknowledged as gone.
    Failure,
}

impl Unserved {
    /// Decides from ECR's answer (`None`: the source has no ECR API, so the registry's
    /// 404 for the image's own manifest is all there is to go by).
    pub fn from_ecr(state: Option<EcrImageState>) -> Unserved {
        match state {
            None | Some(EcrImageState::Absent) => Unserved::Gone,
            Some(EcrImageState::Archived) => Unserved::Archived,
            Some(EcrImageState::Active) => Unserved::Failure,
        }
    }
}

/// A task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The message could not be understood (permanent).
    #[error("malformed message")]
    Message(#[from] MessageError),
    /// Copying failed (boxed: copy errors are large, and this travels through tasks).
    #[error(transparent)]
    Copy(Box<CopyError>),
    /// Writing a record failed.
    #[error("recording a deletion")]
    Store(#[from] StoreError),
    /// A continued fan-out failed.
    #[error("continuing the fan-out")]
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
    /// When SQS first handed the message out (`ApproximateFirstReceiveTimestamp`).
    pub first_received_at: Option<chrono::DateTime<Utc>>,
}

/// Longest error text kept in the dead-letter attribute (SQS allows far more; a longer
/// cause chain is in the log line of the failure).
const MAX_ERROR_ATTRIBUTE: usize = 1000;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
    /// Messages acknowledged with nothing to do (ignored events).
    pub skipped: u64,
    /// Images acknowledged because they no longer exist at the source.
    pub gone: u64,
    /// Images not backed up because ECR has them archived (`repository@digest`).
    pub archived: Vec<String>,
    /// Fan-out runs whose last part this batch wrote.
    pub runs_completed: u64,
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

    /// The source (for its request counters).
    pub fn source(&self) -> &Source {
        &self.source
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
                tracing::info!(repository = %request.repository, digest = %request.digest, reason = reason.as_str(), "copying image");
                match self.engine.copy_image(&request, None).await {
                    Ok(ImageOutcome::Copied { .. }) => Ok(TaskOutcome::Copied),
                    Ok(ImageOutcome::AlreadyPresent) => Ok(TaskOutcome::AlreadyPresent),
                    Err(e) => self.settle_failure(&request, e).await,
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
            Task::ContinueFanout(run) => {
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

    /// Turns a copy failure into the message's outcome: only the image itself being
    /// gone or archived is acknowledged, and only on the structured kind of the failure
    /// (confirmed by ECR's API when the source has one); every other failure fails the
    /// message, so it is retried and finally dead-lettered with its error.
    async fn settle_failure(
        &self,
        request: &CopyRequest,
        error: CopyError,
    ) -> Result<TaskOutcome, TaskError> {
        let unserved = match error.kind() {
            FailureKind::Archived => Unserved::Archived,
            FailureKind::Gone => {
                let state = match self.source.ecr() {
                    None => None,
                    Some(api) => {
                        match api.image_state(&request.repository, &request.digest).await {
                            Ok(state) => Some(state),
                            Err(e) => {
                                tracing::warn!(repository = %request.repository, digest = %request.digest, error = %crate::error::error_chain(&e), "could not ask ECR whether the image still exists; failing the message");
                                return Err(error.into());
                            }
                        }
                    }
                };
                Unserved::from_ecr(state)
            }
            _ => return Err(error.into()),
        };
        let (repository, digest) = (request.repository.clone(), request.digest.clone());
        match unserved {
            Unserved::Gone => Ok(TaskOutcome::Gone { repository, digest }),
            Unserved::Archived => Ok(TaskOutcome::Archived { repository, digest }),
            Unserved::Failure => {
                tracing::error!(repository = %repository, digest = %digest, "ECR lists the image as pullable but its registry answered 404");
                Err(error.into())
            }
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
                Ok(TaskOutcome::Gone { repository, digest }) => {
                    tracing::warn!(message_id = %item.message_id, repository = %repository, digest = %digest, "image no longer at the source; message acknowledged");
                    result.gone += 1;
                }
                Ok(TaskOutcome::Archived { repository, digest }) => {
                    tracing::warn!(message_id = %item.message_id, repository = %repository, digest = %digest, "image is archived in ECR and was not backed up; restore it to ACTIVE and it is copied by the next run");
                    result.archived.push(format!("{repository}@{digest}"));
                }
                Ok(TaskOutcome::Ignored(why)) => {
                    tracing::info!(message_id = %item.message_id, reason = %why, "nothing to do");
                    result.skipped += 1;
                }
                Ok(TaskOutcome::FanoutContinued(report)) => {
                    result.runs_completed += u64::from(report.run_complete);
                }
                Ok(TaskOutcome::DeletionRecorded) => {}
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
                        tracing::warn!(error = %crate::error::error_chain(&e), "could not extend the message's visibility");
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
        attributes.insert(
            ERROR_ATTRIBUTE.into(),
            truncate_at_char(error, MAX_ERROR_ATTRIBUTE).to_owned(),
        );
        attributes.insert(
            RECEIVE_COUNT_ATTRIBUTE.into(),
            item.receive_count.to_string(),
        );
        attributes.insert(FAILED_AT_ATTRIBUTE.into(), Utc::now().to_rfc3339());
        // The DLQ copy gets a new message id: keep the first one, and when the message
        // was first received, across any number of redrives (the first values stay).
        attributes
            .entry(ORIGINAL_ID_ATTRIBUTE.into())
            .or_insert_with(|| item.message_id.clone());
        if let Some(first) = item.first_received_at {
            attributes
                .entry(FIRST_RECEIVED_ATTRIBUTE.into())
                .or_insert_with(|| first.to_rfc3339());
        }
        dlq.send_raw(&[OutgoingMessage {
            body: item.body.clone(),
            attributes,
        }])
        .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_cut_on_a_character_boundary() {
        // 999 ASCII bytes, then a 3-byte character across the 1000-byte limit.
        let text = format!("{}€ and more", "x".repeat(999));
        let cut = truncate_at_char(&text, MAX_ERROR_ATTRIBUTE);
        assert_eq!(cut.len(), 999);
        assert!(text.starts_with(cut));
        let multi = "é".repeat(800);
        assert_eq!(truncate_at_char(&multi, 1000).len(), 1000);
        assert_eq!(truncate_at_char(&multi, 1001).len(), 1000);
        assert_eq!(truncate_at_char("short", 1000), "short");
    }

    #[test]
    fn only_an_image_ecr_does_not_list_as_pullable_is_acknowledged() {
        assert_eq!(Unserved::from_ecr(None), Unserved::Gone, "no ECR API");
        assert_eq!(
            Unserved::from_ecr(Some(EcrImageState::Absent)),
            Unserved::Gone
        );
        assert_eq!(
            Unserved::from_ecr(Some(EcrImageState::Archived)),
            Unserved::Archived
        );
        assert_eq!(
            Unserved::from_ecr(Some(EcrImageState::Active)),
            Unserved::Failure,
            "a pullable image the registry does not serve is a failure"
        );
    }
}

//! Moving messages from the dead-letter queue back to the copy queue, and looking at
//! what is in it.
//!
//! `StartMessageMoveTask` is used where the service offers it. Elsewhere (older
//! endpoints, local test servers) messages are moved by receive → send → delete: a
//! message is deleted from the dead-letter queue only after the target accepted it, so
//! none is lost; a crash between the two can at worst send one twice, which copies
//! tolerate.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::pipeline::message::{self, Message, Reason, Task};
use crate::pipeline::queue::{
    OutgoingMessage, QueueError, ReceivedMessage, SqsQueue, ERROR_ATTRIBUTE, FAILED_AT_ATTRIBUTE,
    FIRST_RECEIVED_ATTRIBUTE, ORIGINAL_ID_ATTRIBUTE, RECEIVE_COUNT_ATTRIBUTE,
};

/// How long a received message stays hidden while it is being moved.
const MOVE_VISIBILITY: i32 = 120;

/// How the messages were moved, and how many.
#[derive(Debug, Clone, Serialize)]
pub struct RedriveReport {
    /// `StartMessageMoveTask` or `receive-send-delete`.
    pub method: &'static str,
    /// Messages moved (for a move task: as reported by the service when it finished).
    pub moved: u64,
    /// The move task's handle, when one was started.
    pub task_handle: Option<String>,
}

/// Moves every message of `dlq` to `target`. `on_moved` is told the running count.
pub async fn redrive(
    dlq: &SqsQueue,
    target: &SqsQueue,
    on_moved: &(dyn Fn(u64) + Sync),
) -> Result<RedriveReport, QueueError> {
    match start_move_task(dlq, target).await {
        Ok(handle) => {
            let moved = wait_for_move_task(dlq, &handle, on_moved).await?;
            return Ok(RedriveReport {
                method: "StartMessageMoveTask",
                moved,
                task_handle: Some(handle),
            });
        }
        Err(e) => {
            tracing::info!(error = %crate::error::error_chain(&e), "StartMessageMoveTask unavailable; moving messages one batch at a time")
        }
    }
    let mut moved = 0;
    let mut empty_receives = 0;
    // Two empty receives in a row: SQS sampling can miss messages on one short poll.
    while empty_receives < 2 {
        let batch = dlq.receive(MOVE_VISIBILITY, 1).await?;
        if batch.is_empty() {
            empty_receives += 1;
            continue;
        }
        empty_receives = 0;
        let outgoing: Vec<OutgoingMessage> = batch.iter().map(for_redrive).collect();
        target.send_raw(&outgoing).await?;
        let refs: Vec<&ReceivedMessage> = batch.iter().collect();
        let deleted = dlq.delete(&refs).await?;
        if deleted < batch.len() {
            tracing::warn!(
                sent = batch.len(),
                deleted,
                "some moved messages could not be deleted from the dead-letter queue; they will be sent again"
            );
        }
        moved += batch.len() as u64;
        on_moved(moved);
    }
    Ok(RedriveReport {
        method: "receive-send-delete",
        moved,
        task_handle: None,
    })
}

/// The message as it goes back: our own copy messages are marked as redriven, and the
/// last failure's attributes are dropped (the next failure writes new ones); its first
/// message id and first receive time stay, so a message can be followed across
/// redrives (as `StartMessageMoveTask` keeps every attribute).
fn for_redrive(m: &ReceivedMessage) -> OutgoingMessage {
    let body = match serde_json::from_str::<Message>(&m.body) {
        Ok(Message::CopyImage {
            version,
            repository,
            digest,
            tags,
            run_id,
            observed_at,
            ..
        }) => Message::CopyImage {
            version,
            repository,
            digest,
            tags,
            reason: Reason::Redrive,
            run_id,
            observed_at,
        }
        .to_body(),
        _ => m.body.clone(),
    };
    let attributes: HashMap<String, String> = m
        .attributes
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("ecr-backup-")
                || k.as_str() == ORIGINAL_ID_ATTRIBUTE
                || k.as_str() == FIRST_RECEIVED_ATTRIBUTE
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    OutgoingMessage { body, attributes }
}

async fn start_move_task(dlq: &SqsQueue, target: &SqsQueue) -> Result<String, QueueError> {
    let source_arn = dlq.arn().await?;
    let target_arn = target.arn().await?;
    let out = dlq
        .client()
        .start_message_move_task()
        .source_arn(&source_arn)
        .destination_arn(&target_arn)
        .send()
        .await
        .map_err(|e| QueueError::Call {
            op: "StartMessageMoveTask",
            queue: dlq.url().to_owned(),
            code: aws_sdk_sqs::error::ProvideErrorMetadata::code(&e).map(str::to_owned),
            message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        })?;
    Ok(out.task_handle().unwrap_or_default().to_owned())
}

async fn wait_for_move_task(
    dlq: &SqsQueue,
    handle: &str,
    on_moved: &(dyn Fn(u64) + Sync),
) -> Result<u64, QueueError> {
    let source_arn = dlq.arn().await?;
    loop {
        let out = dlq
            .client()
            .list_message_move_tasks()
            .source_arn(&source_arn)
            .send()
            .await
            .map_err(|e| QueueError::Call {
                op: "ListMessageMoveTasks",
                queue: dlq.url().to_owned(),
                code: None,
                message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
            })?;
        let task = out
            .results()
            .iter()
            .find(|t| t.task_handle() == Some(handle))
            .or(out.results().first());
        let Some(task) = task else { return Ok(0) };
        let moved = task.approximate_number_of_messages_moved().max(0) as u64;
        on_moved(moved);
        match task.status() {
            Some("COMPLETED") => return Ok(moved),
            Some("FAILED") | Some("CANCELLED") => {
                return Err(QueueError::Call {
                    op: "ListMessageMoveTasks",
                    queue: dlq.url().to_owned(),
                    code: task.status().map(str::to_owned),
                    message: task
                        .failure_reason()
                        .unwrap_or("the move task stopped")
                        .to_owned(),
                })
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// One dead-lettered message, as `dlq ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// SQS message id.
    pub message_id: String,
    /// What it asked for, in short (`copy team/app@sha256:…`).
    pub summary: String,
    /// The error the worker recorded with it, if it did (SQS moves after a crash or a
    /// timeout carry none).
    pub error: Option<String>,
    /// Receives before it was dead-lettered, as recorded by the worker.
    pub receive_count: Option<u32>,
    /// When the worker dead-lettered it.
    pub failed_at: Option<String>,
    /// The id the message had when it first failed (this copy's id is new), kept across
    /// redrives.
    pub original_message_id: Option<String>,
    /// When SQS first handed the message to a worker, kept across redrives.
    pub first_received_at: Option<String>,
}

/// Looks at up to `max` messages of the dead-letter queue without removing them.
pub async fn peek(dlq: &SqsQueue, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
    let mut seen: HashMap<String, ReceivedMessage> = HashMap::new();
    let mut empty_receives = 0;
    while seen.len() < max && empty_receives < 2 {
        // Hidden briefly so one peek does not see a message twice, then shown again.
        let batch = dlq.receive(30, 1).await?;
        if batch.is_empty() {
            empty_receives += 1;
        }
        for m in batch {
            seen.entry(m.message_id.clone()).or_insert(m);
        }
    }
    let mut letters = Vec::new();
    for m in seen.into_values() {
        let _ = dlq.extend_visibility(&m.receipt_handle, 0).await;
        letters.push(DeadLetter {
            summary: summarize(&m.body),
            error: m.attributes.get(ERROR_ATTRIBUTE).cloned(),
            receive_count: m
                .attributes
                .get(RECEIVE_COUNT_ATTRIBUTE)
                .and_then(|v| v.parse().ok()),
            failed_at: m.attributes.get(FAILED_AT_ATTRIBUTE).cloned(),
            original_message_id: m.attributes.get(ORIGINAL_ID_ATTRIBUTE).cloned(),
            first_received_at: m.attributes.get(FIRST_RECEIVED_ATTRIBUTE).cloned(),
            message_id: m.message_id,
        });
    }
    letters.sort_by(|a, b| {
        a.failed_at
            .cmp(&b.failed_at)
            .then(a.message_id.cmp(&b.message_id))
    });
    letters.truncate(max);
    Ok(letters)
}

fn summarize(body: &str) -> String {
    match message::parse(body) {
        Ok(Task::Copy { request, reason }) => {
            format!(
                "copy {}@{} ({reason:?})",
                request.repository, request.digest
            )
        }
        Ok(Task::RecordDeletion {
            repository, digest, ..
        }) => format!("record deletion of {repository}@{digest}"),
        Ok(Task::ContinueFanout(run)) => match &run.after {
            Some(after) => format!("continue fan-out {} after {after}", run.run_id),
            None => format!("continue fan-out {}", run.run_id),
        },
        Ok(Task::Ignore { why }) => format!("ignored event: {why}"),
        Err(e) => {
            let mut start: String = body.chars().take(80).collect();
            if body.len() > start.len() {
                start.push('…');
            }
            format!("unreadable ({}): {start:?}", crate::error::error_chain(&e))
        }
    }
}

//! What `ecr-backup status` reads of the queues: depths from `GetQueueAttributes`, and
//! the oldest messages of the dead-letter queue from one peek.
//!
//! SQS has no attribute for the age of the oldest message; that is the CloudWatch metric
//! `AWS/SQS ApproximateAgeOfOldestMessage`, which the CLI reads separately. A peek is a
//! `ReceiveMessage` (hidden for a few seconds, then made visible again): it raises each
//! message's receive count, so it is done only on the dead-letter queue, where no
//! redrive policy counts receives.

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::pipeline::queue::{QueueError, SqsQueue, ERROR_ATTRIBUTE, FAILED_AT_ATTRIBUTE};

/// How long peeked messages stay hidden at most (they are released at once after).
const PEEK_VISIBILITY: i32 = 10;

/// The counts SQS keeps for a queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    /// The queue URL.
    pub url: String,
    /// Messages waiting (`ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Messages being processed (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Messages delayed (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
}

/// The oldest message one peek of the dead-letter queue saw.
#[derive(Debug, Clone, Serialize)]
pub struct OldestLetter {
    /// SQS message id.
    pub message_id: String,
    /// When it was sent to the dead-letter queue (`SentTimestamp`).
    pub sent_at: Option<DateTime<Utc>>,
    /// When the worker dead-lettered it, as recorded with it.
    pub failed_at: Option<String>,
    /// The error recorded with it.
    pub error: Option<String>,
    /// Messages the peek saw (SQS returns at most 10, in no particular order).
    pub peeked: usize,
}

fn count(
    attributes: Option<&std::collections::HashMap<QueueAttributeName, String>>,
    name: QueueAttributeName,
) -> u64 {
    attributes
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The queue's three counts.
pub async fn depth(queue: &SqsQueue) -> Result<QueueDepth, QueueError> {
    let out = queue
        .client()
        .get_queue_attributes()
        .queue_url(queue.url())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| QueueError::Call {
            op: "GetQueueAttributes",
            queue: queue.url().to_owned(),
            code: aws_sdk_sqs::error::ProvideErrorMetadata::code(&e).map(str::to_owned),
            message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        })?;
    let a = out.attributes();
    Ok(QueueDepth {
        url: queue.url().to_owned(),
        visible: count(a, QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: count(a, QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: count(a, QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

/// Peeks at the dead-letter queue once and returns its oldest message by `SentTimestamp`
/// (`None` when the peek saw none).
pub async fn oldest_dead_letter(dlq: &SqsQueue) -> Result<Option<OldestLetter>, QueueError> {
    let out = dlq
        .client()
        .receive_message()
        .queue_url(dlq.url())
        .max_number_of_messages(10)
        .visibility_timeout(PEEK_VISIBILITY)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(|e| QueueError::Call {
            op: "ReceiveMessage",
            queue: dlq.url().to_owned(),
            code: aws_sdk_sqs::error::ProvideErrorMetadata::code(&e).map(str::to_owned),
            message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        })?;
    let messages = out.messages();
    for m in messages {
        if let Some(handle) = m.receipt_handle() {
            // Visible again at once: a peek must not delay a redrive.
            let _ = dlq.extend_visibility(handle, 0).await;
        }
    }
    let oldest = messages
        .iter()
        .map(|m| {
            let sent_at = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis);
            let attribute = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned)
            };
            OldestLetter {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                sent_at,
                failed_at: attribute(FAILED_AT_ATTRIBUTE),
                error: attribute(ERROR_ATTRIBUTE),
                peeked: messages.len(),
            }
        })
        .min_by_key(|l| l.sent_at);
    Ok(oldest)
}

//! The copy queue on SQS: batched sends, visibility extension for long copies, and the
//! dead-letter queue (listing and redrive).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use serde::Serialize;

use crate::pipeline::message::Message;

/// Entries per `SendMessageBatch` call (the SQS maximum).
pub const SEND_BATCH_SIZE: usize = 10;
/// Total bytes per `SendMessageBatch` call (the SQS maximum is 1 MiB).
const SEND_BATCH_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// Attempts at sending the entries SQS refused in a batch.
const SEND_ATTEMPTS: usize = 4;
/// Message attribute naming why a message was dead-lettered.
pub const ERROR_ATTRIBUTE: &str = "ecr-backup-error";
/// Message attribute with the receive count at the time of the failure.
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "ecr-backup-receive-count";
/// Message attribute with the time of the last failure, when it was dead-lettered.
pub const FAILED_AT_ATTRIBUTE: &str = "ecr-backup-failed-at";
/// Message attribute with the id the message had when it first failed (a copy into the
/// dead-letter queue, and a redrive, give it a new one).
pub const ORIGINAL_ID_ATTRIBUTE: &str = "ecr-backup-original-message-id";
/// Message attribute with when SQS first handed the message out, kept across redrives.
pub const FIRST_RECEIVED_ATTRIBUTE: &str = "ecr-backup-first-received-at";

/// An SQS call failed; names the call and the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The call failed after the SDK's retries.
    #[error("SQS {op} on {queue}: {message}")]
    Call {
        /// The operation.
        op: &'static str,
        /// The queue URL.
        queue: String,
        /// The service's error.
        message: String,
        /// The error code.
        code: Option<String>,
    },
    /// Some entries of a batch were refused every time.
    #[error("SQS refused {count} of the messages sent to {queue}: {reason}")]
    Refused {
        /// The queue URL.
        queue: String,
        /// How many.
        count: usize,
        /// The first refusal's reason.
        reason: String,
    },
}

fn call_error<E>(op: &'static str, queue: &str, err: aws_sdk_sqs::error::SdkError<E>) -> QueueError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    QueueError::Call {
        op,
        queue: queue.into(),
        code: err
            .as_service_error()
            .and_then(|e| e.code())
            .map(str::to_owned),
        message: DisplayErrorContext(&err).to_string(),
    }
}

/// Counters of SQS calls, for reports and metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// `SendMessageBatch` calls.
    pub send_calls: AtomicU64,
    /// Messages accepted.
    pub messages_sent: AtomicU64,
}

/// One SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    stats: std::sync::Arc<QueueStats>,
}

/// A body with message attributes, as read from or sent to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body.
    pub body: String,
    /// String attributes.
    pub attributes: HashMap<String, String>,
}

impl SqsQueue {
    /// A queue client for `url`.
    pub fn new(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
            stats: Default::default(),
        }
    }

    /// An SQS client from the standard AWS settings (`AWS_ENDPOINT_URL_SQS` and friends).
    pub async fn client_from_env() -> Client {
        Client::new(&crate::aws::sdk_config().await)
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Call counters.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Sends messages in batches of up to ten (and 1 MiB), retrying refused entries.
    pub async fn send(&self, messages: &[Message]) -> Result<(), QueueError> {
        let outgoing: Vec<OutgoingMessage> = messages
            .iter()
            .map(|m| OutgoingMessage {
                body: m.to_body(),
                attributes: HashMap::new(),
            })
            .collect();
        self.send_raw(&outgoing).await
    }

    /// Sends bodies with attributes, batched; every message is accepted or an error returned.
    pub async fn send_raw(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < messages.len() && end - start < SEND_BATCH_SIZE {
                let size = messages[end].body.len()
                    + messages[end]
                        .attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>();
                if end > start && bytes + size > SEND_BATCH_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            self.send_one_batch(&messages[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn send_one_batch(&self, batch: &[OutgoingMessage]) -> Result<(), QueueError> {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut last_reason = String::new();
        for attempt in 0..SEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .map(|&i| {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&batch[i].body);
                    for (k, v) in &batch[i].attributes {
                        entry = entry.message_attributes(
                            k,
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(v)
                                .build()
                                .expect("data type is set"),
                        );
                    }
                    entry.build().expect("id and body are set")
                })
                .collect();
            self.stats.send_calls.fetch_add(1, Ordering::Relaxed);
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| call_error("SendMessageBatch", &self.url, e))?;
            self.stats
                .messages_sent
                .fetch_add(out.successful().len() as u64, Ordering::Relaxed);
            let failed: Vec<usize> = out
                .failed()
                .iter()
                .filter_map(|f| {
                    last_reason = format!("{}: {}", f.code(), f.message().unwrap_or_default());
                    f.id().parse().ok()
                })
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(queue = %self.url, refused = failed.len(), reason = %last_reason, "retrying refused batch entries");
            pending = failed;
        }
        Err(QueueError::Refused {
            queue: self.url.clone(),
            count: pending.len(),
            reason: last_reason,
        })
    }

    /// Keeps a message invisible for `seconds` more (a long copy in progress).
    pub async fn extend_visibility(
        &self,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| call_error("ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }

    /// The queue's `maxReceiveCount` and dead-letter queue ARN, if it has a redrive policy.
    pub async fn redrive_policy(&self) -> Result<Option<(u32, String)>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| call_error("GetQueueAttributes", &self.url, e))?;
        let Some(policy) = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        let value: serde_json::Value = serde_json::from_str(policy).unwrap_or_default();
        let max = value.get("maxReceiveCount").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        let arn = value.get("deadLetterTargetArn").and_then(|v| v.as_str());
        Ok(max.zip(arn).map(|(m, a)| (m as u32, a.to_owned())))
    }

    /// The queue's ARN.
    pub async fn arn(&self) -> Result<String, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| call_error("GetQueueAttributes", &self.url, e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| QueueError::Call {
                op: "GetQueueAttributes",
                queue: self.url.clone(),
                message: "no QueueArn returned".into(),
                code: None,
            })
    }

    /// Approximate number of visible messages.
    pub async fn approximate_depth(&self) -> Result<u64, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| call_error("GetQueueAttributes", &self.url, e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Receives up to ten messages, hidden for `visibility` seconds.
    pub async fn receive(
        &self,
        visibility: i32,
        wait_seconds: i32,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .wait_time_seconds(wait_seconds)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| call_error("ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| ReceivedMessage {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                attributes: m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// Deletes received messages by receipt handle; returns how many SQS confirmed.
    pub async fn delete(&self, messages: &[&ReceivedMessage]) -> Result<usize, QueueError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| call_error("DeleteMessageBatch", &self.url, e))?;
        Ok(out.successful().len())
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A message received from a queue.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedMessage {
    /// SQS message id (kept when SQS moves it to a dead-letter queue).
    pub message_id: String,
    /// Handle to delete it or change its visibility.
    #[serde(skip)]
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
    /// How many times it was received.
    pub receive_count: u32,
}

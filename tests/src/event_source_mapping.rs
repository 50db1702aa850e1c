//! An SQS event-source mapping, as Lambda runs one for a function subscribed to a queue
//! with `FunctionResponseTypes: [ReportBatchItemFailures]`: it polls the queue, hands each
//! batch to the function as an SQS event, and deletes what the function processed.
//!
//! # What is faithful
//!
//! - `ReceiveMessage` of up to [`EventSourceMapping::batch_size`] messages (default 10)
//!   with every system and message attribute, hidden for the queue's own visibility
//!   timeout.
//! - The event is built as Lambda builds it: `Records[]` of `messageId`,
//!   `receiptHandle`, `body`, `attributes` (`ApproximateReceiveCount`, `SentTimestamp`,
//!   `SenderId`, `ApproximateFirstReceiveTimestamp`, and the FIFO and trace attributes
//!   when present), `messageAttributes` (`stringValue` or `binaryValue`,
//!   `stringListValues: []`, `binaryListValues: []`, `dataType`), `md5OfBody`,
//!   `md5OfMessageAttributes` when there are attributes, `eventSource: "aws:sqs"`,
//!   `eventSourceARN` and `awsRegion`.
//! - The response is honoured with `ReportBatchItemFailures` semantics: a `null` or empty
//!   response, or an empty `batchItemFailures`, deletes the whole batch; otherwise every
//!   message not listed is deleted and the listed ones stay in flight until their
//!   visibility timeout runs out. A malformed response (not an object, a failure without
//!   an `itemIdentifier`, or naming a message not in the batch) fails the whole batch, as
//!   Lambda does. A function error, a crash or a timeout deletes nothing.
//! - Dead-lettering is the queue's own: moto, like SQS, moves a message to the
//!   `RedrivePolicy`'s dead-letter queue when it is received after `maxReceiveCount`
//!   receives, so the mapping does nothing for it (a test in `lambda_e2e` checks that the
//!   server behaves so).
//!
//! # What is simplified
//!
//! One poller and one invocation at a time (`MaximumConcurrency` 1); no batching window;
//! no scaling; a function timeout longer than the visibility timeout is accepted (Lambda
//! refuses such a mapping) so that tests can keep redelivery fast while a debug build
//! copies; since batches are invoked one at a time, a batch that outlives its visibility
//! is not delivered twice at once. Long polls wait 1 s rather than 20 s, so
//! [`EventSourceMapping::drain`] notices an empty queue quickly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::lambda_runtime_api::{InvocationResult, LambdaFunction};

/// System attributes Lambda puts in a record's `attributes`.
const RECORD_ATTRIBUTES: &[MessageSystemAttributeName] = &[
    MessageSystemAttributeName::ApproximateReceiveCount,
    MessageSystemAttributeName::SentTimestamp,
    MessageSystemAttributeName::SenderId,
    MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
    MessageSystemAttributeName::AwsTraceHeader,
    MessageSystemAttributeName::SequenceNumber,
    MessageSystemAttributeName::MessageGroupId,
    MessageSystemAttributeName::MessageDeduplicationId,
];

/// What one batch went through.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    /// The messages delivered, by id, with their receive count.
    pub messages: BTreeMap<String, u32>,
    /// How the invocation ended.
    pub result: InvocationResult,
    /// Messages deleted afterwards.
    pub deleted: Vec<String>,
    /// Messages left to come back after the visibility timeout.
    pub retried: Vec<String>,
}

/// Counters of a mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// `ReceiveMessage` calls.
    pub polls: u32,
    /// Batches handed to the function (one invocation each).
    pub batches: u32,
    /// Messages delivered, redeliveries included.
    pub messages: u32,
    /// Deliveries of a message received before (`ApproximateReceiveCount` > 1).
    pub redeliveries: u32,
    /// Messages deleted after a successful invocation.
    pub deleted: u32,
    /// Messages the function listed in `batchItemFailures`.
    pub reported_failures: u32,
    /// Invocations that ended in a function error.
    pub function_errors: u32,
    /// Invocations during which the process died.
    pub crashes: u32,
    /// Invocations that timed out.
    pub timeouts: u32,
    /// Responses that were not a valid partial batch response.
    pub invalid_responses: u32,
}

/// What [`EventSourceMapping::drain`] did.
#[derive(Debug, Clone)]
pub struct DrainReport {
    /// Counters over the drain only.
    pub stats: MappingStats,
    /// Every batch, in order.
    pub batches: Vec<BatchOutcome>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A mapping from an SQS queue to a function.
pub struct EventSourceMapping {
    sqs: Client,
    queue_url: String,
    queue_arn: String,
    region: String,
    visibility_timeout: i32,
    batch_size: i32,
    function: Arc<LambdaFunction>,
    stats: Mutex<MappingStats>,
}

impl EventSourceMapping {
    /// A mapping of the queue at `queue_url` to `function`, reading the queue's ARN and
    /// visibility timeout.
    pub async fn new(
        sqs: Client,
        queue_url: impl Into<String>,
        function: Arc<LambdaFunction>,
    ) -> Result<EventSourceMapping> {
        let queue_url = queue_url.into();
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .with_context(|| format!("reading the attributes of {queue_url}"))?;
        let attributes = attributes.attributes().cloned().unwrap_or_default();
        let queue_arn = attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .context("the queue has no QueueArn")?;
        let visibility_timeout = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let region = queue_arn
            .split(':')
            .nth(3)
            .unwrap_or("us-east-1")
            .to_owned();
        Ok(EventSourceMapping {
            sqs,
            queue_url,
            queue_arn,
            region,
            visibility_timeout,
            batch_size: 10,
            function,
            stats: Mutex::default(),
        })
    }

    /// Sets the batch size (1 to 10, the most one `ReceiveMessage` returns).
    pub fn batch_size(mut self, size: i32) -> EventSourceMapping {
        assert!((1..=10).contains(&size), "batch size {size} is not 1 to 10");
        self.batch_size = size;
        self
    }

    /// The queue's visibility timeout.
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout.max(0) as u64)
    }

    /// Counters so far.
    pub fn stats(&self) -> MappingStats {
        self.stats.lock().unwrap().clone()
    }

    fn stat(&self, f: impl FnOnce(&mut MappingStats)) {
        f(&mut self.stats.lock().unwrap());
    }

    /// Polls once; if messages came, invokes the function with them and honours its
    /// answer. `None` when the queue had nothing visible.
    pub async fn poll_once(&self) -> Result<Option<BatchOutcome>> {
        self.stat(|s| s.polls += 1);
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size)
            .visibility_timeout(self.visibility_timeout)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .with_context(|| format!("ReceiveMessage on {}", self.queue_url))?;
        let messages = received.messages();
        if messages.is_empty() {
            return Ok(None);
        }
        let mut delivered = BTreeMap::new();
        let mut handles = HashMap::new();
        let mut records = Vec::new();
        for m in messages {
            let id = m.message_id().unwrap_or_default().to_owned();
            let count: u32 = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            delivered.insert(id.clone(), count);
            handles.insert(id, m.receipt_handle().unwrap_or_default().to_owned());
            records.push(self.record(m));
        }
        let redeliveries = delivered.values().filter(|&&c| c > 1).count() as u32;
        self.stat(|s| {
            s.batches += 1;
            s.messages += delivered.len() as u32;
            s.redeliveries += redeliveries;
        });

        let event = json!({ "Records": records });
        let timeout = self.function.config().timeout;
        let result = self.function.invoke(&event, timeout).await;
        let retried: Vec<String> = match &result {
            InvocationResult::Response(response) => match failed_items(response, &delivered) {
                Some(failed) => {
                    self.stat(|s| s.reported_failures += failed.len() as u32);
                    failed
                }
                None => {
                    self.stat(|s| s.invalid_responses += 1);
                    delivered.keys().cloned().collect()
                }
            },
            InvocationResult::Error(_) => {
                self.stat(|s| s.function_errors += 1);
                delivered.keys().cloned().collect()
            }
            InvocationResult::Crashed(_) => {
                self.stat(|s| s.crashes += 1);
                delivered.keys().cloned().collect()
            }
            InvocationResult::TimedOut => {
                self.stat(|s| s.timeouts += 1);
                delivered.keys().cloned().collect()
            }
        };
        let done: Vec<String> = delivered
            .keys()
            .filter(|id| !retried.contains(id))
            .cloned()
            .collect();
        self.delete(&done, &handles).await?;
        self.stat(|s| s.deleted += done.len() as u32);
        Ok(Some(BatchOutcome {
            messages: delivered,
            result,
            deleted: done,
            retried,
        }))
    }

    /// Runs the mapping until the queue has nothing visible, in flight or delayed, or
    /// fails after `timeout` with what it did so far.
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport> {
        let started = Instant::now();
        let before = self.stats();
        let mut batches = Vec::new();
        loop {
            if let Some(batch) = self.poll_once().await? {
                batches.push(batch);
            } else if self.in_queue().await? == 0 {
                return Ok(DrainReport {
                    stats: difference(&self.stats(), &before),
                    batches,
                    elapsed: started.elapsed(),
                });
            }
            if started.elapsed() > timeout {
                bail!(
                    "the queue {} was not drained in {timeout:?}: {} messages still in it; {:?}; last batches: {:#?}",
                    self.queue_url,
                    self.in_queue().await.unwrap_or(u64::MAX),
                    difference(&self.stats(), &before),
                    &batches[batches.len().saturating_sub(3)..]
                );
            }
        }
    }

    /// Messages visible, in flight or delayed.
    pub async fn in_queue(&self) -> Result<u64> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .with_context(|| format!("GetQueueAttributes on {}", self.queue_url))?;
        Ok(out
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0))
    }

    async fn delete(&self, ids: &[String], handles: &HashMap<String, String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let entries = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&handles[id])
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        let out = self
            .sqs
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .with_context(|| format!("DeleteMessageBatch on {}", self.queue_url))?;
        if !out.failed().is_empty() {
            bail!(
                "DeleteMessageBatch on {} refused {:?}",
                self.queue_url,
                out.failed()
            );
        }
        Ok(())
    }

    /// One record of the SQS event.
    fn record(&self, m: &aws_sdk_sqs::types::Message) -> Value {
        let mut attributes = Map::new();
        if let Some(system) = m.attributes() {
            for name in RECORD_ATTRIBUTES {
                if let Some(value) = system.get(name) {
                    attributes.insert(name.as_str().to_owned(), Value::String(value.clone()));
                }
            }
        }
        let mut message_attributes = Map::new();
        if let Some(user) = m.message_attributes() {
            for (name, value) in user {
                let mut v = Map::new();
                if let Some(s) = value.string_value() {
                    v.insert("stringValue".into(), Value::String(s.to_owned()));
                }
                if let Some(b) = value.binary_value() {
                    v.insert(
                        "binaryValue".into(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_ref())),
                    );
                }
                v.insert("stringListValues".into(), json!([]));
                v.insert("binaryListValues".into(), json!([]));
                v.insert(
                    "dataType".into(),
                    Value::String(value.data_type().to_owned()),
                );
                message_attributes.insert(name.clone(), Value::Object(v));
            }
        }
        let mut record = json!({
            "messageId": m.message_id().unwrap_or_default(),
            "receiptHandle": m.receipt_handle().unwrap_or_default(),
            "body": m.body().unwrap_or_default(),
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "md5OfBody": m.md5_of_body().unwrap_or_default(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        });
        if let Some(md5) = m.md5_of_message_attributes() {
            record["md5OfMessageAttributes"] = Value::String(md5.to_owned());
        }
        record
    }
}

/// The message ids a partial batch response reports as failed, or `None` when the
/// response is not a valid one (Lambda then fails the whole batch).
fn failed_items(response: &Value, delivered: &BTreeMap<String, u32>) -> Option<Vec<String>> {
    let failures = match response {
        Value::Null => return Some(Vec::new()),
        Value::Object(object) => match object.get("batchItemFailures") {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Array(failures)) => failures,
            Some(_) => return None,
        },
        _ => return None,
    };
    let mut ids = Vec::new();
    for failure in failures {
        let id = failure.get("itemIdentifier")?.as_str()?;
        if id.is_empty() || !delivered.contains_key(id) {
            return None;
        }
        ids.push(id.to_owned());
    }
    Some(ids)
}

fn difference(now: &MappingStats, before: &MappingStats) -> MappingStats {
    MappingStats {
        polls: now.polls - before.polls,
        batches: now.batches - before.batches,
        messages: now.messages - before.messages,
        redeliveries: now.redeliveries - before.redeliveries,
        deleted: now.deleted - before.deleted,
        reported_failures: now.reported_failures - before.reported_failures,
        function_errors: now.function_errors - before.function_errors,
        crashes: now.crashes - before.crashes,
        timeouts: now.timeouts - before.timeouts,
        invalid_responses: now.invalid_responses - before.invalid_responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_batch_responses_are_read_as_lambda_reads_them() {
        let delivered: BTreeMap<String, u32> = [("a".to_owned(), 1), ("b".to_owned(), 2)].into();
        assert_eq!(failed_items(&Value::Null, &delivered), Some(vec![]));
        assert_eq!(failed_items(&json!({}), &delivered), Some(vec![]));
        assert_eq!(
            failed_items(&json!({"batchItemFailures": []}), &delivered),
            Some(vec![])
        );
        assert_eq!(
            failed_items(
                &json!({"batchItemFailures": [{"itemIdentifier": "b"}]}),
                &delivered
            ),
            Some(vec!["b".to_owned()])
        );
        for invalid in [
            json!("done"),
            json!({"batchItemFailures": "b"}),
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"id": "b"}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "c"}]}),
        ] {
            assert_eq!(failed_items(&invalid, &delivered), None, "{invalid}");
        }
    }
}

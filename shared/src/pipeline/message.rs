//! Queue messages: the versioned JSON the fan-out sends and the worker reads, and the raw
//! EventBridge "ECR Image Action" events the push rule puts on the same queue.
//!
//! Schema version 1 (documented in the README):
//!
//! ```json
//! {"version":1,"kind":"copy-image","repository":"team/app","digest":"sha256:…",
//!  "tags":["v1"],"reason":"schedule","runId":"20261127T053000Z-3fa2c1",
//!  "observedAt":"2026-11-27T05:30:00Z"}
//! {"version":1,"kind":"continue-fanout","runId":"…","part":1,"after":"team/app"}
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::copy::CopyRequest;
use crate::filter::FilterSpec;
use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::records::Snapshot;

/// The schema version this build writes and reads.
pub const MESSAGE_VERSION: u32 = 1;
/// Largest message body accepted (SQS's own limit is 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Why a message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The daily fan-out found the image missing or its tags changed.
    Schedule,
    /// An ECR push event.
    Push,
    /// An operator redrove it from the dead-letter queue.
    Redrive,
}

impl Reason {
    /// The name used in messages and logs (`schedule`, `push`, `redrive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schedule => "schedule",
            Reason::Push => "push",
            Reason::Redrive => "redrive",
        }
    }
}

/// A message of this project's own schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Message {
    /// Copy one image (and record its tags).
    CopyImage {
        /// Schema version.
        version: u32,
        /// The repository.
        repository: RepositoryName,
        /// The image's manifest or index digest.
        digest: Digest,
        /// Tags seen on it.
        #[serde(default)]
        tags: Vec<Tag>,
        /// Why it was sent.
        reason: Reason,
        /// The fan-out run that sent it, if any.
        #[serde(rename = "runId", default, skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
        /// When the registry was seen in this state.
        #[serde(rename = "observedAt")]
        observed_at: DateTime<Utc>,
    },
    /// Go on with a fan-out that ran out of time, after repository `after`.
    ContinueFanout {
        /// Schema version.
        version: u32,
        /// The run being continued.
        #[serde(rename = "runId")]
        run_id: String,
        /// Which part of the run this is (the first is 0).
        part: u32,
        /// The last repository already done.
        after: RepositoryName,
        /// When the run started.
        #[serde(rename = "observedAt")]
        observed_at: DateTime<Utc>,
        /// The run's repository and tag selection.
        #[serde(default)]
        filter: FilterSpec,
        /// Most repositories one part may enumerate (absent: only the time budget cuts).
        #[serde(
            rename = "partRepositories",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        part_repositories: Option<u32>,
    },
}

/// Which part of which fan-out run to do: what a `continue-fanout` message carries, and
/// what the fan-out Lambda starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutRun {
    /// The run id (also the first snapshot part's id).
    pub run_id: String,
    /// The part to do.
    pub part: u32,
    /// Start after this repository (continuations).
    pub after: Option<RepositoryName>,
    /// When the run started: every part describes the registry "as of" this time.
    pub observed_at: DateTime<Utc>,
    /// Repository and tag selection.
    pub filter: FilterSpec,
    /// Most repositories one part enumerates (`None`: only the time budget cuts a part).
    pub part_repositories: Option<u32>,
}

impl FanoutRun {
    /// A new run starting now.
    pub fn start(filter: FilterSpec, part_repositories: Option<u32>) -> FanoutRun {
        let observed_at = Utc::now();
        let id = Snapshot::new(String::new(), observed_at).id;
        FanoutRun {
            run_id: id,
            part: 0,
            after: None,
            observed_at,
            filter,
            part_repositories,
        }
    }

    /// The part after this one, starting after repository `after`.
    pub fn next(&self, after: RepositoryName) -> FanoutRun {
        FanoutRun {
            part: self.part + 1,
            after: Some(after),
            ..self.clone()
        }
    }
}

/// What the worker is asked to do, whatever the message's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Copy an image.
    Copy {
        /// The image and its tags.
        request: CopyRequest,
        /// Why.
        reason: Reason,
    },
    /// Record that an image was deleted from ECR (the backup is kept).
    RecordDeletion {
        /// The repository.
        repository: RepositoryName,
        /// The deleted image.
        digest: Digest,
        /// The tag named by the event.
        tag: Option<Tag>,
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },
    /// Continue a fan-out (its `after` is always set).
    ContinueFanout(FanoutRun),
    /// An event this worker does not act on (a failed push, another action); acknowledged.
    Ignore {
        /// Why it is ignored.
        why: String,
    },
}

/// A message that cannot be turned into a task. Each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not JSON, or not an object.
    #[error("message is not a JSON object")]
    NotJson {
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A version this build does not know.
    #[error("message has schema version {version}; this worker reads version {MESSAGE_VERSION}")]
    UnknownVersion {
        /// The version found.
        version: u64,
    },
    /// Well-formed JSON of the wrong shape.
    #[error("message does not match the schema")]
    Invalid {
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// An EventBridge event of another source or type.
    #[error("unsupported event: source {source_name:?}, detail-type {detail_type:?}")]
    UnsupportedEvent {
        /// The event's `source`.
        source_name: String,
        /// The event's `detail-type`.
        detail_type: String,
    },
}

impl Message {
    /// A copy message for a planned copy.
    pub fn copy(request: &CopyRequest, reason: Reason, run_id: Option<String>) -> Message {
        Message::CopyImage {
            version: MESSAGE_VERSION,
            repository: request.repository.clone(),
            digest: request.digest.clone(),
            tags: request.tags.clone(),
            reason,
            run_id,
            observed_at: request.observed_at,
        }
    }

    /// The JSON body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("messages serialize")
    }

    /// The message that continues `run` (whose `after` is set) with its next part.
    pub fn continue_fanout(run: &FanoutRun) -> Message {
        Message::ContinueFanout {
            version: MESSAGE_VERSION,
            run_id: run.run_id.clone(),
            part: run.part,
            after: run
                .after
                .clone()
                .expect("a continuation starts after a repository"),
            observed_at: run.observed_at,
            filter: run.filter.clone(),
            part_repositories: run.part_repositories,
        }
    }

    /// The message as it should be sent again after a redrive.
    pub fn into_task(self) -> Task {
        match self {
            Message::CopyImage {
                repository,
                digest,
                tags,
                reason,
                observed_at,
                ..
            } => Task::Copy {
                request: CopyRequest {
                    repository,
                    digest,
                    tags,
                    observed_at,
                },
                reason,
            },
            Message::ContinueFanout {
                run_id,
                part,
                after,
                observed_at,
                filter,
                part_repositories,
                ..
            } => Task::ContinueFanout(FanoutRun {
                run_id,
                part,
                after: Some(after),
                observed_at,
                filter,
                part_repositories,
            }),
        }
    }
}

#[derive(Deserialize)]
struct EcrEvent {
    time: Option<DateTime<Utc>>,
    detail: EcrEventDetail,
}

#[derive(Deserialize)]
struct EcrEventDetail {
    #[serde(rename = "action-type")]
    action_type: String,
    result: Option<String>,
    #[serde(rename = "repository-name")]
    repository_name: RepositoryName,
    #[serde(rename = "image-digest")]
    image_digest: Digest,
    #[serde(rename = "image-tag", default)]
    image_tag: Option<String>,
}

/// Parses a queue message body: this project's schema, or a raw ECR EventBridge event.
pub fn parse(body: &str) -> Result<Task, MessageError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge { size: body.len() });
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|source| MessageError::NotJson { source })?;
    if !value.is_object() {
        return Err(MessageError::NotJson {
            source: serde::de::Error::custom("expected an object"),
        });
    }
    if value.get("detail-type").is_some() || value.get("source").is_some_and(|s| s.is_string()) {
        return parse_event(value);
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(MESSAGE_VERSION) => {}
        Some(v) => return Err(MessageError::UnknownVersion { version: v }),
        None => {
            return Err(MessageError::Invalid {
                source: serde::de::Error::missing_field("version"),
            })
        }
    }
    let message: Message =
        serde_json::from_value(value).map_err(|source| MessageError::Invalid { source })?;
    Ok(message.into_task())
}

fn parse_event(value: serde_json::Value) -> Result<Task, MessageError> {
    let source_name = value
        .get("source")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned();
    let detail_type = value
        .get("detail-type")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned();
    if source_name != "aws.ecr" || detail_type != "ECR Image Action" {
        return Err(MessageError::UnsupportedEvent {
            source_name,
            detail_type,
        });
    }
    let event: EcrEvent =
        serde_json::from_value(value).map_err(|source| MessageError::Invalid { source })?;
    let at = event.time.unwrap_or_else(Utc::now);
    let detail = event.detail;
    if detail.result.as_deref().is_some_and(|r| r != "SUCCESS") {
        return Ok(Task::Ignore {
            why: format!(
                "{} event with result {:?}",
                detail.action_type, detail.result
            ),
        });
    }
    let tag = match detail.image_tag.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<Tag>().map_err(|e| MessageError::Invalid {
            source: serde::de::Error::custom(e),
        })?),
    };
    match detail.action_type.as_str() {
        "PUSH" => Ok(Task::Copy {
            request: CopyRequest {
                repository: detail.repository_name,
                digest: detail.image_digest,
                tags: tag.into_iter().collect(),
                observed_at: at,
            },
            reason: Reason::Push,
        }),
        "DELETE" => Ok(Task::RecordDeletion {
            repository: detail.repository_name,
            digest: detail.image_digest,
            tag,
            deleted_at: at,
        }),
        other => Ok(Task::Ignore {
            why: format!("ECR action {other:?} needs no backup work"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn copy_messages_round_trip() {
        let request = CopyRequest {
            repository: "team/app".parse().unwrap(),
            digest: D.parse().unwrap(),
            tags: vec!["v1".parse().unwrap()],
            observed_at: Utc::now(),
        };
        let body = Message::copy(&request, Reason::Schedule, Some("r".into())).to_body();
        assert!(body.contains(r#""kind":"copy-image""#), "{body}");
        assert_eq!(
            parse(&body).unwrap(),
            Task::Copy {
                request,
                reason: Reason::Schedule
            }
        );
    }

    #[test]
    fn ecr_push_and_delete_events() {
        let event = |action: &str| {
            format!(
                r#"{{"version":"0","id":"x","detail-type":"ECR Image Action","source":"aws.ecr","account":"123456789012","time":"2026-11-27T05:00:00Z","region":"us-east-1","resources":[],"detail":{{"result":"SUCCESS","repository-name":"team/app","image-digest":"{D}","action-type":"{action}","image-tag":"v2"}}}}"#
            )
        };
        match parse(&event("PUSH")).unwrap() {
            Task::Copy { request, reason } => {
                assert_eq!(reason, Reason::Push);
                assert_eq!(request.tags, vec!["v2".parse::<Tag>().unwrap()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&event("DELETE")).unwrap(),
            Task::RecordDeletion { .. }
        ));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert!(matches!(
            parse("not json"),
            Err(MessageError::NotJson { .. })
        ));
        assert!(matches!(parse("[1]"), Err(MessageError::NotJson { .. })));
        assert!(matches!(
            parse(r#"{"version":2,"kind":"copy-image"}"#),
            Err(MessageError::UnknownVersion { version: 2 })
        ));
        let e = parse(r#"{"version":1,"kind":"copy-image","repository":"../etc","digest":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("schema"), "{e}");
        let e =
            parse(r#"{"source":"aws.s3","detail-type":"Object Created","detail":{}}"#).unwrap_err();
        assert!(matches!(e, MessageError::UnsupportedEvent { .. }), "{e}");
        assert!(matches!(
            parse(&"x".repeat(MAX_MESSAGE_BYTES + 1)),
            Err(MessageError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in ".{0,400}") {
            let _ = parse(&body);
        }

        #[test]
        fn parse_never_panics_on_near_messages(
            repo in "[a-z0-9/._-]{0,40}",
            digest in "[a-z0-9:]{0,80}",
            tag in "[ -~]{0,140}",
            version in 0u64..4,
        ) {
            let body = serde_json::json!({
                "version": version, "kind": "copy-image", "repository": repo,
                "digest": digest, "tags": [tag], "reason": "push",
                "observedAt": "2026-11-27T05:00:00Z"
            }).to_string();
            if let Ok(Task::Copy { request, .. }) = parse(&body) {
                // Whatever parses is safe to use in keys.
                prop_assert!(!request.repository.as_str().contains(".."));
            }
        }
    }
}

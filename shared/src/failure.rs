//! The kinds of failure every layer reports, so that the decisions made on a failure
//! (acknowledge a message, retry it, send it to the dead-letter queue, alarm) are taken on
//! a kind decided where the failing request was made, never on an error's text.

/// What kind of failure a copy met, decided where the failing request was made (never
/// from an error's text). Callers decide from it whether a message may be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The requested image's top manifest does not exist at the source.
    Gone,
    /// A manifest or blob the image references does not exist at the source.
    MissingReferenced,
    /// The image is archived in ECR and cannot be pulled now.
    Archived,
    /// The registry or store asked us to slow down (429, S3 `SlowDown`).
    Throttled,
    /// A failure that may pass (5xx, a broken connection, a timeout).
    Transient,
    /// Credentials or permissions were refused, or the request was rejected as invalid.
    Refused,
    /// Bytes that do not match their digest, or manifests this tool cannot follow.
    Corrupt,
}

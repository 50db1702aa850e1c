//! Errors of the registry client.

use crate::oci::digest::DigestError;

/// What went wrong talking to a registry; each variant names what was being fetched.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request never got an HTTP answer (connection refused, reset, timeout).
    #[error("{op} {target}: cannot reach the registry")]
    Connect {
        /// What was being done.
        op: &'static str,
        /// Repository and reference, or URL without its query.
        target: String,
        /// The transport error, with any URL removed (it could carry a signature).
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{op} {target}: registry answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// What was being done.
        op: &'static str,
        /// Repository and reference.
        target: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body, for the registry's own explanation.
        body: String,
        /// Seconds the registry asked to wait (`Retry-After`), if any.
        retry_after: Option<u64>,
    },
    /// Credentials were refused, or none were given and the registry wants some.
    #[error("{op} {target}: authentication failed at {registry}: {detail}")]
    Unauthorized {
        /// What was being done.
        op: &'static str,
        /// Repository and reference.
        target: String,
        /// The registry.
        registry: String,
        /// The registry's explanation (never the credentials).
        detail: String,
    },
    /// The manifest or blob does not exist.
    #[error("{op} {target}: not found")]
    NotFound {
        /// What was being done.
        op: &'static str,
        /// Repository and reference.
        target: String,
    },
    /// Bytes did not match their digest (or a digest header did not parse).
    #[error("checking the digest of {target}")]
    Digest {
        /// Repository and reference.
        target: String,
        /// The mismatch.
        #[source]
        source: DigestError,
    },
    /// A manifest larger than the 4 MiB limit.
    #[error("{target}: manifest is larger than 4 MiB ({size} bytes or more); refused")]
    ManifestTooLarge {
        /// Repository and reference.
        target: String,
        /// Bytes seen.
        size: u64,
    },
    /// The registry URL could not be used.
    #[error("invalid registry {url:?}: {reason}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Getting credentials failed (for example the ECR token call).
    #[error("getting registry credentials: {message}")]
    Credentials {
        /// What failed.
        message: String,
    },
    /// The registry broke the protocol (missing header, bad JSON).
    #[error("{op} {target}: {reason}")]
    Protocol {
        /// What was being done.
        op: &'static str,
        /// Repository and reference.
        target: String,
        /// What was wrong.
        reason: String,
    },
}

impl RegistryError {
    /// The kind of failure, from the variant and status (a 404 is decided by the caller,
    /// who knows what was asked for: [`crate::copy::CopyError::Gone`] or `Missing`).
    pub fn kind(&self) -> crate::failure::FailureKind {
        use crate::failure::FailureKind;
        match self {
            RegistryError::Status { status: 429, .. } => FailureKind::Throttled,
            RegistryError::Connect { .. } | RegistryError::Status { .. } if self.is_transient() => {
                FailureKind::Transient
            }
            RegistryError::NotFound { .. } => FailureKind::MissingReferenced,
            RegistryError::Digest { .. } | RegistryError::ManifestTooLarge { .. } => {
                FailureKind::Corrupt
            }
            RegistryError::Protocol { .. } => FailureKind::Corrupt,
            RegistryError::Connect { .. }
            | RegistryError::Status { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::InvalidUrl { .. }
            | RegistryError::Credentials { .. } => FailureKind::Refused,
        }
    }

    /// True when the same request may succeed later: throttling, 5xx, broken connections.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. } => true,
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..=599).contains(status)
            }
            _ => false,
        }
    }

    /// The delay the registry asked for, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::Status {
                retry_after: Some(s),
                ..
            } => Some(std::time::Duration::from_secs(*s)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Digest;

    #[test]
    fn display_names_the_step_and_the_chain_adds_the_cause_once() {
        let e = RegistryError::Digest {
            target: "team/app@sha256:ab".into(),
            source: DigestError::Mismatch {
                expected: Digest::of(b"a"),
                actual: Digest::of(b"b"),
                size: 1,
            },
        };
        assert_eq!(e.to_string(), "checking the digest of team/app@sha256:ab");
        let chain = crate::error::error_chain(&e);
        assert!(
            chain.starts_with("checking the digest of team/app@sha256:ab: digest mismatch"),
            "{chain}"
        );
        assert_eq!(chain.matches("digest mismatch").count(), 1, "{chain}");
    }
}

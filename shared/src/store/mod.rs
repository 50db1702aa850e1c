//! The backup store: one small [`Backend`] trait for "a place objects live" (a local
//! directory or an S3 prefix), and [`Store`], which lays the backup repository out on it.
//!
//! The layout and its invariants are specified in `docs/format.md`: keys in
//! [`Layout`], record types in [`records`], runs and their parts in `runs.rs`, tags as of a
//! time and the root `index.json` in [`tag_view`].
//!
//! Owns: every object of a backup repository and the rules for writing it (verified,
//! create-only). May use: `oci`, `stream`, `aws`; never `source` or `copy`, so a store can
//! be read without a registry.

// Compiled only for tests, so the Lambda binaries do not carry it.
pub mod checks;
#[cfg(any(test, feature = "testing"))]
mod conformance;
pub mod counting;
mod dir;
mod layout;
pub mod locks;
pub mod records;
mod repository;
mod runs;
mod s3;
pub mod settings;
pub mod tag_view;
pub mod usage;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::oci::digest::{Digest, DigestError};

pub use crate::stream::{stream_of, ByteStream};
#[cfg(any(test, feature = "testing"))]
pub use conformance::run_conformance_suite;
pub use counting::CountingBackend;
pub use dir::DirBackend;
pub use layout::Layout;

/// The prefixes of the store's kinds of objects (`docs/format.md`, "Layout").
pub mod layout_prefixes {
    pub use super::layout::{
        BLOBS_PREFIX as BLOBS, REGISTRY_SETTINGS_PREFIX as REGISTRY_SETTINGS,
        REPOSITORIES_PREFIX as REPOSITORIES, SNAPSHOTS_PREFIX as SNAPSHOTS, TREES_PREFIX as TREES,
    };
}
pub use locks::{LockTimings, PruneFence, WriteLease};
pub use repository::{
    sort_observations, IndexRef, Listing, RepositoryListing, Store, StoreLocation, TagEntry,
};
pub use runs::{observed_after_run, part_id, PartContext, PartId, Run};
pub use s3::{ContactError, S3Backend, S3Location};

/// What went wrong while using a store; each variant names the key it was working on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file operation failed.
    #[error("{op} {key}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The key (path below the store root).
        key: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed (after the SDK's own retries).
    #[error("S3 {op} {key}: {message}")]
    S3 {
        /// The S3 operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// The service's error, with code and message.
        message: String,
    },
    /// The object does not exist.
    #[error("{key} does not exist in the store")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The bytes offered for a blob did not match its digest; nothing was written.
    #[error("refused to store {key}")]
    Verify {
        /// The blob's key.
        key: String,
        /// The mismatch.
        #[source]
        source: DigestError,
    },
    /// The stream being written failed (for example the registry connection broke).
    #[error("reading the bytes for {key} failed")]
    Source {
        /// The key being written.
        key: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The store location could not be understood.
    #[error("invalid store location {location:?}: {reason}")]
    InvalidLocation {
        /// The location given.
        location: String,
        /// Why it was refused.
        reason: String,
    },
    /// The location exists but holds no backup store (no `oci-layout` file).
    #[error("{location} is not an ecr-backup store (no oci-layout file at its root)")]
    NotAStore {
        /// The location given.
        location: String,
    },
    /// A create-only object already exists under the key with other bytes.
    #[error("{key} already exists in the store with different contents; it was not replaced")]
    Conflict {
        /// The object's key.
        key: String,
    },
    /// The first contact with the store failed (see [`Backend::first_contact`]).
    #[error(transparent)]
    Contact(#[from] ContactError),
    /// A prune is running: its fence stops writers until it is done (or has expired).
    #[error("a prune of the store is running ({fence}, in force until {until} at the latest); the write was not started, try again after it")]
    Fenced {
        /// The prune's fence.
        fence: String,
        /// When the fence ends at the latest.
        until: DateTime<Utc>,
    },
    /// The writer's lease is no longer held, so writing `key` could race a prune.
    #[error("not writing {key}: write lease {lease} is no longer held ({why})")]
    LeaseLost {
        /// The key that was to be written.
        key: String,
        /// The lease (or fence).
        lease: String,
        /// Why it is no longer held.
        why: String,
    },
    /// The backend cannot delete objects.
    #[error("{location} cannot delete objects")]
    DeleteUnsupported {
        /// Where the store is.
        location: String,
    },
    /// A record in the store could not be parsed.
    #[error("record {key} is corrupt")]
    CorruptRecord {
        /// The record's key.
        key: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The error of a verified write to `key` whose bytes failed to arrive or to match.
    pub fn verifying(key: &str, error: crate::stream::ReadError) -> StoreError {
        match error {
            crate::stream::ReadError::Io(source) => StoreError::Source {
                key: key.into(),
                source,
            },
            crate::stream::ReadError::Digest(source) => StoreError::Verify {
                key: key.into(),
                source,
            },
        }
    }

    /// True when retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::S3 { .. }
                | StoreError::Source { .. }
                | StoreError::Fenced { .. }
                | StoreError::LeaseLost { .. }
        )
    }
}

/// Whether a write-once call stored new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The object was written by this call.
    Written,
    /// An object already existed under the key; nothing was changed.
    AlreadyExists,
}

/// An entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key, relative to the store root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub modified: DateTime<Utc>,
}

/// A place objects live: a directory or an S3 prefix. Keys are `/`-separated relative
/// paths made by [`Layout`], never by user input directly.
///
/// Contracts every backend keeps (checked by the conformance suite, `store/conformance.rs`, which the
/// `testing` feature exports):
/// - `write_verified` makes an object visible only after its bytes matched the digest and
///   size; on any error nothing is visible under the key and no partial object remains
///   where `list` would show it; it never replaces an existing object.
/// - `write` replaces an object atomically: readers see the old bytes or the new, whole.
/// - `stat`/`read` return `None` for a missing key; other failures are errors.
/// - Only [`Backend::delete`] deletes an object, and only retention (`forget`, `prune`)
///   calls it; [`Backend::remove_leftovers`] removes only what interrupted writes left
///   where no reader looks.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Where the store is, for messages (`/path/to/store`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Size of the object, or `None` when it does not exist.
    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// The whole object, or `None` when it does not exist. For small objects only.
    async fn read(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// A stream of the object's bytes; `NotFound` when it does not exist.
    async fn open(&self, key: &str) -> Result<ByteStream, StoreError>;

    /// Writes (or atomically replaces) a small object.
    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// Streams a blob in, hashing as it goes; see the trait's contracts.
    async fn write_verified(
        &self,
        key: &str,
        digest: &Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError>;

    /// Every object whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes the objects (keys that do not exist are not an error). Only retention
    /// calls it, under a prune fence (`store/locks.rs`, `retention/`).
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let _ = keys;
        Err(StoreError::DeleteUnsupported {
            location: self.location(),
        })
    }

    /// Removes what interrupted writes left behind that no reader ever sees, once it has
    /// not been touched for `idle`, and returns how many were removed. A directory store
    /// removes such files from `tmp/` (a killed copy leaves its partial blob there); the
    /// S3 store has nothing to do (an interrupted multipart upload is invisible, and the
    /// bucket's lifecycle rule aborts it).
    async fn remove_leftovers(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        let _ = idle;
        Ok(0)
    }

    /// Requests the backend retried by itself so far (S3: throttling and 5xx answers
    /// retried by the SDK), for reports.
    fn retries(&self) -> u64 {
        0
    }

    /// Requests sent so far by kind (S3's, none for a directory) and objects written,
    /// for the cost figures of a run.
    fn requests(&self) -> crate::metering::RequestCounts {
        crate::metering::RequestCounts::default()
    }

    /// A first request with a short retry budget, so that a store that cannot be reached
    /// (or used: no region, no credentials) fails at once with one error saying what to
    /// set, before the full retry budget of later requests is spent on it.
    async fn first_contact(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

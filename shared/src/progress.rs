//! How the engines report progress; only the CLI draws it (with indicatif).

use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;

/// Receives progress events; every method has a do-nothing default.
pub trait Reporter: Send + Sync {
    /// `n` more images were found to process.
    fn images_found(&self, _n: u64) {}
    /// Work on an image started.
    fn image_started(&self, _repo: &RepositoryName, _digest: &Digest) {}
    /// `n` more bytes were transferred.
    fn bytes_transferred(&self, _n: u64) {}
    /// An image is finished (copied, already present or failed).
    fn image_finished(&self, _repo: &RepositoryName, _digest: &Digest, _ok: bool) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Reporter for NoProgress {}

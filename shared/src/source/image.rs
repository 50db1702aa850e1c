//! What an enumeration yields: one image of a repository, with its tags.

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};

/// One image found in a source: a manifest digest and the tags on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// The repository.
    pub repository: RepositoryName,
    /// The manifest (or index) digest.
    pub digest: Digest,
    /// Tags pointing at it (empty for an untagged image).
    pub tags: Vec<Tag>,
    /// The manifest's media type, if the source said.
    pub media_type: Option<String>,
    /// ECR archive storage: listed, but not pullable until restored.
    pub archived: bool,
}

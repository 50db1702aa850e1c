//! Deleting from a registry: a manifest by digest (`DELETE /v2/<name>/manifests/<digest>`),
//! used only by restore drills to remove what they pushed under their scratch prefix.
//!
//! The distribution API has no call that deletes a repository, and a blob's storage is
//! reclaimed only by the registry's own garbage collection; a registry run without
//! deletes enabled (CNCF distribution's default, `storage.delete.enabled: false`) refuses
//! manifest deletes with 405.

use reqwest::StatusCode;

use super::transport::{push_scope, status_error, target};
use super::{RegistryClient, RegistryError};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;

/// What a manifest delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The registry deleted it.
    Deleted,
    /// It was not there.
    Absent,
    /// The registry does not allow deletes (HTTP 405).
    Unsupported,
}

impl RegistryClient {
    /// Deletes a manifest (and so every tag on it) by digest.
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Deleted, RegistryError> {
        let t = target(repo, &digest.to_string());
        let url = self.url_for(&format!("/v2/{repo}/manifests/{digest}"));
        let scope = format!("{},delete", push_scope(repo));
        let response = self
            .send("delete manifest", &t, &scope, &|| {
                self.http.delete(url.clone())
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Deleted::Deleted),
            StatusCode::NOT_FOUND => Ok(Deleted::Absent),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Deleted::Unsupported),
            _ => Err(status_error("delete manifest", &t, response).await),
        }
    }
}

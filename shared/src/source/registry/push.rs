//! Writing to a registry: blob uploads (streamed from a store, or from memory), blob
//! mounts from another repository, and manifest PUTs as exact bytes.

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use url::Url;

use super::transport::{header_str, push_scope, status_error, target};
use super::{RegistryClient, RegistryError};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::stream::ByteStream;

impl RegistryClient {
    /// Asks the registry to mount a blob from another repository; true if it did.
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: &RepositoryName,
    ) -> Result<bool, RegistryError> {
        let t = target(repo, &digest.to_string());
        let mut url = self.url_for(&format!("/v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from.as_str());
        let scope = format!("repository:{repo}:pull,push repository:{from}:pull");
        let response = self
            .send("mount blob", &t, &scope, &|| {
                self.http.post(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        Ok(response.status() == StatusCode::CREATED)
    }

    /// Uploads a blob from a stream in one attempt, no request retried: the caller reopens
    /// the stream and retries the whole upload (one retry layer).
    pub async fn push_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<(), RegistryError> {
        let t = target(repo, &digest.to_string());
        let scope = push_scope(repo);
        let start_url = self.url_for(&format!("/v2/{repo}/blobs/uploads/"));
        let response = self
            .attempt("start upload of", &t, &scope, &|| {
                self.http
                    .post(start_url.clone())
                    .header(CONTENT_LENGTH, "0")
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error("start upload of", &t, response).await);
        }
        let location = self.upload_location(&t, response.headers())?;
        // The body is streamed in one PATCH, then the upload is closed with its digest.
        let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(body)));
        let response = self
            .send_authenticated(
                "upload",
                &t,
                &scope,
                &|| {
                    let req = self
                        .http
                        .patch(location.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, size.to_string());
                    match body.lock().expect("body lock").take() {
                        Some(b) => req.body(b),
                        None => req.body(Bytes::new()),
                    }
                },
                false,
            )
            .await?;
        if !response.status().is_success() {
            return Err(status_error("upload", &t, response).await);
        }
        let mut put_url = self
            .upload_location(&t, response.headers())
            .unwrap_or(location);
        put_url
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .attempt("finish upload of", &t, &scope, &|| {
                self.http.put(put_url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error("finish upload of", &t, response).await);
        }
        Ok(())
    }

    /// Uploads a blob held in memory, with retries.
    pub async fn push_blob_bytes(
        &self,
        repo: &RepositoryName,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        // The upload's one retry layer: push_blob retries none of its requests.
        self.with_retries(
            || async {
                self.push_blob(repo, &digest, size, crate::stream::stream_of(bytes.clone()))
                    .await
            },
            |_| false,
        )
        .await?;
        Ok(digest)
    }

    /// Uploads a manifest under a tag or its digest, as exact bytes.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let t = target(repo, reference);
        let url = self.url_for(&format!("/v2/{repo}/manifests/{reference}"));
        let response = self
            .send("push manifest", &t, &push_scope(repo), &|| {
                self.http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        if response.status() != StatusCode::CREATED && !response.status().is_success() {
            return Err(status_error("push manifest", &t, response).await);
        }
        Ok(Digest::of(&bytes))
    }

    /// Where an upload continues: the `Location` of the last answer, against the base.
    fn upload_location(&self, t: &str, headers: &HeaderMap) -> Result<Url, RegistryError> {
        let location =
            header_str(headers, LOCATION.as_str()).ok_or_else(|| RegistryError::Protocol {
                op: "upload",
                target: t.into(),
                reason: "no Location header in the upload response".into(),
            })?;
        self.base
            .join(&location)
            .map_err(|e| RegistryError::Protocol {
                op: "upload",
                target: t.into(),
                reason: format!("bad upload Location: {e}"),
            })
    }
}

//! Reading from a registry: manifests (GET as exact bytes, HEAD to resolve a tag), blobs
//! as streams, whether a blob or manifest exists, and referrers.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;

use super::transport::{header_str, pull_scope, status_error, target};
use super::{RegistryClient, RegistryError};
use crate::oci::digest::Digest;
use crate::oci::manifest::{self, Descriptor, ALL_MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use crate::oci::names::RepositoryName;
use crate::stream::ByteStream;

/// A manifest fetched from a registry.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes received.
    pub bytes: Bytes,
    /// Their digest.
    pub digest: Digest,
    /// The `Content-Type` the registry sent.
    pub media_type: Option<String>,
}

/// The digest a tag points at, from a manifest HEAD.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// Digest of the manifest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: Option<String>,
    /// Its size.
    pub size: Option<u64>,
}

/// The `Accept` value naming every manifest type, so that none is converted.
fn accept_manifests() -> String {
    ALL_MANIFEST_TYPES.join(", ")
}

impl RegistryClient {
    /// The digest a tag (or digest) resolves to; `None` if it does not exist.
    pub async fn head_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let t = target(repo, reference);
        let url = self.url_for(&format!("/v2/{repo}/manifests/{reference}"));
        let response = self
            .send("resolve", &t, &pull_scope(repo), &|| {
                self.http
                    .head(url.clone())
                    .header(ACCEPT, accept_manifests())
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(status_error("resolve", &t, response).await);
        }
        let media_type = header_str(response.headers(), CONTENT_TYPE.as_str());
        let size =
            header_str(response.headers(), CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok());
        match header_str(response.headers(), "docker-content-digest") {
            Some(d) => Ok(Some(ManifestHead {
                digest: d.parse().map_err(|source| RegistryError::Digest {
                    target: t.clone(),
                    source,
                })?,
                media_type,
                size,
            })),
            // Some registries omit the header on HEAD: hash the body instead.
            None => Ok(self.get_manifest(repo, reference).await.map(|m| {
                Some(ManifestHead {
                    size: Some(m.bytes.len() as u64),
                    digest: m.digest,
                    media_type: m.media_type,
                })
            })?),
        }
    }

    /// Fetches a manifest as exact bytes; by digest it is verified, and never converted
    /// because every manifest type is in `Accept`.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let t = target(repo, reference);
        let url = self.url_for(&format!("/v2/{repo}/manifests/{reference}"));
        let expected = reference.parse::<Digest>().ok();
        // One retry layer for the whole fetch: the request, the body (a read can fail
        // after the headers arrived), and the digest (bytes that do not match may be a
        // corrupted transfer, so they are fetched again, as blobs are).
        let fetch = || async {
            let response = self
                .attempt("fetch manifest", &t, &pull_scope(repo), &|| {
                    self.http
                        .get(url.clone())
                        .header(ACCEPT, accept_manifests())
                })
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    op: "fetch manifest",
                    target: t.clone(),
                });
            }
            if !response.status().is_success() {
                return Err(status_error("fetch manifest", &t, response).await);
            }
            let media_type = header_str(response.headers(), CONTENT_TYPE.as_str())
                .map(|s| s.split(';').next().unwrap_or_default().trim().to_owned());
            if let Some(len) = response.content_length() {
                if len > MAX_MANIFEST_BYTES as u64 {
                    return Err(RegistryError::ManifestTooLarge {
                        target: t.clone(),
                        size: len,
                    });
                }
            }
            let mut body = response.bytes_stream();
            let mut bytes = BytesMut::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| RegistryError::Connect {
                    op: "fetch manifest",
                    target: t.clone(),
                    source: e.without_url(),
                })?;
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_MANIFEST_BYTES {
                    return Err(RegistryError::ManifestTooLarge {
                        target: t.clone(),
                        size: bytes.len() as u64,
                    });
                }
            }
            let bytes = bytes.freeze();
            if let Some(expected) = &expected {
                expected
                    .verify(&bytes)
                    .map_err(|source| RegistryError::Digest {
                        target: t.clone(),
                        source,
                    })?;
            }
            Ok((bytes, media_type))
        };
        let (bytes, media_type) = self
            .with_retries(fetch, |e| matches!(e, RegistryError::Digest { .. }))
            .await?;
        let digest = Digest::of(&bytes);
        Ok(FetchedManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Opens a blob as a stream of bytes, in one attempt: a transfer can also break in the
    /// body or fail its digest, so the caller retries the whole transfer (one retry
    /// layer: see [`crate::copy`]). The caller verifies the digest as it reads.
    pub async fn get_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<ByteStream, RegistryError> {
        let t = target(repo, &digest.to_string());
        let url = self.url_for(&format!("/v2/{repo}/blobs/{digest}"));
        self.stats.blob_gets.fetch_add(1, Ordering::Relaxed);
        let response = self
            .attempt("fetch blob", &t, &pull_scope(repo), &|| {
                self.http.get(url.clone())
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                op: "fetch blob",
                target: t,
            });
        }
        if !response.status().is_success() {
            return Err(status_error("fetch blob", &t, response).await);
        }
        Ok(Box::pin(
            response
                .bytes_stream()
                .map_err(|e| std::io::Error::other(e.without_url())),
        ))
    }

    /// True if the registry has the blob.
    pub async fn blob_exists(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let t = target(repo, &digest.to_string());
        let url = self.url_for(&format!("/v2/{repo}/blobs/{digest}"));
        let response = self
            .send("check blob", &t, &pull_scope(repo), &|| {
                self.http.head(url.clone())
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error("check blob", &t, response).await),
        }
    }

    /// True if the registry has the manifest.
    pub async fn manifest_exists(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        Ok(self
            .head_manifest(repo, &digest.to_string())
            .await?
            .is_some())
    }

    /// The referrers of a manifest, or `None` when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let t = target(repo, &digest.to_string());
        let url = self.url_for(&format!("/v2/{repo}/referrers/{digest}"));
        let response = self
            .send("list referrers of", &t, &pull_scope(repo), &|| {
                self.http
                    .get(url.clone())
                    .header(ACCEPT, manifest::OCI_INDEX)
            })
            .await?;
        // The distribution spec forbids a registry with the API to answer 404 here, so a
        // 404 (or 405) is about the registry, not this image: remembered for the client's
        // lifetime. A 400 may be about this request alone.
        if matches!(
            response.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            self.no_referrers_api.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        if response.status() == StatusCode::BAD_REQUEST {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(status_error("list referrers of", &t, response).await);
        }
        let bytes = response.bytes().await.map_err(|e| RegistryError::Connect {
            op: "list referrers of",
            target: t.clone(),
            source: e.without_url(),
        })?;
        let index_digest = Digest::of(&bytes);
        let parsed =
            manifest::parse(&index_digest, &bytes, Some(manifest::OCI_INDEX)).map_err(|e| {
                RegistryError::Protocol {
                    op: "list referrers of",
                    target: t.clone(),
                    reason: crate::error::error_chain(&e),
                }
            })?;
        Ok(Some(parsed.manifests))
    }
}

#[cfg(test)]
mod limit_tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use url::Url;

    use super::*;
    use crate::source::registry::{Credentials, StaticCredentials};

    /// A one-shot HTTP responder: the registry client's own size limit is what is tested,
    /// and no real registry accepts a manifest this large.
    async fn serve_once(body: Vec<u8>, content_length: bool) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n",
                manifest::OCI_MANIFEST
            );
            if content_length {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("Connection: close\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
        });
        Url::parse(&format!("http://{addr}")).unwrap()
    }

    #[tokio::test]
    async fn manifests_over_4_mib_are_refused_with_or_without_content_length() {
        for content_length in [true, false] {
            let url = serve_once(vec![b' '; MAX_MANIFEST_BYTES + 1], content_length).await;
            let client =
                RegistryClient::new(url, Arc::new(StaticCredentials(Credentials::Anonymous)))
                    .unwrap();
            let repo: RepositoryName = "a".parse().unwrap();
            let err = client.get_manifest(&repo, "v1").await.unwrap_err();
            assert!(
                matches!(err, RegistryError::ManifestTooLarge { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("a:v1"), "{err}");
        }
    }
}

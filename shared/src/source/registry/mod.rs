//! A client for the OCI distribution API: manifests by digest as exact bytes, streamed
//! blobs, pushes, enumeration, with auth and retries.
//!
//! Written on `reqwest` rather than `oci-client` because a backup needs what that crate
//! does not offer together: `_catalog` enumeration, the raw `Accept`/`Content-Type` of
//! every manifest kind (schema 1 and artifacts included) kept byte-exact, request-level
//! retries with `Retry-After`, chunked streaming pushes from a store, and credentials that
//! an ECR token source refreshes on a 401.
//!
//! Redirects (ECR answers blob GETs with a 307 to presigned S3) are followed by reqwest,
//! which drops `Authorization` when the host changes; errors are stripped of URLs so a
//! presigned signature never reaches a log.

mod auth;
mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use url::Url;

pub use auth::{
    parse_challenge, Challenge, CredentialSource, Credentials, Secret, StaticCredentials,
};
pub use error::RegistryError;

use crate::oci::digest::Digest;
use crate::oci::manifest::{self, Descriptor, ALL_MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use crate::oci::names::{RepositoryName, Tag};
use crate::stream::ByteStream;

/// Retry policy for one registry request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First delay; doubles each time, with jitter.
    pub min_delay: Duration,
    /// Longest delay between attempts (also caps `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The backoff schedule for `backon`.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// Request counters, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// HTTP requests sent (retries included).
    pub requests: AtomicU64,
    /// Blob GETs sent.
    pub blob_gets: AtomicU64,
    /// Retries after a transient failure.
    pub retries: AtomicU64,
}

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

/// A client for one registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    credentials: Arc<dyn CredentialSource>,
    tokens: Arc<Mutex<HashMap<String, Secret>>>,
    retry: RetryPolicy,
    stats: Arc<RegistryStats>,
    /// Set once the registry answered a referrers call with 404 or 405: it has no
    /// referrers API, and asking again for every image only costs a request.
    no_referrers_api: Arc<AtomicBool>,
}

/// Parses a registry given as `host[:port]`, `http://host:port` or `https://host`.
pub fn parse_registry_url(text: &str) -> Result<Url, RegistryError> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| RegistryError::InvalidUrl {
        url: text.into(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(RegistryError::InvalidUrl {
            url: text.into(),
            reason: "expected host[:port], http://host[:port] or https://host[:port]".into(),
        });
    }
    Ok(url)
}

fn target(repo: &RepositoryName, reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    }
}

impl RegistryClient {
    /// A client for `base` (see [`parse_registry_url`]) with the given credentials.
    pub fn new(base: Url, credentials: Arc<dyn CredentialSource>) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ecr-backup/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RegistryError::InvalidUrl {
                url: base.to_string(),
                reason: e.without_url().to_string(),
            })?;
        Ok(RegistryClient {
            http,
            base,
            credentials,
            tokens: Arc::default(),
            retry: RetryPolicy::default(),
            stats: Arc::default(),
            no_referrers_api: Arc::default(),
        })
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The registry's URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// The registry as `host[:port]`, for records and messages.
    pub fn name(&self) -> String {
        match self.base.port() {
            Some(p) => format!("{}:{p}", self.base.host_str().unwrap_or_default()),
            None => self.base.host_str().unwrap_or_default().to_owned(),
        }
    }

    /// Request counters.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    fn url_for(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(None);
        url
    }

    /// Sends one request with auth (answering one challenge), without retries.
    async fn send_once(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_authenticated(op, target, scope, build, true)
            .await
    }

    /// Sends with auth; `resendable` is false for a streamed body, which cannot be sent
    /// a second time after a challenge (the caller restarts the upload instead).
    async fn send_authenticated(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Send + Sync),
        resendable: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut refreshed = false;
        for _attempt in 0..3 {
            let mut request = build();
            let token = self.tokens.lock().expect("token lock").get(scope).cloned();
            let credentials = self.credentials.credentials(refreshed).await?;
            if let Some(token) = &token {
                request = request.header(AUTHORIZATION, bearer(token));
            } else if let Some(basic) = credentials.basic_header() {
                request = request.header(AUTHORIZATION, sensitive(basic.expose()));
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let response = request.send().await.map_err(|e| RegistryError::Connect {
                op,
                target: target.into(),
                source: e.without_url(),
            })?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if !resendable {
                return Err(RegistryError::Unauthorized {
                    op,
                    target: target.into(),
                    registry: self.name(),
                    detail: "the registry asked to authenticate again in the middle of an upload"
                        .into(),
                });
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: wanted,
                }) if token.is_none() || !refreshed => {
                    let scope_to_ask = wanted.unwrap_or_else(|| scope.to_owned());
                    let credentials = self.credentials.credentials(token.is_some()).await?;
                    let new = self
                        .fetch_token(
                            &realm,
                            service.as_deref(),
                            &scope_to_ask,
                            &credentials,
                            target,
                            op,
                        )
                        .await?;
                    self.tokens
                        .lock()
                        .expect("token lock")
                        .insert(scope.to_owned(), new);
                    refreshed = token.is_some();
                }
                Some(Challenge::Basic)
                    if !refreshed && !matches!(credentials, Credentials::Anonymous) =>
                {
                    // ECR tokens expire: ask the source for fresh ones once.
                    refreshed = true;
                }
                _ => {
                    let detail = if matches!(credentials, Credentials::Anonymous) {
                        "the registry requires credentials and none were given".to_owned()
                    } else {
                        "credentials were refused".to_owned()
                    };
                    return Err(RegistryError::Unauthorized {
                        op,
                        target: target.into(),
                        registry: self.name(),
                        detail,
                    });
                }
            }
        }
        Err(RegistryError::Unauthorized {
            op,
            target: target.into(),
            registry: self.name(),
            detail: "credentials were refused after a refresh".into(),
        })
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: &Credentials,
        target: &str,
        op: &'static str,
    ) -> Result<Secret, RegistryError> {
        let mut url = Url::parse(realm).map_err(|e| RegistryError::Protocol {
            op,
            target: target.into(),
            reason: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if let Some(basic) = credentials.basic_header() {
            request = request.header(AUTHORIZATION, sensitive(basic.expose()));
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(|e| RegistryError::Connect {
            op: "get token for",
            target: target.into(),
            source: e.without_url(),
        })?;
        if !response.status().is_success() {
            return Err(RegistryError::Unauthorized {
                op,
                target: target.into(),
                registry: self.name(),
                detail: format!(
                    "token endpoint answered HTTP {}",
                    response.status().as_u16()
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: TokenResponse = response.json().await.map_err(|e| RegistryError::Protocol {
            op,
            target: target.into(),
            reason: format!("token endpoint sent no usable JSON: {}", e.without_url()),
        })?;
        body.token
            .or(body.access_token)
            .map(Secret::new)
            .ok_or_else(|| RegistryError::Protocol {
                op,
                target: target.into(),
                reason: "token endpoint sent no token".into(),
            })
    }

    /// Sends one request (answering an auth challenge): an answer of 429, 408 or 5xx is
    /// returned as its transient error, any other as the response. No retries: each
    /// request has one retry layer, which is [`Self::send`]'s loop or the caller's.
    async fn attempt(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        let response = self.send_once(op, target, scope, build).await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            return Err(status_error(op, target, response).await);
        }
        Ok(response)
    }

    /// Runs `attempt` under the client's retry policy: transient failures (and those
    /// `also` names) are retried, honouring `Retry-After` within the longest delay.
    async fn with_retries<T, F, Fut>(
        &self,
        attempt: F,
        also: fn(&RegistryError) -> bool,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        attempt
            .retry(self.retry.backoff())
            .when(|e| e.is_transient() || also(e))
            .adjust(|e, delay| {
                delay.map(|d| e.retry_after().map_or(d, |ra| ra.min(self.retry.max_delay)))
            })
            .notify(|e, delay| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "retrying registry request");
            })
            .await
    }

    /// Sends a request with retries on transient failures; returns the response of any
    /// status that is not an auth failure, 429 or 5xx.
    async fn send(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        self.with_retries(|| self.attempt(op, target, scope, build), |_| false)
            .await
    }

    /// The retry policy of this client's requests.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Checks that the registry speaks the distribution API and accepts the credentials.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.url_for("/v2/");
        let response = self
            .send("connect to", &self.name(), "", &|| {
                self.http.get(url.clone())
            })
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(status_error("connect to", &self.name(), response).await)
        }
    }

    /// Every repository, through `_catalog` (paged by `Link` headers).
    pub async fn catalog(&self) -> Result<Vec<RepositoryName>, RegistryError> {
        let mut names = Vec::new();
        let mut next = Some(format!("/v2/_catalog?n={}", 1000));
        while let Some(path_and_query) = next.take() {
            let url = self
                .base
                .join(&path_and_query)
                .map_err(|e| RegistryError::Protocol {
                    op: "list repositories of",
                    target: self.name(),
                    reason: format!("bad Link {path_and_query:?}: {e}"),
                })?;
            let response = self
                .send(
                    "list repositories of",
                    &self.name(),
                    "registry:catalog:*",
                    &|| self.http.get(url.clone()),
                )
                .await?;
            if !response.status().is_success() {
                return Err(status_error("list repositories of", &self.name(), response).await);
            }
            next = next_link(response.headers());
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let page: Page = json_body("list repositories of", &self.name(), response).await?;
            for name in page.repositories {
                match name.parse() {
                    Ok(n) => names.push(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping repository with an invalid name")
                    }
                }
            }
        }
        Ok(names)
    }

    /// Every tag of a repository, through `tags/list` (paged by `Link` headers).
    pub async fn tags(&self, repo: &RepositoryName) -> Result<Vec<Tag>, RegistryError> {
        let scope = pull_scope(repo);
        let mut tags = Vec::new();
        let mut next = Some(format!("/v2/{repo}/tags/list?n=1000"));
        let what = repo.to_string();
        while let Some(path_and_query) = next.take() {
            let url = self
                .base
                .join(&path_and_query)
                .map_err(|e| RegistryError::Protocol {
                    op: "list tags of",
                    target: what.clone(),
                    reason: format!("bad Link {path_and_query:?}: {e}"),
                })?;
            let response = self
                .send("list tags of", &what, &scope, &|| {
                    self.http.get(url.clone())
                })
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    op: "list tags of",
                    target: what,
                });
            }
            if !response.status().is_success() {
                return Err(status_error("list tags of", &what, response).await);
            }
            next = next_link(response.headers());
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = json_body("list tags of", &what, response).await?;
            for t in page.tags.unwrap_or_default() {
                match t.parse() {
                    Ok(t) => tags.push(t),
                    Err(e) => {
                        tracing::warn!(repository = %repo, error = %e, "skipping invalid tag")
                    }
                }
            }
        }
        Ok(tags)
    }

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
                    reason: e.to_string(),
                }
            })?;
        Ok(Some(parsed.manifests))
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

fn pull_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull,push")
}

fn accept_manifests() -> String {
    ALL_MANIFEST_TYPES.join(", ")
}

fn sensitive(value: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

fn bearer(token: &Secret) -> HeaderValue {
    sensitive(&format!("Bearer {}", token.expose()))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        Some(
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned(),
        )
    })
}

async fn json_body<T: serde::de::DeserializeOwned>(
    op: &'static str,
    target: &str,
    response: reqwest::Response,
) -> Result<T, RegistryError> {
    let bytes = response.bytes().await.map_err(|e| RegistryError::Connect {
        op,
        target: target.into(),
        source: e.without_url(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
        op,
        target: target.into(),
        reason: format!("unparsable JSON: {e}"),
    })
}

async fn status_error(
    op: &'static str,
    target: &str,
    response: reqwest::Response,
) -> RegistryError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok());
    let body = response
        .bytes()
        .await
        .map(|b| {
            String::from_utf8_lossy(&b[..b.len().min(300)])
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    if status == 404 {
        return RegistryError::NotFound {
            op,
            target: target.into(),
        };
    }
    RegistryError::Status {
        op,
        target: target.into(),
        status,
        body,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_urls() {
        assert_eq!(
            parse_registry_url("127.0.0.1:5000").unwrap().as_str(),
            "https://127.0.0.1:5000/"
        );
        assert_eq!(
            parse_registry_url("http://localhost:5000")
                .unwrap()
                .scheme(),
            "http"
        );
        assert!(parse_registry_url("ftp://x").is_err());
    }

    #[test]
    fn finds_next_link() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("</v2/_catalog?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

//! Sending one request to a registry: authentication (a 401 answered with a token or
//! fresh credentials, then the request sent again), the retry policy, and the mapping of
//! an unexpected status to a [`RegistryError`]; with the header helpers the calls share.

use std::sync::atomic::Ordering;

use backon::Retryable;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use url::Url;

use super::auth::{parse_challenge, Challenge, Credentials, Secret};
use super::{RegistryClient, RegistryError};
use crate::oci::names::RepositoryName;

/// How a request is built, again for each attempt.
pub(super) type Build<'a> = &'a (dyn Fn() -> reqwest::RequestBuilder + Send + Sync);

/// The object of a request as messages name it: `repo@sha256:…` or `repo:tag`.
pub(super) fn target(repo: &RepositoryName, reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    }
}

/// The token scope for reading a repository.
pub(super) fn pull_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull")
}

/// The token scope for writing a repository.
pub(super) fn push_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull,push")
}

impl RegistryClient {
    /// Checks that the registry speaks the distribution API and accepts the credentials.
    /// The first contact with a registry gets a short retry budget (about two seconds),
    /// so a wrong or unreachable address fails at once with one clear error instead of
    /// after the full budget that later requests keep for a registry known to answer.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.url_for("/v2/");
        let client = self.clone().with_retry(self.retry.first_contact());
        let response = client
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

    /// Sends one request with auth (answering one challenge), without retries.
    async fn send_once(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: Build<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_authenticated(op, target, scope, build, true)
            .await
    }

    /// Sends with auth; `resendable` is false for a streamed body, which cannot be sent
    /// a second time after a challenge (the caller restarts the upload instead).
    pub(super) async fn send_authenticated(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: Build<'_>,
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

    /// Asks a Bearer challenge's token endpoint for a token for `scope`.
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
    pub(super) async fn attempt(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: Build<'_>,
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
    pub(super) async fn with_retries<T, F, Fut>(
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
                // The whole chain: an error's own text names only its step and object,
                // and the cause (connection reset, digest mismatch) is what explains a retry.
                tracing::warn!(error = %crate::error::error_chain(e), delay_ms = delay.as_millis() as u64, "retrying registry request");
            })
            .await
    }

    /// Sends a request with retries on transient failures; returns the response of any
    /// status that is not an auth failure, 429 or 5xx.
    pub(super) async fn send(
        &self,
        op: &'static str,
        target: &str,
        scope: &str,
        build: Build<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        self.with_retries(|| self.attempt(op, target, scope, build), |_| false)
            .await
    }
}

/// A header value marked sensitive, so that it is never printed.
fn sensitive(value: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// The `Authorization: Bearer` value of a token.
fn bearer(token: &Secret) -> HeaderValue {
    sensitive(&format!("Bearer {}", token.expose()))
}

/// A header as text, if it is present and readable.
pub(super) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `rel="next"` target of a `Link` header.
pub(super) fn next_link(headers: &HeaderMap) -> Option<String> {
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

/// Reads a response body as JSON.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
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

/// The error for an unexpected answer: `NotFound` for a 404, else the status with the
/// start of the body (the registry's own explanation) and any `Retry-After`.
pub(super) async fn status_error(
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
    fn finds_next_link() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("</v2/_catalog?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
    }
}

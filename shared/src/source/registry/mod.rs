//! The OCI registry client. This folder owns every HTTP request to a registry's
//! distribution API: sending it with auth and retries, pulling manifests and blobs,
//! pushing them, enumerating repositories and tags, and the [`RegistryError`] of each
//! failure. It may use `crate::oci` (digests, names, manifests), `crate::stream` (byte
//! streams), `crate::failure` (failure kinds) and `crate::error` (the root helper that
//! prints error chains); never `crate::store` or `crate::copy`.
//!
//! A client for the OCI distribution API: manifests by digest as exact bytes, streamed
//! blobs, pushes, enumeration, with auth and retries.
//!
//! [`auth_files`] finds the credentials people already have (docker's and podman's files,
//! credential helpers).
//!
//! Written on `reqwest` rather than `oci-client` because a backup needs what that crate
//! does not offer together: `_catalog` enumeration, the raw `Accept`/`Content-Type` of
//! every manifest kind (schema 1 and artifacts included) kept byte-exact, request-level
//! retries with `Retry-After`, streaming pushes from a store (one PATCH per blob, never
//! buffered whole), and credentials that an ECR token source refreshes on a 401.
//!
//! Redirects (ECR answers blob GETs with a 307 to presigned S3) are followed by reqwest,
//! which drops `Authorization` when the host changes; errors are stripped of URLs so a
//! presigned signature never reaches a log.
//!
//! The files: this one holds the client, its settings and counters; `transport` sends a
//! request (auth challenges, retries, status to error); `pull`, `push` and `catalog` are
//! the API calls; `auth` holds credentials and challenges; `error` the errors.

mod auth;
pub mod auth_files;
mod catalog;
mod delete;
mod error;
mod pull;
mod push;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::ExponentialBuilder;
use url::Url;

pub use auth::{
    parse_challenge, Challenge, CredentialSource, Credentials, Secret, StaticCredentials,
};
pub use delete::Deleted;
pub use error::RegistryError;
pub use pull::{FetchedManifest, ManifestHead};

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
    /// The budget of a first contact ([`RegistryClient::ping`]): at most three retries,
    /// none waiting more than a second.
    pub fn first_contact(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries.min(3),
            min_delay: self.min_delay.min(Duration::from_millis(200)),
            max_delay: self.max_delay.min(Duration::from_secs(1)),
        }
    }

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

    /// The retry policy of this client's requests.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The registry's URL with `path` and no query.
    fn url_for(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(None);
        url
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
}

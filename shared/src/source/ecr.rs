//! Amazon ECR's control plane: repositories and images through the API (untagged images
//! included, which a registry's `tags/list` cannot show), registry login tokens, and
//! creating repositories on restore.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ecr::error::DisplayErrorContext;
use aws_sdk_ecr::types::ImageStatus;
use aws_sdk_ecr::Client;
use base64::Engine;
use tokio::sync::Mutex;

use crate::metering::{CountRequests, RequestCounter, RequestCounts};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::source::image::SourceImage;
use crate::source::registry::{CredentialSource, Credentials, RegistryError};

/// What went wrong in an ECR API call; names the call and the repository.
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// The call failed after the SDK's retries.
    #[error("ECR {op} {target}: {message}")]
    Call {
        /// The API operation.
        op: &'static str,
        /// The repository or registry.
        target: String,
        /// The service's error.
        message: String,
        /// The service's error code, e.g. `RepositoryNotFoundException`.
        code: Option<String>,
    },
    /// The API returned data this tool cannot use.
    #[error("ECR {op} {target}: {reason}")]
    Invalid {
        /// The API operation.
        op: &'static str,
        /// The repository or registry.
        target: String,
        /// What was wrong.
        reason: String,
    },
}

impl EcrError {
    /// True for a repository or image that does not exist (a permanent condition).
    pub fn is_not_found(&self) -> bool {
        matches!(self, EcrError::Call { code: Some(c), .. }
            if c == "RepositoryNotFoundException" || c == "ImageNotFoundException")
    }
}

pub(crate) fn call_error<E>(
    op: &'static str,
    target: &str,
    err: aws_sdk_ecr::error::SdkError<E>,
) -> EcrError
where
    E: std::error::Error + aws_sdk_ecr::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    EcrError::Call {
        op,
        target: target.into(),
        code: err
            .as_service_error()
            .and_then(|e| e.code())
            .map(str::to_owned),
        message: DisplayErrorContext(&err).to_string(),
    }
}

/// What ECR's API says of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcrImageState {
    /// Listed and pullable.
    Active,
    /// In the archive storage class: listed, but not pullable until restored.
    Archived,
    /// Not there (the image or its repository was deleted).
    Absent,
}

/// An ECR registry `<account>.dkr.ecr.<region>.amazonaws.com`, parsed from its host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrRegistry {
    /// The account id (registry id).
    pub account: String,
    /// The region.
    pub region: String,
}

impl EcrRegistry {
    /// Recognises an ECR host name (`host[:port]`, with or without a scheme).
    pub fn from_host(text: &str) -> Option<EcrRegistry> {
        let host = text.split("://").last()?.split(['/', ':']).next()?;
        let mut parts = host.split('.');
        let account = parts.next()?;
        if parts.next()? != "dkr" || parts.next()? != "ecr" {
            return None;
        }
        let region = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        let amazon = rest.first() == Some(&"amazonaws") || rest.first() == Some(&"on");
        (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && amazon).then(|| {
            EcrRegistry {
                account: account.into(),
                region: region.into(),
            }
        })
    }
}

/// The ECR API, for one registry (account).
#[derive(Debug, Clone)]
pub struct EcrApi {
    client: Client,
    registry_id: Option<String>,
    requests: Arc<RequestCounter>,
}

impl EcrApi {
    /// A client from the standard AWS settings, for `registry_id` (default: the caller's).
    pub async fn from_env(registry_id: Option<String>, region: Option<String>) -> EcrApi {
        let config = crate::aws::sdk_config().await;
        let mut builder = aws_sdk_ecr::config::Builder::from(&config);
        if let Some(region) = region {
            builder = builder.region(aws_sdk_ecr::config::Region::new(region));
        }
        EcrApi::new(Client::from_conf(builder.build()), registry_id)
    }

    /// Wraps an existing client, counting its requests.
    pub fn new(client: Client, registry_id: Option<String>) -> EcrApi {
        let requests = RequestCounter::shared();
        let config = client
            .config()
            .to_builder()
            .interceptor(CountRequests::new("ECR", requests.clone()))
            .build();
        EcrApi {
            client: Client::from_conf(config),
            registry_id,
            requests,
        }
    }

    /// ECR API requests sent so far, by operation (for the cost figures of a run).
    pub fn requests(&self) -> RequestCounts {
        self.requests.snapshot()
    }

    /// The SDK client, for the settings calls (`source/ecr_settings.rs`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The registry (account) id the calls name, when one was given.
    pub fn registry_id(&self) -> Option<&str> {
        self.registry_id.as_deref()
    }

    pub(crate) fn registry(&self) -> String {
        self.registry_id
            .clone()
            .unwrap_or_else(|| "(default registry)".into())
    }

    /// Every repository (`DescribeRepositories`, paginated).
    pub async fn repositories(&self) -> Result<Vec<RepositoryName>, EcrError> {
        let mut pages = self
            .client
            .describe_repositories()
            .set_registry_id(self.registry_id.clone())
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| call_error("DescribeRepositories", &self.registry(), e))?;
            for repo in page.repositories() {
                let Some(name) = repo.repository_name() else {
                    continue;
                };
                match name.parse() {
                    Ok(n) => out.push(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping repository with an invalid name")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every image of a repository (`DescribeImages`, paginated), untagged ones included.
    /// Archived images are listed with `archived: true`: they cannot be pulled until restored.
    pub async fn images(&self, repo: &RepositoryName) -> Result<Vec<SourceImage>, EcrError> {
        let mut pages = self
            .client
            .describe_images()
            .set_registry_id(self.registry_id.clone())
            .repository_name(repo.as_str())
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| call_error("DescribeImages", repo.as_str(), e))?;
            for image in page.image_details() {
                let Some(digest) = image.image_digest() else {
                    continue;
                };
                let digest: Digest =
                    digest
                        .parse()
                        .map_err(|e: crate::oci::digest::DigestError| EcrError::Invalid {
                            op: "DescribeImages",
                            target: repo.to_string(),
                            reason: e.to_string(),
                        })?;
                let mut tags = Vec::new();
                for t in image.image_tags() {
                    match t.parse() {
                        Ok(t) => tags.push(t),
                        Err(e) => {
                            tracing::warn!(repository = %repo, error = %e, "skipping invalid tag")
                        }
                    }
                }
                out.push(SourceImage {
                    repository: repo.clone(),
                    digest,
                    tags,
                    media_type: image.image_manifest_media_type().map(str::to_owned),
                    archived: matches!(image.image_status(), Some(ImageStatus::Archived)),
                });
            }
        }
        Ok(out)
    }

    /// What ECR's API says of one image: used to tell an image deleted since it was
    /// listed from one archived meanwhile, or from a data plane that fails to serve it.
    pub async fn image_state(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<EcrImageState, EcrError> {
        let result = self
            .client
            .describe_images()
            .set_registry_id(self.registry_id.clone())
            .repository_name(repo.as_str())
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_digest(digest.to_string())
                    .build(),
            )
            .send()
            .await;
        let target = format!("{repo}@{digest}");
        match result {
            Ok(out) => Ok(match out.image_details().first() {
                None => EcrImageState::Absent,
                Some(d) if matches!(d.image_status(), Some(ImageStatus::Archived)) => {
                    EcrImageState::Archived
                }
                Some(_) => EcrImageState::Active,
            }),
            Err(e) => {
                let e = call_error("DescribeImages", &target, e);
                if e.is_not_found() {
                    Ok(EcrImageState::Absent)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a repository; false if it already existed.
    pub async fn create_repository(&self, repo: &RepositoryName) -> Result<bool, EcrError> {
        match self
            .client
            .create_repository()
            .set_registry_id(self.registry_id.clone())
            .repository_name(repo.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_already_exists_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(call_error("CreateRepository", repo.as_str(), e)),
        }
    }

    /// Deletes images of a repository by digest (`BatchDeleteImage`); returns how many
    /// ECR deleted. An image already gone counts as deleted.
    pub async fn delete_images(
        &self,
        repo: &RepositoryName,
        digests: &[Digest],
    ) -> Result<u64, EcrError> {
        let mut deleted = 0;
        // BatchDeleteImage takes at most 100 image ids.
        for chunk in digests.chunks(100) {
            let ids = chunk
                .iter()
                .map(|d| {
                    aws_sdk_ecr::types::ImageIdentifier::builder()
                        .image_digest(d.to_string())
                        .build()
                })
                .collect();
            let out = self
                .client
                .batch_delete_image()
                .set_registry_id(self.registry_id.clone())
                .repository_name(repo.as_str())
                .set_image_ids(Some(ids))
                .send()
                .await
                .map_err(|e| call_error("BatchDeleteImage", repo.as_str(), e))?;
            deleted += out.image_ids().len() as u64;
            for failure in out.failures() {
                let gone = matches!(
                    failure.failure_code(),
                    Some(aws_sdk_ecr::types::ImageFailureCode::ImageNotFound)
                );
                if gone {
                    deleted += 1;
                } else {
                    return Err(EcrError::Invalid {
                        op: "BatchDeleteImage",
                        target: repo.to_string(),
                        reason: failure.failure_reason().unwrap_or("refused").to_owned(),
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes an empty repository (`DeleteRepository` without `force`); false if it did
    /// not exist.
    pub async fn delete_repository(&self, repo: &RepositoryName) -> Result<bool, EcrError> {
        match self
            .client
            .delete_repository()
            .set_registry_id(self.registry_id.clone())
            .repository_name(repo.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(call_error("DeleteRepository", repo.as_str(), e)),
        }
    }

    /// The registry's data-plane URL (`https://<account>.dkr.ecr.<region>.amazonaws.com`).
    pub async fn proxy_endpoint(&self) -> Result<String, EcrError> {
        let out = quietly(self.client.get_authorization_token().send())
            .await
            .map_err(|e| call_error("GetAuthorizationToken", &self.registry(), e))?;
        out.authorization_data()
            .first()
            .and_then(|d| d.proxy_endpoint())
            .map(str::to_owned)
            .ok_or_else(|| EcrError::Invalid {
                op: "GetAuthorizationToken",
                target: self.registry(),
                reason: "no proxy endpoint returned".into(),
            })
    }

    /// A registry login from `GetAuthorizationToken`, and how long it stays valid.
    async fn login(&self) -> Result<(Credentials, Duration), EcrError> {
        let out = quietly(self.client.get_authorization_token().send())
            .await
            .map_err(|e| call_error("GetAuthorizationToken", &self.registry(), e))?;
        let invalid = |reason: &str| EcrError::Invalid {
            op: "GetAuthorizationToken",
            target: self.registry(),
            reason: reason.into(),
        };
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| invalid("no authorization data returned"))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| invalid("no token returned"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| invalid("the token is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid("the token is not text"))?;
        let credentials = Credentials::from_user_password(&decoded)
            .ok_or_else(|| invalid("the token is not user:password"))?;
        // Tokens last 12 hours. A past expiry (local test servers report 2015) is taken as
        // "unknown", and the token is then refreshed on the registry's first 401 instead.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let lifetime = data
            .expires_at()
            .map(|t| t.secs() - now)
            .filter(|&s| s > 0)
            .map_or(Duration::from_secs(12 * 3600), |s| {
                Duration::from_secs(s as u64)
            });
        Ok((credentials, lifetime))
    }
}

/// Runs a `GetAuthorizationToken` call with tracing silenced. At trace level the SDK logs
/// whole response bodies and outputs, and this one holds a registry password that the ECR
/// model does not mark sensitive, so the SDK would print it.
async fn quietly<F: std::future::Future>(call: F) -> F::Output {
    use tracing::instrument::WithSubscriber;
    call.with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await
}

/// Registry credentials from ECR tokens, fetched on first use and again before they expire.
#[derive(Debug)]
pub struct EcrCredentials {
    api: EcrApi,
    cached: Mutex<Option<(Credentials, Instant)>>,
}

/// Refresh this long before the token's expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);

impl EcrCredentials {
    /// Credentials for the registry of `api`.
    pub fn new(api: EcrApi) -> EcrCredentials {
        EcrCredentials {
            api,
            cached: Mutex::new(None),
        }
    }
}

#[async_trait]
impl CredentialSource for EcrCredentials {
    async fn credentials(&self, refresh: bool) -> Result<Credentials, RegistryError> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, refresh_at)) = cached.as_ref() {
            if !refresh && Instant::now() < *refresh_at {
                return Ok(credentials.clone());
            }
        }
        let (credentials, lifetime) =
            self.api
                .login()
                .await
                .map_err(|e| RegistryError::Credentials {
                    message: e.to_string(),
                })?;
        tracing::debug!(
            valid_for_seconds = lifetime.as_secs(),
            "fetched an ECR registry token"
        );
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *cached = Some((credentials.clone(), refresh_at));
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ecr_hosts() {
        assert_eq!(
            EcrRegistry::from_host("123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            Some(EcrRegistry {
                account: "123456789012".into(),
                region: "us-east-1".into()
            })
        );
        assert!(
            EcrRegistry::from_host("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com.cn/")
                .is_some()
        );
        assert!(EcrRegistry::from_host("127.0.0.1:5000").is_none());
        assert!(EcrRegistry::from_host("12.dkr.ecr.x.amazonaws.com").is_none());
        assert!(EcrRegistry::from_host("ghcr.io").is_none());
    }
}

//! Where images come from, and where restores go: the OCI [`registry`] client (transport,
//! authentication, pull, push, enumeration), the [`ecr`] control plane (its API and login
//! tokens), and [`Source`], which enumerates either into [`SourceImage`]s.
//!
//! Owns: every request to a registry or to the ECR API, and the [`FailureKind`] of each
//! failure, decided where the request is made. May use: `oci`, `stream`, `failure`.
//!
//! [`FailureKind`]: crate::failure::FailureKind

pub mod ecr;
pub mod ecr_settings;
pub mod image;
pub mod registry;

pub use image::SourceImage;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::oci::digest::Digest;
use crate::oci::names::{RepositoryName, Tag};
use crate::source::ecr::{EcrApi, EcrCredentials, EcrError, EcrRegistry};
use crate::source::registry::{
    parse_registry_url, CredentialSource, Credentials, RegistryClient, RegistryError,
    StaticCredentials,
};

/// Manifest HEADs in flight at once while resolving tags of a plain registry.
const TAG_RESOLVE_CONCURRENCY: usize = 8;

/// Enumeration failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The registry API failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The ECR API failed.
    #[error(transparent)]
    Ecr(#[from] EcrError),
}

/// A source registry, with its data-plane client and, for ECR, its API.
#[derive(Debug, Clone)]
pub struct Source {
    name: String,
    registry: RegistryClient,
    ecr: Option<EcrApi>,
}

impl Source {
    /// Connects to `spec` (`host[:port]` or a URL). An ECR host
    /// (`<account>.dkr.ecr.<region>.amazonaws.com`) is enumerated through the ECR API and
    /// logged in with ECR tokens; `endpoint` overrides where its data plane is reached.
    pub async fn connect(
        spec: &str,
        endpoint: Option<&str>,
        credentials: Option<Credentials>,
    ) -> Result<Source, SourceError> {
        let url = parse_registry_url(endpoint.unwrap_or(spec))?;
        let name = spec
            .split("://")
            .last()
            .unwrap_or(spec)
            .trim_end_matches('/')
            .to_owned();
        if let Some(ecr) = EcrRegistry::from_host(spec) {
            let api = EcrApi::from_env(Some(ecr.account.clone()), Some(ecr.region.clone())).await;
            let creds: Arc<dyn CredentialSource> = match credentials {
                Some(c) => Arc::new(StaticCredentials(c)),
                None => Arc::new(EcrCredentials::new(api.clone())),
            };
            let registry = RegistryClient::new(url, creds)?;
            return Ok(Source {
                name,
                registry,
                ecr: Some(api),
            });
        }
        let creds = credentials.unwrap_or(Credentials::Anonymous);
        let registry = RegistryClient::new(url, Arc::new(StaticCredentials(creds)))?;
        Ok(Source {
            name,
            registry,
            ecr: None,
        })
    }

    /// The ECR registry of the account and region the AWS configuration names (the
    /// Lambdas' own), its data plane reached at `endpoint` when given.
    pub async fn own_ecr(endpoint: Option<&str>) -> Result<Source, SourceError> {
        let api = EcrApi::from_env(None, None).await;
        let host = api.proxy_endpoint().await?;
        Source::connect(&host, endpoint, None).await
    }

    /// A source from parts already built (tests, Lambdas).
    pub fn from_parts(name: String, registry: RegistryClient, ecr: Option<EcrApi>) -> Source {
        Source {
            name,
            registry,
            ecr,
        }
    }

    /// The registry's name as the user gave it, recorded in the store.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data-plane client.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The ECR API, when the source is ECR.
    pub fn ecr(&self) -> Option<&EcrApi> {
        self.ecr.as_ref()
    }

    /// Every repository.
    pub async fn repositories(&self) -> Result<Vec<RepositoryName>, SourceError> {
        match &self.ecr {
            Some(api) => Ok(api.repositories().await?),
            None => Ok(self.registry.catalog().await?),
        }
    }

    /// Every image of a repository, with its tags.
    pub async fn images(&self, repo: &RepositoryName) -> Result<Vec<SourceImage>, SourceError> {
        if let Some(api) = &self.ecr {
            return Ok(api.images(repo).await?);
        }
        let tags = self.registry.tags(repo).await?;
        let heads: Vec<(Tag, Option<crate::source::registry::ManifestHead>)> =
            futures::stream::iter(tags)
                .map(|tag| async move {
                    let head = self.registry.head_manifest(repo, tag.as_str()).await?;
                    Ok::<_, RegistryError>((tag, head))
                })
                .buffered(TAG_RESOLVE_CONCURRENCY)
                .try_collect()
                .await?;
        let mut by_digest: BTreeMap<Digest, SourceImage> = BTreeMap::new();
        for (tag, head) in heads {
            // A tag deleted between listing and HEAD is simply gone.
            let Some(head) = head else { continue };
            by_digest
                .entry(head.digest.clone())
                .or_insert_with(|| SourceImage {
                    repository: repo.clone(),
                    digest: head.digest,
                    tags: Vec::new(),
                    media_type: head.media_type,
                    archived: false,
                })
                .tags
                .push(tag);
        }
        Ok(by_digest.into_values().collect())
    }
}

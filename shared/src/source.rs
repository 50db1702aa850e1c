//! Where images come from: any OCI registry (enumerated through `_catalog` and
//! `tags/list`) or Amazon ECR (enumerated through its API, untagged images included).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::ecr::{EcrApi, EcrCredentials, EcrError, EcrRegistry};
use crate::names::{RepositoryName, Tag};
use crate::registry::{
    parse_registry_url, CredentialSource, Credentials, RegistryClient, RegistryError,
    StaticCredentials,
};

/// Manifest HEADs in flight at once while resolving tags of a plain registry.
const TAG_RESOLVE_CONCURRENCY: usize = 8;

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
        let heads: Vec<(Tag, Option<crate::registry::ManifestHead>)> = futures::stream::iter(tags)
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

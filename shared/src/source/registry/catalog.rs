//! Enumerating a registry: repositories through `_catalog` and the tags of one through
//! `tags/list`, each followed page by page through `Link` headers.

use reqwest::StatusCode;

use super::transport::{json_body, next_link, pull_scope, status_error};
use super::{RegistryClient, RegistryError};
use crate::oci::names::{RepositoryName, Tag};

impl RegistryClient {
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
}

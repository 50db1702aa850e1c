//! Collecting an ECR registry's settings into the store, for the CLI's runs and the
//! fan-out alike: per repository one set of ECR calls
//! ([`CALLS_PER_REPOSITORY`](crate::source::ecr_settings::CALLS_PER_REPOSITORY)) and one
//! listing of its settings records, and a new record only when the document's digest
//! differs from the latest one's. Settings that cannot be read are a warning naming the
//! repository (or registry part), never a failure of the image backup, and never a
//! record: a missing record keeps the last one in force, where an empty one would read
//! as "the policy was removed".

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::error::error_chain;
use crate::oci::names::RepositoryName;
use crate::source::ecr::EcrApi;
use crate::source::ecr_settings::document_bytes;
use crate::store::settings::{SettingsSubject, SettingsWrite};
use crate::store::Store;

/// Repositories whose settings are read at once.
const SETTINGS_CONCURRENCY: usize = 4;

/// What one collection did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SettingsReport {
    /// Subjects (`repository team/app`, `registry policy`) whose settings changed, or
    /// were seen for the first time, and were recorded.
    pub written: Vec<String>,
    /// Subjects whose settings were as last recorded (nothing written).
    pub unchanged: u64,
    /// Subjects whose settings could not be read or recorded, with why.
    pub warnings: Vec<String>,
}

impl SettingsReport {
    fn add(&mut self, subject: &SettingsSubject, result: Result<Option<SettingsWrite>, String>) {
        match result {
            Ok(Some(SettingsWrite::Written)) => self.written.push(subject.to_string()),
            Ok(Some(SettingsWrite::Unchanged)) => self.unchanged += 1,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(subject = %subject, error = %error, "settings not backed up");
                self.warnings
                    .push(format!("settings of {subject} not backed up: {error}"));
            }
        }
    }
}

/// Records the settings of `repositories` (and, with `registry`, of the registry itself)
/// as observed at `observed_at`.
pub async fn collect(
    api: &EcrApi,
    store: &Store,
    repositories: impl IntoIterator<Item = RepositoryName>,
    registry: bool,
    observed_at: DateTime<Utc>,
) -> SettingsReport {
    let mut report = SettingsReport::default();
    let results: Vec<(SettingsSubject, Result<Option<SettingsWrite>, String>)> =
        futures::stream::iter(repositories)
            .map(|repo| async move {
                let subject = SettingsSubject::Repository(repo.clone());
                let result = async {
                    // A repository deleted since it was listed has no settings to keep.
                    let Some(settings) = api
                        .repository_settings(&repo)
                        .await
                        .map_err(|e| error_chain(&e))?
                    else {
                        return Ok(None);
                    };
                    store
                        .put_settings(&subject, document_bytes(&settings), observed_at)
                        .await
                        .map(Some)
                        .map_err(|e| error_chain(&e))
                }
                .await;
                (subject, result)
            })
            .buffer_unordered(SETTINGS_CONCURRENCY)
            .collect()
            .await;
    for (subject, result) in results {
        report.add(&subject, result);
    }
    if registry {
        for part in crate::store::settings::REGISTRY_PARTS {
            let subject = SettingsSubject::Registry(part);
            let document = match *part {
                "policy" => api.registry_policy().await.map(|d| document_bytes(&d)),
                "replication" => api.registry_replication().await.map(|d| document_bytes(&d)),
                _ => api.registry_scanning().await.map(|d| document_bytes(&d)),
            };
            let result = match document {
                Ok(bytes) => store
                    .put_settings(&subject, bytes, observed_at)
                    .await
                    .map(Some)
                    .map_err(|e| error_chain(&e)),
                Err(e) => Err(error_chain(&e)),
            };
            report.add(&subject, result);
        }
    }
    report.written.sort();
    report.warnings.sort();
    report
}

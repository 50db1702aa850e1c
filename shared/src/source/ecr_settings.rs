//! What makes an ECR registry a registry besides its images: each repository's policy,
//! lifecycle policy, tag mutability, scanning, encryption and resource tags, and the
//! registry's policy, replication and scanning configuration. Read through ECR's API for
//! a backup, written back on a restore.
//!
//! The documents here are what the store keeps (as blobs, `docs/format.md`, "Settings
//! records"): plain JSON in ECR's own field names, serialized in one fixed order so that
//! the same settings always give the same bytes and digest.

use std::collections::BTreeMap;

use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType, RegistryScanningRule,
    ReplicationConfiguration, ReplicationDestination, ReplicationRule, RepositoryFilter,
    RepositoryFilterType, ScanFrequency, ScanType, ScanningRepositoryFilter,
    ScanningRepositoryFilterType,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::oci::names::RepositoryName;
use crate::source::ecr::{call_error, EcrApi, EcrError};

/// Version of the settings documents this code writes.
pub const SETTINGS_VERSION: u32 = 1;

/// A filter as ECR spells it (`{"filter": "team/*", "filterType": "WILDCARD"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The pattern or prefix.
    pub filter: String,
    /// `WILDCARD`, `PREFIX_MATCH`, …
    #[serde(rename = "filterType")]
    pub filter_type: String,
}

/// One repository's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositorySettings {
    /// Document format version.
    pub version: u32,
    /// The repository.
    pub repository: RepositoryName,
    /// The account (registry) it was in.
    #[serde(rename = "registryId")]
    pub registry_id: String,
    /// Its ARN.
    #[serde(rename = "repositoryArn")]
    pub repository_arn: String,
    /// When it was created (a restore cannot set it; shown by `ls --settings`).
    #[serde(rename = "createdAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// `MUTABLE`, `IMMUTABLE`, `MUTABLE_WITH_EXCLUSION`, `IMMUTABLE_WITH_EXCLUSION`.
    #[serde(rename = "imageTagMutability")]
    pub image_tag_mutability: String,
    /// The tags the mutability does not apply to (the `_WITH_EXCLUSION` kinds).
    #[serde(rename = "imageTagMutabilityExclusionFilters", default)]
    pub image_tag_mutability_exclusion_filters: Vec<Filter>,
    /// Basic scanning on push.
    #[serde(rename = "scanOnPush")]
    pub scan_on_push: bool,
    /// `AES256`, `KMS`, `KMS_DSSE`.
    #[serde(rename = "encryptionType")]
    pub encryption_type: String,
    /// The KMS key's ARN, for the KMS kinds.
    #[serde(rename = "kmsKey", default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// Resource tags, key → value.
    #[serde(rename = "resourceTags", default)]
    pub resource_tags: BTreeMap<String, String>,
    /// The repository policy's text, exactly as ECR returned it; `null` when none.
    #[serde(rename = "repositoryPolicy", default)]
    pub repository_policy: Option<String>,
    /// The lifecycle policy's text; `null` when none.
    #[serde(rename = "lifecyclePolicy", default)]
    pub lifecycle_policy: Option<String>,
}

/// The registry's policy (`registry-settings/policy/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryPolicy {
    /// Document format version.
    pub version: u32,
    /// The account.
    #[serde(rename = "registryId")]
    pub registry_id: String,
    /// The policy's text; `null` when the registry has none.
    #[serde(rename = "policyText", default)]
    pub policy_text: Option<String>,
}

/// The registry's replication configuration (`registry-settings/replication/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryReplication {
    /// Document format version.
    pub version: u32,
    /// The account.
    #[serde(rename = "registryId")]
    pub registry_id: String,
    /// The rules, in ECR's order; empty when none.
    #[serde(default)]
    pub rules: Vec<ReplicationRuleSettings>,
}

/// One replication rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationRuleSettings {
    /// Where images are replicated.
    pub destinations: Vec<Destination>,
    /// Which repositories (all when empty).
    #[serde(rename = "repositoryFilters", default)]
    pub repository_filters: Vec<Filter>,
}

/// A replication destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Its region.
    pub region: String,
    /// Its account.
    #[serde(rename = "registryId")]
    pub registry_id: String,
}

/// The registry's scanning configuration (`registry-settings/scanning/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryScanning {
    /// Document format version.
    pub version: u32,
    /// The account.
    #[serde(rename = "registryId")]
    pub registry_id: String,
    /// `BASIC` or `ENHANCED`.
    #[serde(rename = "scanType")]
    pub scan_type: String,
    /// The rules; empty when none.
    #[serde(default)]
    pub rules: Vec<ScanningRuleSettings>,
}

/// One registry scanning rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanningRuleSettings {
    /// `SCAN_ON_PUSH`, `CONTINUOUS_SCAN`, `MANUAL`.
    #[serde(rename = "scanFrequency")]
    pub scan_frequency: String,
    /// Which repositories.
    #[serde(rename = "repositoryFilters", default)]
    pub repository_filters: Vec<Filter>,
}

impl RegistryPolicy {
    /// True for a registry without a policy (what a new account has).
    pub fn is_default(&self) -> bool {
        self.policy_text.is_none()
    }
}

impl RegistryReplication {
    /// True for a registry that replicates nothing (what a new account has).
    pub fn is_default(&self) -> bool {
        self.rules.is_empty()
    }
}

impl RegistryScanning {
    /// True for basic scanning without rules (what a new account has).
    pub fn is_default(&self) -> bool {
        self.scan_type == "BASIC" && self.rules.is_empty()
    }
}

/// Serializes a settings document, always to the same bytes for the same settings.
pub fn document_bytes<T: Serialize>(document: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec_pretty(document).expect("settings serialize"))
}

fn to_utc(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// The document of one repository as `DescribeRepositories` shows it, with its tags and
/// policies from the other calls.
pub fn repository_document(
    repo: &RepositoryName,
    described: &aws_sdk_ecr::types::Repository,
    resource_tags: &[aws_sdk_ecr::types::Tag],
    repository_policy: Option<String>,
    lifecycle_policy: Option<String>,
) -> RepositorySettings {
    let encryption = described.encryption_configuration();
    RepositorySettings {
        version: SETTINGS_VERSION,
        repository: repo.clone(),
        registry_id: described.registry_id().unwrap_or_default().to_owned(),
        repository_arn: described.repository_arn().unwrap_or_default().to_owned(),
        created_at: described.created_at().and_then(to_utc),
        image_tag_mutability: described
            .image_tag_mutability()
            .map_or("MUTABLE", |m| m.as_str())
            .to_owned(),
        image_tag_mutability_exclusion_filters: described
            .image_tag_mutability_exclusion_filters()
            .iter()
            .map(|f| Filter {
                filter: f.filter().to_owned(),
                filter_type: f.filter_type().as_str().to_owned(),
            })
            .collect(),
        scan_on_push: described
            .image_scanning_configuration()
            .is_some_and(|s| s.scan_on_push()),
        encryption_type: encryption
            .map_or("AES256", |e| e.encryption_type().as_str())
            .to_owned(),
        kms_key: encryption.and_then(|e| e.kms_key()).map(str::to_owned),
        resource_tags: resource_tags
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
        repository_policy,
        lifecycle_policy,
    }
}

fn replication_document(
    registry_id: String,
    config: Option<&ReplicationConfiguration>,
) -> RegistryReplication {
    RegistryReplication {
        version: SETTINGS_VERSION,
        registry_id,
        rules: config
            .map(|c| c.rules())
            .unwrap_or_default()
            .iter()
            .map(|rule| ReplicationRuleSettings {
                destinations: rule
                    .destinations()
                    .iter()
                    .map(|d| Destination {
                        region: d.region().to_owned(),
                        registry_id: d.registry_id().to_owned(),
                    })
                    .collect(),
                repository_filters: rule
                    .repository_filters()
                    .iter()
                    .map(|f| Filter {
                        filter: f.filter().to_owned(),
                        filter_type: f.filter_type().as_str().to_owned(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn scanning_document(
    registry_id: String,
    config: Option<&aws_sdk_ecr::types::RegistryScanningConfiguration>,
) -> RegistryScanning {
    RegistryScanning {
        version: SETTINGS_VERSION,
        registry_id,
        scan_type: config
            .and_then(|c| c.scan_type())
            .map_or("BASIC", |t| t.as_str())
            .to_owned(),
        rules: config
            .map(|c| c.rules())
            .unwrap_or_default()
            .iter()
            .map(|rule| ScanningRuleSettings {
                scan_frequency: rule.scan_frequency().as_str().to_owned(),
                repository_filters: rule
                    .repository_filters()
                    .iter()
                    .map(|f| Filter {
                        filter: f.filter().to_owned(),
                        filter_type: f.filter_type().as_str().to_owned(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn invalid(op: &'static str, target: &str, reason: impl Into<String>) -> EcrError {
    EcrError::Invalid {
        op,
        target: target.into(),
        reason: reason.into(),
    }
}

/// The ECR API calls one repository's settings cost: `DescribeRepositories`,
/// `GetRepositoryPolicy`, `GetLifecyclePolicy`, `ListTagsForResource`.
pub const CALLS_PER_REPOSITORY: u64 = 4;

impl EcrApi {
    /// One repository's settings (four calls, [`CALLS_PER_REPOSITORY`]); `None` when the
    /// repository does not exist.
    pub async fn repository_settings(
        &self,
        repo: &RepositoryName,
    ) -> Result<Option<RepositorySettings>, EcrError> {
        let client = self.client();
        let described = match client
            .describe_repositories()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_names(repo.as_str())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(call_error("DescribeRepositories", repo.as_str(), e)),
        };
        let Some(described) = described
            .repositories()
            .iter()
            .find(|r| r.repository_name() == Some(repo.as_str()))
            .cloned()
        else {
            return Ok(None);
        };
        let policy = match client
            .get_repository_policy()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_name(repo.as_str())
            .send()
            .await
        {
            Ok(out) => out.policy_text().map(str::to_owned),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(call_error("GetRepositoryPolicy", repo.as_str(), e)),
        };
        let lifecycle = match client
            .get_lifecycle_policy()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_name(repo.as_str())
            .send()
            .await
        {
            Ok(out) => out.lifecycle_policy_text().map(str::to_owned),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(call_error("GetLifecyclePolicy", repo.as_str(), e)),
        };
        let arn = described
            .repository_arn()
            .ok_or_else(|| invalid("DescribeRepositories", repo.as_str(), "no repository ARN"))?;
        let tags = client
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| call_error("ListTagsForResource", repo.as_str(), e))?;
        Ok(Some(repository_document(
            repo,
            &described,
            tags.tags(),
            policy,
            lifecycle,
        )))
    }

    fn account(&self) -> String {
        self.registry_id().unwrap_or_default().to_owned()
    }

    /// The registry's policy (`GetRegistryPolicy`).
    pub async fn registry_policy(&self) -> Result<RegistryPolicy, EcrError> {
        let policy_text = match self.client().get_registry_policy().send().await {
            Ok(out) => out.policy_text().map(str::to_owned),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_registry_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(call_error("GetRegistryPolicy", &self.registry(), e)),
        };
        Ok(RegistryPolicy {
            version: SETTINGS_VERSION,
            registry_id: self.account(),
            policy_text,
        })
    }

    /// The registry's replication configuration (`DescribeRegistry`).
    pub async fn registry_replication(&self) -> Result<RegistryReplication, EcrError> {
        let out = self
            .client()
            .describe_registry()
            .send()
            .await
            .map_err(|e| call_error("DescribeRegistry", &self.registry(), e))?;
        Ok(replication_document(
            out.registry_id()
                .map_or_else(|| self.account(), str::to_owned),
            out.replication_configuration(),
        ))
    }

    /// The registry's scanning configuration (`GetRegistryScanningConfiguration`).
    pub async fn registry_scanning(&self) -> Result<RegistryScanning, EcrError> {
        let out = self
            .client()
            .get_registry_scanning_configuration()
            .send()
            .await
            .map_err(|e| call_error("GetRegistryScanningConfiguration", &self.registry(), e))?;
        Ok(scanning_document(
            out.registry_id()
                .map_or_else(|| self.account(), str::to_owned),
            out.scanning_configuration(),
        ))
    }

    /// Creates a repository with the encryption and resource tags of `settings` (which
    /// only creation can set); false if it already existed.
    pub async fn create_repository_with(
        &self,
        settings: &RepositorySettings,
    ) -> Result<bool, EcrError> {
        let repo = settings.repository.as_str();
        let encryption = EncryptionConfiguration::builder()
            .encryption_type(EncryptionType::from(settings.encryption_type.as_str()))
            .set_kms_key(settings.kms_key.clone())
            .build()
            .map_err(|e| invalid("CreateRepository", repo, e.to_string()))?;
        let mut request = self
            .client()
            .create_repository()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_name(repo)
            .encryption_configuration(encryption);
        for (key, value) in &settings.resource_tags {
            request = request.tags(
                aws_sdk_ecr::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build()
                    .map_err(|e| invalid("CreateRepository", repo, e.to_string()))?,
            );
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_already_exists_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(call_error("CreateRepository", repo, e)),
        }
    }

    /// Sets a repository's tag mutability (`PutImageTagMutability`).
    pub async fn put_tag_mutability(&self, settings: &RepositorySettings) -> Result<(), EcrError> {
        let repo = settings.repository.as_str();
        let mut filters = Vec::new();
        for f in &settings.image_tag_mutability_exclusion_filters {
            filters.push(
                ImageTagMutabilityExclusionFilter::builder()
                    .filter(&f.filter)
                    .filter_type(ImageTagMutabilityExclusionFilterType::from(
                        f.filter_type.as_str(),
                    ))
                    .build()
                    .map_err(|e| invalid("PutImageTagMutability", repo, e.to_string()))?,
            );
        }
        self.client()
            .put_image_tag_mutability()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_name(repo)
            .image_tag_mutability(ImageTagMutability::from(
                settings.image_tag_mutability.as_str(),
            ))
            .set_image_tag_mutability_exclusion_filters((!filters.is_empty()).then_some(filters))
            .send()
            .await
            .map(drop)
            .map_err(|e| call_error("PutImageTagMutability", repo, e))
    }

    /// Sets a repository's policy, or removes it (`SetRepositoryPolicy`,
    /// `DeleteRepositoryPolicy`).
    pub async fn put_repository_policy(
        &self,
        repo: &RepositoryName,
        policy: Option<&str>,
    ) -> Result<(), EcrError> {
        let client = self.client();
        match policy {
            Some(text) => client
                .set_repository_policy()
                .set_registry_id(self.registry_id().map(str::to_owned))
                .repository_name(repo.as_str())
                .policy_text(text)
                .send()
                .await
                .map(drop)
                .map_err(|e| call_error("SetRepositoryPolicy", repo.as_str(), e)),
            None => match client
                .delete_repository_policy()
                .set_registry_id(self.registry_id().map(str::to_owned))
                .repository_name(repo.as_str())
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_repository_policy_not_found_exception()) =>
                {
                    Ok(())
                }
                Err(e) => Err(call_error("DeleteRepositoryPolicy", repo.as_str(), e)),
            },
        }
    }

    /// Sets a repository's lifecycle policy, or removes it (`PutLifecyclePolicy`,
    /// `DeleteLifecyclePolicy`).
    pub async fn put_lifecycle_policy(
        &self,
        repo: &RepositoryName,
        policy: Option<&str>,
    ) -> Result<(), EcrError> {
        let client = self.client();
        match policy {
            Some(text) => client
                .put_lifecycle_policy()
                .set_registry_id(self.registry_id().map(str::to_owned))
                .repository_name(repo.as_str())
                .lifecycle_policy_text(text)
                .send()
                .await
                .map(drop)
                .map_err(|e| call_error("PutLifecyclePolicy", repo.as_str(), e)),
            None => match client
                .delete_lifecycle_policy()
                .set_registry_id(self.registry_id().map(str::to_owned))
                .repository_name(repo.as_str())
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
                {
                    Ok(())
                }
                Err(e) => Err(call_error("DeleteLifecyclePolicy", repo.as_str(), e)),
            },
        }
    }

    /// Sets basic scanning on push (`PutImageScanningConfiguration`).
    pub async fn put_scan_on_push(&self, repo: &RepositoryName, on: bool) -> Result<(), EcrError> {
        self.client()
            .put_image_scanning_configuration()
            .set_registry_id(self.registry_id().map(str::to_owned))
            .repository_name(repo.as_str())
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(on)
                    .build(),
            )
            .send()
            .await
            .map(drop)
            .map_err(|e| call_error("PutImageScanningConfiguration", repo.as_str(), e))
    }

    /// Makes a repository's resource tags exactly `tags` (`TagResource`, `UntagResource`).
    pub async fn put_resource_tags(
        &self,
        repo: &RepositoryName,
        arn: &str,
        tags: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), EcrError> {
        let client = self.client();
        if !tags.is_empty() {
            let mut request = client.tag_resource().resource_arn(arn);
            for (key, value) in tags {
                request = request.tags(
                    aws_sdk_ecr::types::Tag::builder()
                        .key(key)
                        .value(value)
                        .build()
                        .map_err(|e| invalid("TagResource", repo.as_str(), e.to_string()))?,
                );
            }
            request
                .send()
                .await
                .map_err(|e| call_error("TagResource", repo.as_str(), e))?;
        }
        if !remove.is_empty() {
            client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(remove.to_vec()))
                .send()
                .await
                .map_err(|e| call_error("UntagResource", repo.as_str(), e))?;
        }
        Ok(())
    }

    /// Sets the registry's policy, or removes it (`PutRegistryPolicy`,
    /// `DeleteRegistryPolicy`).
    pub async fn put_registry_policy(&self, policy: Option<&str>) -> Result<(), EcrError> {
        let client = self.client();
        match policy {
            Some(text) => client
                .put_registry_policy()
                .policy_text(text)
                .send()
                .await
                .map(drop)
                .map_err(|e| call_error("PutRegistryPolicy", &self.registry(), e)),
            None => match client.delete_registry_policy().send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_registry_policy_not_found_exception()) =>
                {
                    Ok(())
                }
                Err(e) => Err(call_error("DeleteRegistryPolicy", &self.registry(), e)),
            },
        }
    }

    /// Sets the registry's replication rules (`PutReplicationConfiguration`).
    pub async fn put_registry_replication(
        &self,
        settings: &RegistryReplication,
    ) -> Result<(), EcrError> {
        let target = self.registry();
        let bad = |e: aws_smithy_types::error::operation::BuildError| {
            invalid("PutReplicationConfiguration", &target, e.to_string())
        };
        let mut rules = Vec::new();
        for rule in &settings.rules {
            let mut builder = ReplicationRule::builder();
            for d in &rule.destinations {
                builder = builder.destinations(
                    ReplicationDestination::builder()
                        .region(&d.region)
                        .registry_id(&d.registry_id)
                        .build()
                        .map_err(bad)?,
                );
            }
            for f in &rule.repository_filters {
                builder = builder.repository_filters(
                    RepositoryFilter::builder()
                        .filter(&f.filter)
                        .filter_type(RepositoryFilterType::from(f.filter_type.as_str()))
                        .build()
                        .map_err(bad)?,
                );
            }
            rules.push(builder.build().map_err(bad)?);
        }
        let config = ReplicationConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(bad)?;
        self.client()
            .put_replication_configuration()
            .replication_configuration(config)
            .send()
            .await
            .map(drop)
            .map_err(|e| call_error("PutReplicationConfiguration", &self.registry(), e))
    }

    /// Sets the registry's scanning configuration (`PutRegistryScanningConfiguration`).
    pub async fn put_registry_scanning(&self, settings: &RegistryScanning) -> Result<(), EcrError> {
        let target = self.registry();
        let bad = |e: aws_smithy_types::error::operation::BuildError| {
            invalid("PutRegistryScanningConfiguration", &target, e.to_string())
        };
        let mut rules = Vec::new();
        for rule in &settings.rules {
            let mut builder = RegistryScanningRule::builder()
                .scan_frequency(ScanFrequency::from(rule.scan_frequency.as_str()));
            for f in &rule.repository_filters {
                builder = builder.repository_filters(
                    ScanningRepositoryFilter::builder()
                        .filter(&f.filter)
                        .filter_type(ScanningRepositoryFilterType::from(f.filter_type.as_str()))
                        .build()
                        .map_err(bad)?,
                );
            }
            rules.push(builder.build().map_err(bad)?);
        }
        self.client()
            .put_registry_scanning_configuration()
            .scan_type(ScanType::from(settings.scan_type.as_str()))
            .set_rules(Some(rules))
            .send()
            .await
            .map(drop)
            .map_err(|e| call_error("PutRegistryScanningConfiguration", &self.registry(), e))
    }
}

/// KMS keys of a restore's target account, asked about before a repository is created
/// with one (ECR would refuse it only at creation, and a local ECR not at all).
#[derive(Debug, Clone)]
pub struct KmsKeys {
    client: aws_sdk_kms::Client,
}

impl KmsKeys {
    /// A KMS client from the standard AWS settings, in `region`.
    pub async fn from_env(region: Option<String>) -> KmsKeys {
        let config = crate::aws::sdk_config().await;
        let mut builder = aws_sdk_kms::config::Builder::from(&config);
        if let Some(region) = region {
            builder = builder.region(aws_sdk_kms::config::Region::new(region));
        }
        KmsKeys {
            client: aws_sdk_kms::Client::from_conf(builder.build()),
        }
    }

    /// Whether the key exists and is usable (`DescribeKey`: enabled, not pending deletion).
    pub async fn usable(&self, key: &str) -> Result<bool, EcrError> {
        match self.client.describe_key().key_id(key).send().await {
            Ok(out) => Ok(out.key_metadata().is_some_and(|m| m.enabled())),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_not_found_exception() || s.is_invalid_arn_exception()
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(call_error("kms:DescribeKey", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository as ECR's API shapes it, with every setting, becomes one document, and
    /// the same settings always give the same bytes (what "unchanged" is decided on).
    #[test]
    fn a_described_repository_becomes_one_stable_document() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let described = aws_sdk_ecr::types::Repository::builder()
            .repository_arn("arn:aws:ecr:us-east-1:123456789012:repository/team/app")
            .registry_id("123456789012")
            .repository_name("team/app")
            .created_at(aws_smithy_types::DateTime::from_secs(1_764_221_400))
            .image_tag_mutability(ImageTagMutability::ImmutableWithExclusion)
            .image_tag_mutability_exclusion_filters(
                ImageTagMutabilityExclusionFilter::builder()
                    .filter("latest")
                    .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                    .build()
                    .unwrap(),
            )
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(true)
                    .build(),
            )
            .encryption_configuration(
                EncryptionConfiguration::builder()
                    .encryption_type(EncryptionType::Kms)
                    .kms_key("arn:aws:kms:us-east-1:123456789012:key/k1")
                    .build()
                    .unwrap(),
            )
            .build();
        let tags = [
            aws_sdk_ecr::types::Tag::builder()
                .key("team")
                .value("payments")
                .build()
                .unwrap(),
            aws_sdk_ecr::types::Tag::builder()
                .key("cost-center")
                .value("42")
                .build()
                .unwrap(),
        ];
        let doc = repository_document(
            &repo,
            &described,
            &tags,
            Some("{\"Version\":\"2012-10-17\"}".into()),
            None,
        );
        assert_eq!(doc.image_tag_mutability, "IMMUTABLE_WITH_EXCLUSION");
        assert_eq!(
            doc.image_tag_mutability_exclusion_filters[0].filter,
            "latest"
        );
        assert_eq!(doc.encryption_type, "KMS");
        assert!(doc.scan_on_push);
        assert_eq!(
            doc.created_at.map(|t| t.to_rfc3339()),
            Some("2025-11-27T05:30:00+00:00".into())
        );
        // Tags are sorted by key whatever order ECR lists them in.
        let reversed = [tags[1].clone(), tags[0].clone()];
        let again = repository_document(
            &repo,
            &described,
            &reversed,
            Some("{\"Version\":\"2012-10-17\"}".into()),
            None,
        );
        assert_eq!(document_bytes(&doc), document_bytes(&again));
        let text = String::from_utf8(document_bytes(&doc).to_vec()).unwrap();
        assert!(text.contains("\"lifecyclePolicy\": null"), "{text}");
        let back: RepositorySettings = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }

    /// Replication and scanning rules as ECR's API shapes them.
    #[test]
    fn registry_documents_keep_every_rule() {
        let replication = ReplicationConfiguration::builder()
            .rules(
                ReplicationRule::builder()
                    .destinations(
                        ReplicationDestination::builder()
                            .region("eu-west-1")
                            .registry_id("210987654321")
                            .build()
                            .unwrap(),
                    )
                    .repository_filters(
                        RepositoryFilter::builder()
                            .filter("team")
                            .filter_type(RepositoryFilterType::PrefixMatch)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let doc = replication_document("123456789012".into(), Some(&replication));
        assert_eq!(doc.rules[0].destinations[0].registry_id, "210987654321");
        assert_eq!(
            doc.rules[0].repository_filters[0].filter_type,
            "PREFIX_MATCH"
        );
        assert!(!doc.is_default());
        assert!(replication_document("1".into(), None).is_default());
        let scanning = aws_sdk_ecr::types::RegistryScanningConfiguration::builder()
            .scan_type(ScanType::Enhanced)
            .rules(
                RegistryScanningRule::builder()
                    .scan_frequency(ScanFrequency::ContinuousScan)
                    .repository_filters(
                        ScanningRepositoryFilter::builder()
                            .filter("*")
                            .filter_type(ScanningRepositoryFilterType::Wildcard)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .build();
        let doc = scanning_document("123456789012".into(), Some(&scanning));
        assert_eq!(
            (doc.scan_type.as_str(), doc.rules[0].scan_frequency.as_str()),
            ("ENHANCED", "CONTINUOUS_SCAN")
        );
        assert!(scanning_document("1".into(), None).is_default());
    }
}

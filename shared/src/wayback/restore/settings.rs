//! Restoring repository and registry settings (`restore --settings`), in the order that
//! can neither fail on nor destroy what is restored:
//!
//! 1. before any image: missing repositories are created with their encryption (which
//!    only creation can set; a KMS key is checked first) and their resource tags;
//! 2. the images are pushed;
//! 3. then, per repository: tag mutability (so `IMMUTABLE` cannot refuse a restored tag;
//!    held back where an image of the repository failed, so a re-run can still push it),
//!    the repository policy, scanning, and the lifecycle policy last (or never, with
//!    `--no-lifecycle`: a rule such as "expire images pushed more than 30 days ago"
//!    reads a restored image's push time as today's, but one counting images, or
//!    expiring untagged ones, can remove what was just restored);
//! 4. the registry's policy, replication and scanning configuration.
//!
//! A repository (or registry part) that already exists with other settings is never
//! changed silently: each differing field is reported, and changed only with
//! `--overwrite-settings`. `--dry-run` reads everything and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::error_chain;
use crate::oci::names::RepositoryName;
use crate::source::ecr::{EcrApi, EcrError};
use crate::source::ecr_settings::{
    KmsKeys, RegistryPolicy, RegistryReplication, RegistryScanning, RepositorySettings,
    SETTINGS_VERSION,
};
use crate::store::settings::SettingsSubject;
use crate::store::{Store, StoreError};

/// Repositories whose settings are read or applied at once.
const CONCURRENCY: usize = 4;

/// Whether and how a restore restores settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SettingsMode {
    /// Images only (the default).
    #[default]
    Off,
    /// Settings and images (`--settings`).
    WithImages,
    /// Settings only, no image pushed (`--settings-only`).
    Only,
}

/// `--map-account SRC=DST`: account `SRC` is written `DST` in policies, ARNs and
/// replication destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMap {
    from: String,
    to: String,
}

impl AccountMap {
    /// Parses `SRC=DST`, two 12-digit account ids.
    pub fn parse(text: &str) -> Result<AccountMap, SettingsError> {
        let is_account = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
        match text.split_once('=') {
            Some((from, to)) if is_account(from) && is_account(to) => Ok(AccountMap {
                from: from.into(),
                to: to.into(),
            }),
            _ => Err(SettingsError::AccountMap { text: text.into() }),
        }
    }
}

/// Rewrites every account id of `maps` in `text`, where it stands alone (not inside a
/// longer run of digits).
pub fn map_accounts(text: &str, maps: &[AccountMap]) -> String {
    let mut out = text.to_owned();
    for map in maps {
        let mut result = String::with_capacity(out.len());
        let bytes = out.as_bytes();
        let mut i = 0;
        while i < out.len() {
            let rest = &out[i..];
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i + map.from.len()).copied();
            if rest.starts_with(&map.from)
                && !before.is_some_and(|b| b.is_ascii_digit())
                && !after.is_some_and(|b| b.is_ascii_digit())
            {
                result.push_str(&map.to);
                i += map.from.len();
            } else {
                let c = rest.chars().next().expect("not at the end");
                result.push(c);
                i += c.len_utf8();
            }
        }
        out = result;
    }
    out
}

/// Settings of a restore.
#[derive(Debug, Clone, Default)]
pub struct SettingsOptions {
    /// Whether to restore settings.
    pub mode: SettingsMode,
    /// Account ids to rewrite.
    pub map_accounts: Vec<AccountMap>,
    /// The KMS key every KMS-encrypted repository is created with instead of its own.
    pub kms_key: Option<String>,
    /// Read and report, change nothing.
    pub dry_run: bool,
    /// Change settings of existing repositories and of the registry that differ.
    pub overwrite: bool,
    /// Do not apply lifecycle policies.
    pub no_lifecycle: bool,
}

/// Why settings could not be restored at all.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--map-account` is malformed.
    #[error("invalid --map-account {text:?}: expected SRC=DST, two 12-digit account ids")]
    AccountMap {
        /// What was given.
        text: String,
    },
    /// Settings go only into ECR.
    #[error("--settings needs an ECR target (<account>.dkr.ecr.<region>.amazonaws.com); {target} is not one")]
    NotEcr {
        /// The target.
        target: String,
    },
    /// Reading the store failed.
    #[error("reading settings from the store")]
    Store(#[from] StoreError),
}

/// One setting created or changed (or, in a dry run, that would be).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettingsChange {
    /// `repository team/app`, `registry policy`.
    pub subject: String,
    /// The setting (`repositoryPolicy`, `imageTagMutability`, …).
    pub setting: String,
    /// What it is set to, as text.
    pub value: String,
}

/// A setting that differs between the store and an existing repository or registry, and
/// was left as the target has it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettingsDifference {
    /// `repository team/app`, `registry policy`.
    pub subject: String,
    /// The setting.
    pub setting: String,
    /// The value the store holds.
    pub stored: String,
    /// The value the target has.
    pub target: String,
    /// Why it was not changed.
    pub reason: String,
}

/// A setting that could not be restored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettingsFailure {
    /// `repository team/app`, `registry policy`.
    pub subject: String,
    /// The setting (`encryptionConfiguration` for a repository not created).
    pub setting: String,
    /// Why, with the cause chain.
    pub error: String,
}

/// What a restore did with settings (part of its `--json` output).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SettingsReport {
    /// Nothing was changed: `changes` says what would have been.
    pub dry_run: bool,
    /// Repositories created with their stored encryption and tags.
    pub repositories_created: Vec<RepositoryName>,
    /// Settings set (or, in a dry run, that would be).
    pub changes: Vec<SettingsChange>,
    /// Settings left as the target has them though the store differs.
    pub differences: Vec<SettingsDifference>,
    /// Settings not applied on purpose (`--no-lifecycle`, a repository with failed images).
    pub held_back: Vec<SettingsChange>,
    /// Settings the target refused, or that could not be read.
    pub failed: Vec<SettingsFailure>,
    /// Restored repositories with no settings in the store (as of the point restored).
    pub without_settings: Vec<RepositoryName>,
}

/// One repository's settings: the stored document (accounts mapped), and what the target
/// has now.
#[derive(Debug, Clone)]
pub(super) struct RepositoryPlan {
    stored: RepositorySettings,
    current: Option<RepositorySettings>,
    /// Set when the repository cannot be created (its images then fail with this).
    pub(super) refused: Option<String>,
    created: bool,
}

/// Everything a restore's settings steps need, read before anything is changed.
#[derive(Debug, Default)]
pub struct SettingsPlan {
    repositories: BTreeMap<RepositoryName, RepositoryPlan>,
    registry: Vec<RegistryPart>,
    report: SettingsReport,
}

#[derive(Debug, Clone)]
enum RegistryPart {
    Policy(RegistryPolicy, RegistryPolicy),
    Replication(RegistryReplication, RegistryReplication),
    Scanning(RegistryScanning, RegistryScanning),
}

fn subject(repo: &RepositoryName) -> String {
    SettingsSubject::Repository(repo.clone()).to_string()
}

async fn read_document<T: DeserializeOwned>(
    store: &Store,
    subject: &SettingsSubject,
    at: Option<DateTime<Utc>>,
) -> Result<Option<Result<T, String>>, StoreError> {
    let Some(entry) = store.settings_as_of(subject, at).await? else {
        return Ok(None);
    };
    let bytes = store.settings_document(&entry.digest).await?;
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Some(Err(format!(
                "settings document {} is corrupt: {e}",
                entry.digest
            ))))
        }
    };
    if value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) > u64::from(SETTINGS_VERSION) {
        return Ok(Some(Err(format!(
            "settings document {} was written by a newer version of ecr-backup",
            entry.digest
        ))));
    }
    Ok(Some(serde_json::from_value(value).map_err(|e| {
        format!("settings document {} is corrupt: {e}", entry.digest)
    })))
}

fn map_repository(doc: &mut RepositorySettings, options: &SettingsOptions, target: &str) {
    let maps = &options.map_accounts;
    doc.registry_id = target.to_owned();
    doc.repository_arn = map_accounts(&doc.repository_arn, maps);
    doc.kms_key = doc.kms_key.as_deref().map(|k| map_accounts(k, maps));
    if doc.encryption_type != "AES256" {
        if let Some(key) = &options.kms_key {
            doc.kms_key = Some(key.clone());
        }
    }
    doc.repository_policy = doc
        .repository_policy
        .as_deref()
        .map(|p| map_accounts(p, maps));
    doc.lifecycle_policy = doc
        .lifecycle_policy
        .as_deref()
        .map(|p| map_accounts(p, maps));
}

/// Reads the stored settings of `repositories` (target name → name in the store) and
/// of the registry as of `at`, maps accounts, and compares them with the target.
pub async fn prepare(
    store: &Store,
    api: &EcrApi,
    kms: &KmsKeys,
    repositories: &BTreeMap<RepositoryName, RepositoryName>,
    at: Option<DateTime<Utc>>,
    options: &SettingsOptions,
) -> Result<SettingsPlan, SettingsError> {
    let account = api.registry_id().unwrap_or_default().to_owned();
    let mut plan = SettingsPlan {
        report: SettingsReport {
            dry_run: options.dry_run,
            ..SettingsReport::default()
        },
        ..SettingsPlan::default()
    };
    let read: Vec<_> = futures::stream::iter(repositories)
        .map(|(target, stored)| async move {
            let document = read_document::<RepositorySettings>(
                store,
                &SettingsSubject::Repository(stored.clone()),
                at,
            )
            .await;
            let current = api.repository_settings(target).await;
            (target, document, current)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (target, document, current) in read {
        let document = match document? {
            None => {
                plan.report.without_settings.push(target.clone());
                continue;
            }
            Some(Err(reason)) => {
                plan.report.failed.push(SettingsFailure {
                    subject: subject(target),
                    setting: "document".into(),
                    error: reason,
                });
                continue;
            }
            Some(Ok(d)) => d,
        };
        let current = match current {
            Ok(c) => c,
            Err(e) => {
                plan.report.failed.push(SettingsFailure {
                    subject: subject(target),
                    setting: "current settings".into(),
                    error: error_chain(&e),
                });
                continue;
            }
        };
        let mut stored = document;
        stored.repository = target.clone();
        map_repository(&mut stored, options, &account);
        let mut refused = None;
        if current.is_none() && stored.encryption_type != "AES256" {
            refused = match stored.kms_key.as_deref() {
                None => Some(format!(
                    "{} encryption without a KMS key in the store; choose one with --kms-key",
                    stored.encryption_type
                )),
                Some(key) => match kms.usable(key).await {
                    Ok(true) => None,
                    Ok(false) => Some(format!(
                        "KMS key {key} does not exist (or is disabled) in the target account {account}; choose one with --kms-key"
                    )),
                    Err(e) => Some(format!("checking KMS key {key}: {}", error_chain(&e))),
                },
            };
            if let Some(error) = &refused {
                plan.report.failed.push(SettingsFailure {
                    subject: subject(target),
                    setting: "encryptionConfiguration".into(),
                    error: error.clone(),
                });
            }
        }
        plan.repositories.insert(
            target.clone(),
            RepositoryPlan {
                stored,
                current,
                refused,
                created: false,
            },
        );
    }
    plan.registry = prepare_registry(store, api, at, options, &mut plan.report).await?;
    plan.report.without_settings.sort();
    Ok(plan)
}

async fn prepare_registry(
    store: &Store,
    api: &EcrApi,
    at: Option<DateTime<Utc>>,
    options: &SettingsOptions,
    report: &mut SettingsReport,
) -> Result<Vec<RegistryPart>, SettingsError> {
    let maps = &options.map_accounts;
    let account = api.registry_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    let mut fail = |part: &str, error: String| {
        report.failed.push(SettingsFailure {
            subject: format!("registry {part}"),
            setting: part.into(),
            error,
        })
    };
    match read_document::<RegistryPolicy>(store, &SettingsSubject::Registry("policy"), at).await? {
        None => {}
        Some(Err(e)) => fail("policy", e),
        Some(Ok(mut doc)) => match api.registry_policy().await {
            Ok(current) => {
                doc.registry_id = account.clone();
                doc.policy_text = doc.policy_text.map(|p| map_accounts(&p, maps));
                parts.push(RegistryPart::Policy(doc, current));
            }
            Err(e) => fail("policy", error_chain(&e)),
        },
    }
    match read_document::<RegistryReplication>(store, &SettingsSubject::Registry("replication"), at)
        .await?
    {
        None => {}
        Some(Err(e)) => fail("replication", e),
        Some(Ok(mut doc)) => match api.registry_replication().await {
            Ok(current) => {
                doc.registry_id = account.clone();
                for rule in &mut doc.rules {
                    for d in &mut rule.destinations {
                        d.registry_id = map_accounts(&d.registry_id, maps);
                    }
                }
                parts.push(RegistryPart::Replication(doc, current));
            }
            Err(e) => fail("replication", error_chain(&e)),
        },
    }
    match read_document::<RegistryScanning>(store, &SettingsSubject::Registry("scanning"), at)
        .await?
    {
        None => {}
        Some(Err(e)) => fail("scanning", e),
        Some(Ok(mut doc)) => match api.registry_scanning().await {
            Ok(current) => {
                doc.registry_id = account.clone();
                parts.push(RegistryPart::Scanning(doc, current));
            }
            Err(e) => fail("scanning", error_chain(&e)),
        },
    }
    Ok(parts)
}

/// Compares policy texts as JSON (ECR may return a policy with other spacing), as text
/// when either is not JSON.
fn same_policy(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            match (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            }
        }
        (a, b) => a == b,
    }
}

fn text(value: Option<&str>) -> String {
    value.unwrap_or("(none)").to_owned()
}

/// The settings a repository has right after `CreateRepository` with encryption and tags.
fn as_created(stored: &RepositorySettings) -> RepositorySettings {
    RepositorySettings {
        image_tag_mutability: "MUTABLE".into(),
        image_tag_mutability_exclusion_filters: Vec::new(),
        scan_on_push: false,
        repository_policy: None,
        lifecycle_policy: None,
        ..stored.clone()
    }
}

impl SettingsPlan {
    /// Repositories that cannot be created, with why (their images fail with it).
    pub fn refused(&self) -> impl Iterator<Item = (&RepositoryName, &str)> {
        self.repositories
            .iter()
            .filter_map(|(repo, plan)| plan.refused.as_deref().map(|r| (repo, r)))
    }

    /// True when the plan has stored settings for `repo`.
    pub fn has(&self, repo: &RepositoryName) -> bool {
        self.repositories.contains_key(repo)
    }

    /// Step 1: creates the missing repositories with their encryption and resource tags,
    /// and reports the differences of existing ones that creation would have set.
    pub async fn create_repositories(&mut self, api: &EcrApi, dry_run: bool) {
        let report = &mut self.report;
        for (repo, plan) in self.repositories.iter_mut() {
            if plan.refused.is_some() {
                continue;
            }
            let stored = &plan.stored;
            match &plan.current {
                None => {
                    let change = |setting: &str, value: String| SettingsChange {
                        subject: subject(repo),
                        setting: setting.into(),
                        value,
                    };
                    report.changes.push(change(
                        "encryptionConfiguration",
                        match &stored.kms_key {
                            Some(k) => format!("{} {k}", stored.encryption_type),
                            None => stored.encryption_type.clone(),
                        },
                    ));
                    if !stored.resource_tags.is_empty() {
                        report
                            .changes
                            .push(change("resourceTags", tags_text(&stored.resource_tags)));
                    }
                    if dry_run {
                        plan.created = true;
                        continue;
                    }
                    match api.create_repository_with(stored).await {
                        Ok(_) => {
                            plan.created = true;
                            report.repositories_created.push(repo.clone());
                        }
                        Err(e) => {
                            let error = error_chain(&e);
                            report.failed.push(SettingsFailure {
                                subject: subject(repo),
                                setting: "CreateRepository".into(),
                                error: error.clone(),
                            });
                            plan.refused = Some(error);
                        }
                    }
                }
                Some(current) => {
                    if current.encryption_type != stored.encryption_type
                        || current.kms_key != stored.kms_key
                    {
                        report.differences.push(SettingsDifference {
                            subject: subject(repo),
                            setting: "encryptionConfiguration".into(),
                            stored: format!(
                                "{} {}",
                                stored.encryption_type,
                                text(stored.kms_key.as_deref())
                            ),
                            target: format!(
                                "{} {}",
                                current.encryption_type,
                                text(current.kms_key.as_deref())
                            ),
                            reason: "encryption is set only when a repository is created".into(),
                        });
                    }
                }
            }
        }
    }

    /// Steps 3 and 4: every other setting, in order, after the images. `failed_images`
    /// names the repositories some of whose images failed: their tag mutability is held
    /// back.
    pub async fn apply_after_images(
        mut self,
        api: &EcrApi,
        options: &SettingsOptions,
        failed_images: &BTreeSet<RepositoryName>,
    ) -> SettingsReport {
        let dry_run = options.dry_run;
        let results: Vec<Vec<Outcome>> = futures::stream::iter(&self.repositories)
            .filter(|(_, plan)| std::future::ready(plan.refused.is_none()))
            .map(|(repo, plan)| {
                apply_repository(api, repo, plan, options, failed_images.contains(repo))
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for outcome in results.into_iter().flatten() {
            self.report.record(outcome);
        }
        for part in std::mem::take(&mut self.registry) {
            let outcome = apply_registry(api, part, options.overwrite, dry_run).await;
            for o in outcome {
                self.report.record(o);
            }
        }
        let r = &mut self.report;
        r.repositories_created.sort();
        r.changes
            .sort_by(|a, b| (&a.subject, &a.setting).cmp(&(&b.subject, &b.setting)));
        r.differences
            .sort_by(|a, b| (&a.subject, &a.setting).cmp(&(&b.subject, &b.setting)));
        r.failed
            .sort_by(|a, b| (&a.subject, &a.setting).cmp(&(&b.subject, &b.setting)));
        r.held_back
            .sort_by(|a, b| (&a.subject, &a.setting).cmp(&(&b.subject, &b.setting)));
        self.report
    }

    /// The report so far (for a restore that stops before applying).
    pub fn into_report(self) -> SettingsReport {
        self.report
    }
}

fn tags_text(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

enum Outcome {
    Changed(SettingsChange),
    Different(SettingsDifference),
    HeldBack(SettingsChange),
    Failed(SettingsFailure),
}

impl SettingsReport {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Changed(c) => self.changes.push(c),
            Outcome::Different(d) => self.differences.push(d),
            Outcome::HeldBack(c) => self.held_back.push(c),
            Outcome::Failed(f) => self.failed.push(f),
        }
    }
}

/// One setting to bring from `current` to `stored`, if they differ.
struct Step<'a> {
    setting: &'static str,
    stored: String,
    current: String,
    differs: bool,
    call: futures::future::BoxFuture<'a, Result<(), EcrError>>,
}

async fn apply_repository(
    api: &EcrApi,
    repo: &RepositoryName,
    plan: &RepositoryPlan,
    options: &SettingsOptions,
    images_failed: bool,
) -> Vec<Outcome> {
    let stored = &plan.stored;
    let current = match &plan.current {
        Some(c) => c.clone(),
        None => as_created(stored),
    };
    let may_change = plan.created || options.overwrite;
    let mutability = |s: &RepositorySettings| {
        let filters: Vec<String> = s
            .image_tag_mutability_exclusion_filters
            .iter()
            .map(|f| format!("{}:{}", f.filter_type, f.filter))
            .collect();
        if filters.is_empty() {
            s.image_tag_mutability.clone()
        } else {
            format!("{} except {}", s.image_tag_mutability, filters.join(", "))
        }
    };
    let mut steps: Vec<Step> = Vec::new();
    if plan.current.is_some() {
        let removed: Vec<String> = current
            .resource_tags
            .keys()
            .filter(|k| !stored.resource_tags.contains_key(*k))
            .cloned()
            .collect();
        steps.push(Step {
            setting: "resourceTags",
            stored: tags_text(&stored.resource_tags),
            current: tags_text(&current.resource_tags),
            differs: current.resource_tags != stored.resource_tags,
            call: Box::pin(async move {
                api.put_resource_tags(repo, &current_arn(plan), &stored.resource_tags, &removed)
                    .await
            }),
        });
    }
    steps.push(Step {
        setting: "imageTagMutability",
        stored: mutability(stored),
        current: mutability(&current),
        differs: mutability(stored) != mutability(&current),
        call: Box::pin(api.put_tag_mutability(stored)),
    });
    steps.push(Step {
        setting: "repositoryPolicy",
        stored: text(stored.repository_policy.as_deref()),
        current: text(current.repository_policy.as_deref()),
        differs: !same_policy(
            stored.repository_policy.as_deref(),
            current.repository_policy.as_deref(),
        ),
        call: Box::pin(api.put_repository_policy(repo, stored.repository_policy.as_deref())),
    });
    steps.push(Step {
        setting: "scanOnPush",
        stored: stored.scan_on_push.to_string(),
        current: current.scan_on_push.to_string(),
        differs: stored.scan_on_push != current.scan_on_push,
        call: Box::pin(api.put_scan_on_push(repo, stored.scan_on_push)),
    });
    steps.push(Step {
        setting: "lifecyclePolicy",
        stored: text(stored.lifecycle_policy.as_deref()),
        current: text(current.lifecycle_policy.as_deref()),
        differs: !same_policy(
            stored.lifecycle_policy.as_deref(),
            current.lifecycle_policy.as_deref(),
        ),
        call: Box::pin(api.put_lifecycle_policy(repo, stored.lifecycle_policy.as_deref())),
    });
    let mut out = Vec::new();
    for step in steps {
        if !step.differs {
            continue;
        }
        let change = SettingsChange {
            subject: subject(repo),
            setting: step.setting.into(),
            value: step.stored.clone(),
        };
        if !may_change {
            out.push(Outcome::Different(SettingsDifference {
                subject: subject(repo),
                setting: step.setting.into(),
                stored: step.stored,
                target: step.current,
                reason: "the repository already exists; --overwrite-settings changes it".into(),
            }));
            continue;
        }
        if step.setting == "lifecyclePolicy" && options.no_lifecycle {
            out.push(Outcome::HeldBack(change));
            continue;
        }
        if step.setting == "imageTagMutability" && images_failed {
            out.push(Outcome::HeldBack(change));
            continue;
        }
        if options.dry_run {
            out.push(Outcome::Changed(change));
            continue;
        }
        match step.call.await {
            Ok(()) => out.push(Outcome::Changed(change)),
            Err(e) => out.push(Outcome::Failed(SettingsFailure {
                subject: subject(repo),
                setting: step.setting.into(),
                error: error_chain(&e),
            })),
        }
    }
    out
}

fn current_arn(plan: &RepositoryPlan) -> String {
    plan.current.as_ref().map_or_else(
        || plan.stored.repository_arn.clone(),
        |c| c.repository_arn.clone(),
    )
}

async fn apply_registry(
    api: &EcrApi,
    part: RegistryPart,
    overwrite: bool,
    dry_run: bool,
) -> Vec<Outcome> {
    let (name, stored, current, same, is_default) = match &part {
        RegistryPart::Policy(s, c) => (
            "policy",
            text(s.policy_text.as_deref()),
            text(c.policy_text.as_deref()),
            same_policy(s.policy_text.as_deref(), c.policy_text.as_deref()),
            c.is_default(),
        ),
        RegistryPart::Replication(s, c) => (
            "replication",
            json(&s.rules),
            json(&c.rules),
            s.rules == c.rules,
            c.is_default(),
        ),
        RegistryPart::Scanning(s, c) => (
            "scanning",
            format!("{} {}", s.scan_type, json(&s.rules)),
            format!("{} {}", c.scan_type, json(&c.rules)),
            s.scan_type == c.scan_type && s.rules == c.rules,
            c.is_default(),
        ),
    };
    if same {
        return Vec::new();
    }
    let subject = format!("registry {name}");
    if !is_default && !overwrite {
        return vec![Outcome::Different(SettingsDifference {
            subject,
            setting: name.into(),
            stored,
            target: current,
            reason: "the registry has its own; --overwrite-settings changes it".into(),
        })];
    }
    let change = SettingsChange {
        subject: subject.clone(),
        setting: name.into(),
        value: stored,
    };
    if dry_run {
        return vec![Outcome::Changed(change)];
    }
    let result = match &part {
        RegistryPart::Policy(s, _) => api.put_registry_policy(s.policy_text.as_deref()).await,
        RegistryPart::Replication(s, _) => api.put_registry_replication(s).await,
        RegistryPart::Scanning(s, _) => api.put_registry_scanning(s).await,
    };
    vec![match result {
        Ok(()) => Outcome::Changed(change),
        Err(e) => Outcome::Failed(SettingsFailure {
            subject,
            setting: name.into(),
            error: error_chain(&e),
        }),
    }]
}

/// A value as one line of JSON, for reports.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Stored settings of one subject as of a time (`ecr-backup ls --settings`).
#[derive(Debug, Clone, Serialize)]
pub struct StoredSettings {
    /// `repository team/app`, `registry policy`.
    pub subject: String,
    /// When the registry was seen with these settings.
    pub observed_at: DateTime<Utc>,
    /// The settings document's digest.
    pub digest: crate::oci::digest::Digest,
    /// How many times the settings were recorded (changes, and the first sight).
    pub versions: usize,
    /// The document.
    pub settings: serde_json::Value,
}

/// The settings of `subject` as of `at` (or the latest), if the store has any.
pub async fn stored_settings(
    store: &Store,
    subject: &SettingsSubject,
    at: Option<DateTime<Utc>>,
) -> Result<Option<StoredSettings>, StoreError> {
    let history = store.settings_history(subject).await?;
    let versions = history.len();
    let Some(entry) = history
        .into_iter()
        .rev()
        .find(|e| at.is_none_or(|at| e.observed_at <= at))
    else {
        return Ok(None);
    };
    let bytes = store.settings_document(&entry.digest).await?;
    let settings = serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptRecord {
        key: crate::store::Layout::blob(&entry.digest),
        source,
    })?;
    Ok(Some(StoredSettings {
        subject: subject.to_string(),
        observed_at: entry.observed_at,
        digest: entry.digest,
        versions,
        settings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_rewritten_where_they_stand_alone() {
        let maps = [AccountMap::parse("123456789012=210987654321").unwrap()];
        let policy =
            r#"{"Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Sid":"x1234567890123"}"#;
        assert_eq!(
            map_accounts(policy, &maps),
            r#"{"Principal":{"AWS":"arn:aws:iam::210987654321:root"},"Sid":"x1234567890123"}"#
        );
        // Inside a longer number it is not an account id.
        assert_eq!(map_accounts("91234567890123", &maps), "91234567890123");
        assert_eq!(map_accounts("123456789012", &maps), "210987654321");
        assert!(AccountMap::parse("123=456").is_err());
        assert!(AccountMap::parse("123456789012").is_err());
    }

    #[test]
    fn policies_compare_as_json() {
        assert!(same_policy(Some(r#"{"a": 1}"#), Some(r#"{"a":1}"#)));
        assert!(!same_policy(Some(r#"{"a": 1}"#), Some(r#"{"a":2}"#)));
        assert!(!same_policy(Some(r#"{"a": 1}"#), None));
        assert!(same_policy(None, None));
    }
}

//! Lambda configuration from environment variables, checked at start-up so that a
//! misconfigured function fails at once with the variable's name.

use crate::filter::FilterSpec;
use crate::store::StoreLocation;

/// The store location (`s3://bucket/prefix`).
pub const STORE: &str = "ECR_BACKUP_STORE";
/// The copy queue's URL.
pub const QUEUE_URL: &str = "ECR_BACKUP_QUEUE_URL";
/// Comma-separated repository globs to include (empty: all).
pub const REPOSITORIES: &str = "ECR_BACKUP_REPOSITORIES";
/// Comma-separated repository globs to leave out.
pub const EXCLUDE_REPOSITORIES: &str = "ECR_BACKUP_EXCLUDE_REPOSITORIES";
/// Tag regex (empty: all tags, and untagged images).
pub const TAG_PATTERN: &str = "ECR_BACKUP_TAG_PATTERN";
/// Images copied at once by one worker invocation.
pub const CONCURRENCY: &str = "ECR_BACKUP_CONCURRENCY";
/// Optional: most repositories one fan-out part enumerates before the run is continued
/// by a worker (default: only the invocation's time cuts a part).
pub const PART_REPOSITORIES: &str = "ECR_BACKUP_PART_REPOSITORIES";
/// Optional: reach the registry's data plane here instead of ECR's endpoint.
pub const REGISTRY_ENDPOINT: &str = "ECR_BACKUP_REGISTRY_ENDPOINT";

/// The drill function's scratch repository prefix (default `ecr-backup-drill`).
pub const DRILL_SCRATCH_PREFIX: &str = "ECR_BACKUP_DRILL_SCRATCH_PREFIX";
/// The drill function's sample: a number of images (`5`) or a percentage (`10%`).
pub const DRILL_SAMPLE: &str = "ECR_BACKUP_DRILL_SAMPLE";

/// A variable is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(ConfigError {
            name,
            reason: "is not set".into(),
        }),
    }
}

fn optional(name: &'static str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn store(name: &'static str) -> Result<StoreLocation, ConfigError> {
    StoreLocation::parse(&required(name)?).map_err(|e| ConfigError {
        name,
        reason: e.to_string(),
    })
}

/// The fan-out's settings.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Where backups go.
    pub store: StoreLocation,
    /// Where copy messages go.
    pub queue_url: String,
    /// Which repositories and tags.
    pub filter: FilterSpec,
    /// Data-plane override (unused by the fan-out itself, passed on for symmetry).
    pub registry_endpoint: Option<String>,
    /// Most repositories per part of a run.
    pub part_repositories: Option<u32>,
}

impl FanoutConfig {
    /// Reads `ECR_BACKUP_STORE`, `ECR_BACKUP_QUEUE_URL` and the filters.
    pub fn from_env() -> Result<FanoutConfig, ConfigError> {
        Ok(FanoutConfig {
            store: store(STORE)?,
            queue_url: required(QUEUE_URL)?,
            filter: filter_from_env()?,
            registry_endpoint: optional(REGISTRY_ENDPOINT),
            part_repositories: match optional(PART_REPOSITORIES) {
                None => None,
                Some(v) => {
                    Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|&n| n >= 1)
                            .ok_or_else(|| ConfigError {
                                name: PART_REPOSITORIES,
                                reason: format!("{v:?} is not a whole number of at least 1"),
                            })?,
                    )
                }
            },
        })
    }
}

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Where backups go.
    pub store: StoreLocation,
    /// The copy queue (for fan-out continuations and visibility extension).
    pub queue_url: String,
    /// Messages processed at once.
    pub concurrency: usize,
    /// Data-plane override.
    pub registry_endpoint: Option<String>,
    /// The same selection as the fan-out's, applied to push events.
    pub filter: FilterSpec,
}

impl WorkerConfig {
    /// Reads `ECR_BACKUP_STORE`, `ECR_BACKUP_QUEUE_URL`, `ECR_BACKUP_CONCURRENCY`.
    pub fn from_env() -> Result<WorkerConfig, ConfigError> {
        let concurrency = match optional(CONCURRENCY) {
            None => 4,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| ConfigError {
                    name: CONCURRENCY,
                    reason: format!("{v:?} is not a number from 1 to 64"),
                })?,
        };
        Ok(WorkerConfig {
            store: store(STORE)?,
            queue_url: required(QUEUE_URL)?,
            concurrency,
            registry_endpoint: optional(REGISTRY_ENDPOINT),
            filter: filter_from_env()?,
        })
    }
}

/// The drill function's settings.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// The store to drill.
    pub store: StoreLocation,
    /// Repository prefix of the scratch repositories (`None`: the default).
    pub scratch_prefix: Option<String>,
    /// The sample as written (`5`, `10%`; `None`: the default), parsed by the drill.
    pub sample: Option<String>,
    /// Data-plane override.
    pub registry_endpoint: Option<String>,
}

impl DrillConfig {
    /// Reads `ECR_BACKUP_STORE`, `ECR_BACKUP_DRILL_SCRATCH_PREFIX`, `ECR_BACKUP_DRILL_SAMPLE`.
    pub fn from_env() -> Result<DrillConfig, ConfigError> {
        Ok(DrillConfig {
            store: store(STORE)?,
            scratch_prefix: optional(DRILL_SCRATCH_PREFIX),
            sample: optional(DRILL_SAMPLE),
            registry_endpoint: optional(REGISTRY_ENDPOINT),
        })
    }
}

/// The repository and tag selection, compiled once so a bad pattern fails the start-up,
/// naming its variable.
fn filter_from_env() -> Result<FilterSpec, ConfigError> {
    let filter = FilterSpec::from_lists(
        &optional(REPOSITORIES).unwrap_or_default(),
        &optional(EXCLUDE_REPOSITORIES).unwrap_or_default(),
        &optional(TAG_PATTERN).unwrap_or_default(),
    );
    filter.compile().map_err(|e| ConfigError {
        name: match e {
            crate::filter::FilterError::Regex { .. } => TAG_PATTERN,
            crate::filter::FilterError::Glob { .. } => REPOSITORIES,
        },
        reason: crate::error::error_chain(&e),
    })?;
    Ok(filter)
}

//! `ecr-backup ls`: what a store holds: repositories, one repository's tags, or snapshots.

use anyhow::Result;
use chrono::{DateTime, Utc};
use ecr_backup_shared::store::settings::{SettingsSubject, REGISTRY_PARTS};
use ecr_backup_shared::store::Store;
use ecr_backup_shared::wayback::inventory;
use ecr_backup_shared::wayback::restore::settings::stored_settings;
use ecr_backup_shared::RepositoryName;

use super::Global;
use crate::progress::human_bytes;
use crate::Outcome;

/// Arguments of `ls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// List this repository's tags and images instead of every repository.
    repository: Option<RepositoryName>,
    /// List snapshots (backup runs) instead.
    #[arg(long, conflicts_with = "repository")]
    snapshots: bool,
    /// Show the stored settings of the repository (without one: of the registry).
    #[arg(long, conflicts_with = "snapshots")]
    settings: bool,
    /// With --settings: as they were at this time (RFC 3339, or YYYY-MM-DD for the end of
    /// that day, UTC).
    #[arg(long, value_name = "TIME", requires = "settings")]
    as_of: Option<String>,
    /// Print the listing as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Runs `ls`.
pub async fn run(args: Args, _global: Global) -> Result<Outcome> {
    let store = super::open_store(&args.store).await?;
    if args.settings {
        return settings(&store, &args).await;
    }
    if args.snapshots {
        let snapshots = inventory::snapshots(&store).await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&snapshots)?);
            return Ok(Outcome::Success);
        }
        outln!(
            "{:<24}  {:<19}  {:<10}  {:>5}  {:>6}  {:>5}  SOURCE",
            "SNAPSHOT",
            "TAKEN (UTC)",
            "PARTS",
            "REPOS",
            "IMAGES",
            "TAGS"
        );
        for s in &snapshots {
            let parts = if s.complete {
                s.parts.to_string()
            } else {
                format!("{} (incomplete)", s.parts)
            };
            outln!(
                "{:<24}  {:<19}  {:<10}  {:>5}  {:>6}  {:>5}  {}",
                s.id,
                time(Some(s.observed_at)),
                parts,
                s.repositories,
                s.images,
                s.tags,
                s.source
            );
        }
        return Ok(Outcome::Success);
    }
    if let Some(repo) = &args.repository {
        let detail = inventory::repository(&store, repo).await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&detail)?);
            return Ok(Outcome::Success);
        }
        outln!(
            "{:<30}  {:<71}  {:>10}  {:<19}  {:<19}",
            "TAG",
            "DIGEST",
            "SIZE",
            "FIRST SEEN (UTC)",
            "LAST SEEN (UTC)"
        );
        for t in &detail.tags {
            outln!(
                "{:<30}  {:<71}  {:>10}  {:<19}  {:<19}",
                t.tag.as_str(),
                t.digest.to_string(),
                t.size.map(human_bytes).unwrap_or_else(|| "missing".into()),
                time(t.first_observed),
                time(t.last_observed)
            );
        }
        if !detail.untagged.is_empty() {
            outln!();
            outln!(
                "{:<71}  {:>10}  {:<19}  NOTE",
                "UNTAGGED IMAGE",
                "SIZE",
                "BACKED UP (UTC)"
            );
            for i in &detail.untagged {
                let mut note = Vec::new();
                if let Some(s) = &i.subject {
                    note.push(format!("refers to {s}"));
                }
                if i.deleted {
                    note.push("deleted at the source".to_owned());
                }
                outln!(
                    "{:<71}  {:>10}  {:<19}  {}",
                    i.digest.to_string(),
                    i.size.map(human_bytes).unwrap_or_default(),
                    time(i.backed_up_at),
                    note.join("; ")
                );
            }
        }
        return Ok(Outcome::Success);
    }
    let repositories = inventory::repositories(&store).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&repositories)?);
        return Ok(Outcome::Success);
    }
    outln!(
        "{:<40}  {:>6}  {:>5}  {:>7}  {:<19}",
        "REPOSITORY",
        "IMAGES",
        "TAGS",
        "DELETED",
        "LAST SEEN (UTC)"
    );
    for r in &repositories {
        outln!(
            "{:<40}  {:>6}  {:>5}  {:>7}  {:<19}",
            r.repository.as_str(),
            r.images,
            r.tags,
            r.deleted,
            time(r.last_observed)
        );
    }
    Ok(Outcome::Success)
}

/// `ls --settings [REPOSITORY] [--as-of TIME]`.
async fn settings(store: &Store, args: &Args) -> Result<Outcome> {
    store.ensure_exists().await?;
    let at = args
        .as_of
        .as_deref()
        .map(inventory::parse_time)
        .transpose()?;
    let subjects: Vec<SettingsSubject> = match &args.repository {
        Some(repo) => vec![SettingsSubject::Repository(repo.clone())],
        None => REGISTRY_PARTS
            .iter()
            .map(|p| SettingsSubject::Registry(p))
            .collect(),
    };
    let mut found = Vec::new();
    for subject in &subjects {
        if let Some(s) = stored_settings(store, subject, at).await? {
            found.push(s);
        }
    }
    if let (Some(repo), true) = (&args.repository, found.is_empty()) {
        let when = at
            .map(|t| format!(" as of {}", t.to_rfc3339()))
            .unwrap_or_default();
        anyhow::bail!("no settings of {repo} in {}{when}", store.location());
    }
    if args.json {
        let value = match &args.repository {
            Some(_) => serde_json::to_value(&found[0])?,
            None => serde_json::to_value(&found)?,
        };
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(Outcome::Success);
    }
    for s in &found {
        outln!(
            "{} (seen {}, {} version(s) stored, {})",
            s.subject,
            time(Some(s.observed_at)),
            s.versions,
            s.digest
        );
        outln!("{}", serde_json::to_string_pretty(&s.settings)?);
    }
    Ok(Outcome::Success)
}

//! `ecr-backup du`: what a store's objects take: per repository the bytes only it holds
//! and the bytes it shares, its records, by age of its image records; and what the whole
//! store costs a month.

use anyhow::Result;
use ecr_backup_shared::store::usage;
use ecr_backup_shared::RepositoryName;

use super::prices::{storage_line, PriceFlags};
use super::Global;
use crate::progress::human_bytes;
use crate::Outcome;

/// Arguments of `du`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// Only this repository (its unique and shared bytes still judged against all).
    repository: Option<RepositoryName>,
    #[command(flatten)]
    prices: PriceFlags,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `du`.
pub async fn run(args: Args, _global: Global) -> Result<Outcome> {
    let prices = args.prices.prices()?;
    let store = super::open_store(&args.store).await?;
    store.ensure_exists().await?;
    let usage = usage::usage(
        &store,
        &prices,
        args.repository.as_ref(),
        chrono::Utc::now(),
    )
    .await?;
    if let Some(repo) = &args.repository {
        if usage.repositories.is_empty() {
            anyhow::bail!("repository {repo} has no backup in {}", store.location());
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(Outcome::Success);
    }
    outln!(
        "{:<40}  {:>6}  {:>10}  {:>10}  {:>7}",
        "REPOSITORY",
        "IMAGES",
        "UNIQUE",
        "SHARED",
        "RECORDS"
    );
    for r in &usage.repositories {
        outln!(
            "{:<40}  {:>6}  {:>10}  {:>10}  {:>7}",
            r.repository.as_str(),
            r.images,
            human_bytes(r.unique_bytes),
            human_bytes(r.shared_bytes),
            r.records
        );
    }
    let ages = match usage.repositories.as_slice() {
        [one] if args.repository.is_some() => &one.by_age,
        _ => &usage.by_age,
    };
    outln!();
    outln!(
        "{:<24}  {:>6}  {:>10}",
        "IMAGE RECORD AGE",
        "IMAGES",
        "BYTES"
    );
    for a in ages {
        outln!(
            "{:<24}  {:>6}  {:>10}",
            a.age,
            a.images,
            human_bytes(a.bytes)
        );
    }
    outln!();
    outln!("store {}: {}", usage.store, storage_line(&usage.total));
    outln!(
        "  blobs {} in {} objects ({} shared by repositories, {} reached by no image record); records {} in {} objects",
        human_bytes(usage.blobs.bytes),
        usage.blobs.objects,
        human_bytes(usage.shared_bytes),
        human_bytes(usage.unreferenced_bytes),
        human_bytes(usage.records.bytes),
        usage.records.objects
    );
    Ok(Outcome::Success)
}

//! `ecr-backup backup`: copy every selected image of a registry into a store.

use super::credentials::{self, CredentialFlags};
use std::sync::Arc;

use anyhow::{Context, Result};
use ecr_backup_shared::backup::{self, BackupReport, RunOptions};
use ecr_backup_shared::copy::{CopyEngine, CopyOptions};
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::source::Source;

use super::Global;
use crate::progress::{human_bytes, Bar};
use crate::Outcome;

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registry to back up: `host[:port]`, `http://host:port`, or an ECR registry
    /// (`<account>.dkr.ecr.<region>.amazonaws.com`, enumerated through the ECR API).
    #[arg(long, env = "ECR_BACKUP_SOURCE")]
    source: String,
    /// Where to store the backup: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// Reach the registry's data plane at this URL instead (a proxy, a local mirror).
    #[arg(long, env = "ECR_BACKUP_REGISTRY_ENDPOINT")]
    registry_endpoint: Option<String>,
    /// Registry credentials as `USER:PASSWORD` (ECR logs in by itself). Without them,
    /// the credentials of docker and podman/skopeo are used (`--authfile`,
    /// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.docker/config.json` with its credential helpers); `-v` says which.
    #[arg(long, env = "ECR_BACKUP_SOURCE_CREDENTIALS", hide_env_values = true)]
    credentials: Option<String>,
    /// User name for `--password-stdin`.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password from stdin (with `--username`).
    #[arg(long, conflicts_with = "credentials")]
    password_stdin: bool,
    /// Read registry credentials from this file only (a containers `auth.json` or a
    /// Docker `config.json`).
    #[arg(long, value_name = "PATH", conflicts_with = "credentials")]
    authfile: Option<std::path::PathBuf>,
    /// Only repositories matching this glob (repeatable).
    #[arg(long = "repository", value_name = "GLOB")]
    repositories: Vec<String>,
    /// Leave out repositories matching this glob (repeatable).
    #[arg(long = "exclude-repository", value_name = "GLOB")]
    exclude_repositories: Vec<String>,
    /// Only tags matching this regular expression (whole tag); untagged images are then left out.
    #[arg(long, value_name = "REGEX")]
    tag: Option<String>,
    /// Images copied at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Blob transfers at once, across all images.
    #[arg(long, default_value_t = 8)]
    blob_concurrency: usize,
    /// Do not follow the registry's referrers API (signatures, SBOMs).
    #[arg(long)]
    no_referrers: bool,
    #[command(flatten)]
    prices: super::prices::PriceFlags,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `backup`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let filter = ImageFilter::new(
        &args.repositories,
        &args.exclude_repositories,
        args.tag.as_deref(),
    )?;
    let prices = args.prices.prices()?;
    let credentials = credentials::resolve(
        &args.source,
        &CredentialFlags {
            user_password: args.credentials.as_deref().map(|c| (c, "--credentials")),
            username: args.username.as_deref(),
            password_stdin: args.password_stdin,
            authfile: args.authfile.as_ref(),
        },
    )?;
    let store = super::open_store(&args.store).await?;
    let source =
        Source::connect(&args.source, args.registry_endpoint.as_deref(), credentials).await?;
    if source.ecr().is_none() {
        source
            .registry()
            .ping()
            .await
            .with_context(|| format!("connecting to registry {}", args.source))?;
    }
    store
        .init()
        .await
        .with_context(|| format!("opening store {}", store.location()))?;

    let bar = Arc::new(Bar::new(global.show_progress(args.json), "backing up"));
    let engine = CopyEngine::for_source(&source, store)
        .with_options(CopyOptions {
            blob_concurrency: args.blob_concurrency,
            copy_referrers: !args.no_referrers,
            ..CopyOptions::default()
        })
        .with_reporter(bar.clone());
    let options = RunOptions {
        filter,
        image_concurrency: args.concurrency,
        prices,
    };
    let mut report = backup::run(&source, &engine, &options, bar.clone()).await?;
    // The command's whole cost: its first contacts with the registry and the store, and
    // the store's layout files written before the run, count too.
    let storage = report.cost.storage.take();
    report.cost =
        backup::Meter::zero().finish(&source, engine.store(), Some(&engine), &options.prices);
    report.cost.storage = storage;
    bar.finish();
    print_report(&report, args.json, global.quiet)?;
    Ok(if report.is_success() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

fn print_report(report: &BackupReport, json: bool, quiet: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    if !quiet {
        outln!(
            "Backed up {} into {} (snapshot {})",
            report.source,
            report.store,
            report.snapshot
        );
        outln!(
            "  images: {} copied, {} already present, {} failed",
            report.images_copied,
            report.images_present,
            report.images_failed.len()
        );
        outln!(
            "  blobs:  {} copied ({}), {} skipped ({})",
            report.blobs_copied,
            human_bytes(report.bytes_copied),
            report.blobs_skipped,
            human_bytes(report.bytes_skipped)
        );
        outln!(
            "  {} registry requests, {} blob downloads, {} retries, {:.1} s",
            report.registry_requests,
            report.blob_gets,
            report.retries,
            report.elapsed_seconds
        );
        let cost = &report.cost;
        let r = &cost.requests;
        outln!(
            "  cost:   {} new, {} deduplicated, {} objects written; requests: S3 {} PUT, {} GET, {} LIST, {} HEAD (${:.4}), ECR API {}, registry {}",
            human_bytes(cost.bytes_new),
            human_bytes(cost.bytes_deduplicated),
            cost.objects_written,
            r.s3_put,
            r.s3_get,
            r.s3_list,
            r.s3_head,
            cost.s3_requests_usd,
            r.ecr_api,
            r.registry
        );
        if let Some(storage) = &cost.storage {
            outln!("  store:  {}", super::prices::storage_line(storage));
        }
        for archived in &report.images_archived {
            outln!("  archived in ECR, not backed up: {archived}");
        }
        let settings = &report.settings;
        if !settings.written.is_empty() || settings.unchanged > 0 {
            outln!(
                "  settings: {} recorded, {} unchanged",
                settings.written.len(),
                settings.unchanged
            );
        }
    }
    for warning in &report.settings.warnings {
        eprintln!("warning: {warning}");
    }
    for failed in &report.images_failed {
        eprintln!(
            "failed: {}@{}: {}",
            failed.repository, failed.digest, failed.error
        );
    }
    Ok(())
}

//! `ecr-backup restore`: push images from a store into a registry, digests unchanged.

use super::credentials::{self, CredentialFlags};
use std::sync::Arc;

use anyhow::{Context, Result};
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::source::Source;
use ecr_backup_shared::wayback::inventory::{parse_time, PointInTime};
use ecr_backup_shared::wayback::restore::{
    self, AccountMap, Rename, RestoreOptions, RestoreReport, SettingsMode, SettingsOptions,
};

use super::Global;
use crate::progress::{human_bytes, Bar};
use crate::Outcome;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// Registry to restore into: `host[:port]`, `http://host:port`, or an ECR registry
    /// (`<account>.dkr.ecr.<region>.amazonaws.com`; missing repositories are created).
    #[arg(long, env = "ECR_BACKUP_TARGET")]
    target: String,
    /// Reach the target's data plane at this URL instead (a proxy, a local mirror).
    #[arg(long, env = "ECR_BACKUP_TARGET_ENDPOINT")]
    target_endpoint: Option<String>,
    /// Target credentials as `USER:PASSWORD` (ECR logs in by itself). Without them, the
    /// credentials of docker and podman/skopeo are used, as for `backup`.
    #[arg(long, env = "ECR_BACKUP_TARGET_CREDENTIALS", hide_env_values = true)]
    target_credentials: Option<String>,
    /// User name for `--password-stdin`.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the target registry's password from stdin (with `--username`).
    #[arg(long, conflicts_with = "target_credentials")]
    password_stdin: bool,
    /// Read target credentials from this file only (a containers `auth.json` or a Docker
    /// `config.json`).
    #[arg(long, value_name = "PATH", conflicts_with = "target_credentials")]
    authfile: Option<std::path::PathBuf>,
    /// Only repositories matching this glob (repeatable).
    #[arg(long = "repository", value_name = "GLOB")]
    repositories: Vec<String>,
    /// Leave out repositories matching this glob (repeatable).
    #[arg(long = "exclude-repository", value_name = "GLOB")]
    exclude_repositories: Vec<String>,
    /// Only tags matching this regular expression (whole tag).
    #[arg(long, value_name = "REGEX")]
    tag: Option<String>,
    /// Restore the registry as it was at this time: RFC 3339, or `YYYY-MM-DD` for the end
    /// of that day (UTC).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshot")]
    as_of: Option<String>,
    /// Restore exactly the tags of this snapshot (see `ecr-backup ls --snapshots`).
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
    /// Refuse to push anything if a record this restore relies on (snapshot, image or tag
    /// record) was written to the store after TIME: give the creation time of the locked
    /// vault's latest recovery point, so that only what the vault also holds is trusted.
    /// RFC 3339, or `YYYY-MM-DD` for the end of that day (UTC).
    #[arg(long, value_name = "TIME")]
    trusted_before: Option<String>,
    /// Also restore, by digest, the untagged images of the snapshot (not with --tag).
    #[arg(long, conflicts_with = "tag")]
    include_untagged: bool,
    /// Restore repositories starting with OLD_PREFIX under NEW_PREFIX instead.
    #[arg(long, value_name = "OLD_PREFIX=NEW_PREFIX")]
    rename: Option<String>,
    /// Also restore repository and registry settings (ECR targets): missing repositories
    /// are created with their encryption and resource tags before the images, and tag
    /// mutability, policies, scanning and the lifecycle policy are applied after them.
    #[arg(long)]
    settings: bool,
    /// Restore the settings only, without pushing images.
    #[arg(long, conflicts_with = "settings")]
    settings_only: bool,
    /// Do not apply lifecycle policies: a lifecycle rule can expire images just restored.
    #[arg(long)]
    no_lifecycle: bool,
    /// Rewrite account SRC as DST in policies, ARNs and replication rules (repeatable).
    #[arg(long = "map-account", value_name = "SRC=DST")]
    map_accounts: Vec<String>,
    /// Create KMS-encrypted repositories with this key (ARN) instead of their own.
    #[arg(long, value_name = "ARN")]
    kms_key: Option<String>,
    /// Change settings of existing repositories and of the registry that differ from the
    /// store's (without it, differences are only reported).
    #[arg(long)]
    overwrite_settings: bool,
    /// Print what would be created or changed; push and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Images restored at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Blob uploads at once, across all images.
    #[arg(long, default_value_t = 8)]
    blob_concurrency: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `restore`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let filter = ImageFilter::new(
        &args.repositories,
        &args.exclude_repositories,
        args.tag.as_deref(),
    )?;
    let point = PointInTime::from_flags(args.as_of.as_deref(), args.snapshot.as_deref())?;
    let rename = args.rename.as_deref().map(Rename::parse).transpose()?;
    let trusted_before = args
        .trusted_before
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("--trusted-before")?;
    let settings = SettingsOptions {
        mode: if args.settings_only {
            SettingsMode::Only
        } else if args.settings {
            SettingsMode::WithImages
        } else {
            SettingsMode::Off
        },
        map_accounts: args
            .map_accounts
            .iter()
            .map(|m| AccountMap::parse(m))
            .collect::<Result<_, _>>()?,
        kms_key: args.kms_key.clone(),
        dry_run: args.dry_run,
        overwrite: args.overwrite_settings,
        no_lifecycle: args.no_lifecycle,
    };
    let credentials = credentials::resolve(
        &args.target,
        &CredentialFlags {
            user_password: args
                .target_credentials
                .as_deref()
                .map(|c| (c, "--target-credentials")),
            username: args.username.as_deref(),
            password_stdin: args.password_stdin,
            authfile: args.authfile.as_ref(),
        },
    )?;
    let store = super::open_store(&args.store).await?;
    let target = Source::connect(&args.target, args.target_endpoint.as_deref(), credentials)
        .await
        .with_context(|| format!("connecting to target registry {}", args.target))?;

    let bar = Arc::new(Bar::new(global.show_progress(args.json), "restoring"));
    let options = RestoreOptions {
        filter,
        point,
        rename,
        include_untagged: args.include_untagged,
        trusted_before,
        image_concurrency: args.concurrency,
        blob_concurrency: args.blob_concurrency,
        settings,
        ..RestoreOptions::default()
    };
    let report = restore::run(&store, &target, &options, bar.clone()).await?;
    bar.finish();
    print_report(&report, args.json, global.quiet)?;
    Ok(if report.is_success() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

fn print_report(report: &RestoreReport, json: bool, quiet: bool) -> Result<()> {
    // On stderr whatever the output format: a setting left or refused is named there.
    if let Some(settings) = &report.settings {
        for d in &settings.differences {
            eprintln!(
                "differs: {} of {}: store has {}, target has {} ({})",
                d.setting, d.subject, d.stored, d.target, d.reason
            );
        }
        for f in &settings.failed {
            eprintln!("failed: {} of {}: {}", f.setting, f.subject, f.error);
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    if !quiet {
        let snapshot = report
            .snapshot
            .as_deref()
            .map(|s| format!(", from snapshot {s}"))
            .unwrap_or_default();
        if report.dry_run {
            outln!(
                "Dry run: nothing pushed or changed in {} ({}{snapshot}); {} images would be restored",
                report.target, report.point, report.images_selected
            );
        } else {
            outln!(
                "Restored {} into {} ({}{snapshot})",
                report.store,
                report.target,
                report.point
            );
        }
        outln!(
            "  images: {} restored, {} already present, {} failed",
            report.images_restored,
            report.images_present,
            report.images_failed.len()
        );
        outln!(
            "  blobs:  {} pushed ({}), {} mounted, {} already present ({} not sent)",
            report.blobs_pushed,
            human_bytes(report.bytes_pushed),
            report.blobs_mounted,
            report.blobs_skipped,
            human_bytes(report.bytes_skipped)
        );
        outln!(
            "  {} manifests and {} tags pushed, {} registry requests, {} retries, {:.1} s",
            report.manifests_pushed,
            report.tags_pushed,
            report.registry_requests,
            report.retries,
            report.elapsed_seconds
        );
        for repo in &report.repositories_created {
            outln!("  created ECR repository {repo}");
        }
        if let Some(settings) = &report.settings {
            let verb = if settings.dry_run { "would set" } else { "set" };
            for c in &settings.changes {
                outln!("  {verb} {} of {}: {}", c.setting, c.subject, c.value);
            }
            for c in &settings.held_back {
                outln!("  held back {} of {}: {}", c.setting, c.subject, c.value);
            }
            for repo in &settings.without_settings {
                outln!("  no settings in the store for {repo}");
            }
        }
    }
    for failed in &report.images_failed {
        let tags = if failed.tags.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = failed.tags.iter().map(|t| t.as_str()).collect();
            format!(" (tags {})", names.join(", "))
        };
        eprintln!(
            "failed: {}@{}{tags}: {}",
            failed.repository, failed.digest, failed.error
        );
    }
    Ok(())
}

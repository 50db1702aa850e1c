//! `ecr-backup drill`: restore a random sample of the latest run into a scratch prefix of
//! a registry, compare every digest, clean up, and record the result in the store.

use anyhow::{Context, Result};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::wayback::drill::{self, DrillOptions, DrillOutcome, Sample};
use ecr_backup_shared::wayback::restore::RestoreOptions;

use super::credentials::{self, CredentialFlags};
use super::Global;
use crate::progress::human_bytes;
use crate::Outcome;

/// Arguments of `drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// Registry to restore the sample into (under --scratch-prefix): `host[:port]`,
    /// `http://host:port`, or an ECR registry (scratch repositories are created, then
    /// deleted).
    #[arg(long, env = "ECR_BACKUP_TARGET")]
    target: String,
    /// Reach the target's data plane at this URL instead (a proxy, a local mirror).
    #[arg(long, env = "ECR_BACKUP_TARGET_ENDPOINT")]
    target_endpoint: Option<String>,
    /// Target credentials as `USER:PASSWORD` (ECR logs in by itself).
    #[arg(long, env = "ECR_BACKUP_TARGET_CREDENTIALS", hide_env_values = true)]
    target_credentials: Option<String>,
    /// User name for `--password-stdin`.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the target registry's password from stdin (with `--username`).
    #[arg(long, conflicts_with = "target_credentials")]
    password_stdin: bool,
    /// Read target credentials from this file only.
    #[arg(long, value_name = "PATH", conflicts_with = "target_credentials")]
    authfile: Option<std::path::PathBuf>,
    /// Repository prefix the sample is restored under; nothing outside it is touched.
    #[arg(long, value_name = "PREFIX", default_value = drill::DEFAULT_SCRATCH_PREFIX)]
    scratch_prefix: String,
    /// Images to restore, picked at random from the latest complete run.
    #[arg(long, value_name = "N", conflicts_with = "sample_percent")]
    sample: Option<usize>,
    /// Or this percentage of the run's images (rounded up, at least one).
    #[arg(long, value_name = "PERCENT")]
    sample_percent: Option<f64>,
    /// Images restored at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print the outcome (with the drill record) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `drill`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let sample = match (args.sample, args.sample_percent) {
        (_, Some(p)) => Sample::parse(&format!("{p}%"))?,
        (Some(n), None) => Sample::parse(&n.to_string())?,
        (None, None) => Sample::Count(drill::DEFAULT_SAMPLE),
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
    let options = DrillOptions {
        sample,
        scratch_prefix: args.scratch_prefix,
        restore: RestoreOptions {
            image_concurrency: args.concurrency,
            ..RestoreOptions::default()
        },
    };
    let outcome = drill::drill(&store, &target, &options).await?;
    print_outcome(&outcome, args.json, global.quiet)?;
    Ok(if outcome.record.passed {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

fn print_outcome(outcome: &DrillOutcome, json: bool, quiet: bool) -> Result<()> {
    let r = &outcome.record;
    if json {
        outln!("{}", serde_json::to_string_pretty(outcome)?);
    } else if !quiet {
        outln!(
            "Drill {} of {} (run {}) into {} under {}/: {}",
            r.id,
            outcome.store,
            r.run,
            r.target,
            r.scratch_prefix,
            if r.passed { "PASSED" } else { "FAILED" }
        );
        let blobs: u64 = r.images.iter().map(|i| i.blobs).sum();
        let bytes: u64 = r.images.iter().map(|i| i.bytes).sum();
        outln!(
            "  images: {} of {} sampled ({}), {} failed; {} blobs re-hashed ({}), {:.1} s",
            r.images.len(),
            r.images_in_run,
            r.sample,
            r.images.iter().filter(|i| !i.ok).count(),
            blobs,
            human_bytes(bytes),
            outcome.elapsed_seconds
        );
        for i in r.images.iter().filter(|i| i.ok) {
            outln!("  ok     {}@{}", i.repository, i.digest);
        }
        outln!(
            "  cleanup ({}): {} images, {} repositories deleted{}",
            r.cleanup.method,
            r.cleanup.images_deleted,
            r.cleanup.repositories_deleted,
            if r.cleanup.complete {
                ""
            } else {
                "; some left behind"
            }
        );
        outln!("  recorded as {}", outcome.key);
    }
    for i in r.images.iter().filter(|i| !i.ok) {
        eprintln!(
            "failed: {}@{}: {}",
            i.repository,
            i.digest,
            i.error.as_deref().unwrap_or("failed")
        );
    }
    for p in &r.problems {
        eprintln!("warning: {p}");
    }
    Ok(())
}

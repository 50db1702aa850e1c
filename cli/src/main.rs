//! `ecr-backup`: back up container images from ECR or any OCI registry into a backup
//! store, and get them back.
//!
//! Exit codes: 0 success; 1 the command ran but some images failed (or a check found a
//! problem); 2 the command could not run (bad arguments, unreachable registry or store).

#[macro_use]
mod output;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "ecr-backup",
    version,
    about = "Immutable backups of container images, and the way back"
)]
pub struct Cli {
    /// Only print errors and the final result.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// AWS region of the S3 store, ECR and SQS (instead of `AWS_REGION` or the profile's).
    #[arg(long, global = true, value_name = "REGION")]
    region: Option<String>,
    #[command(subcommand)]
    command: commands::Command,
}

/// How a command ended.
pub enum Outcome {
    /// Everything worked.
    Success,
    /// It ran, but something it was asked to do failed.
    Partial,
}

fn main() -> ExitCode {
    ecr_backup_shared::memory::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    if let Some(region) = &cli.region {
        ecr_backup_shared::aws::set_region(region);
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let global = commands::Global {
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    let json = cli.command.json();
    match runtime.block_on(commands::run(cli.command, global)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Partial) => ExitCode::from(1),
        Err(e) => {
            report_error(&e, json);
            ExitCode::from(2)
        }
    }
}

/// Prints an error once: its chain on stderr, one cause a line (and, with `--json`, the
/// same chain on stdout, where a script reads the command's output:
/// `{"error": "...", "causes": ["...", ...]}`, outermost first).
fn report_error(e: &anyhow::Error, json: bool) {
    let causes = ecr_backup_shared::error::causes(e.as_ref());
    let (first, rest) = causes.split_first().expect("an error has a message");
    eprintln!("error: {first}");
    for cause in rest {
        eprintln!("  caused by: {cause}");
    }
    if json {
        outln!("{}", serde_json::json!({ "error": first, "causes": rest }));
    }
}

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    // Off EC2, the SDK's last place to look for a region is the instance metadata
    // service, which then warns that it is not there; a missing region is the command's
    // own one-line error, so those warnings are only shown from -vv on.
    let default = if verbose < 2 {
        format!("{default},aws_config::imds=error")
    } else {
        default.to_owned()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECR_BACKUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

//! `ecr-backup export`: one image from a store as an OCI layout or a `docker load` archive.

use std::path::PathBuf;

use anyhow::Result;
use ecr_backup_shared::wayback::export::{self, ExportFormat, ExportOptions, ImageReference};
use ecr_backup_shared::wayback::inventory::PointInTime;

use super::Global;
use crate::progress::human_bytes;
use crate::Outcome;

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// The image: `REPOSITORY:TAG` or `REPOSITORY@sha256:DIGEST`.
    image: String,
    /// `oci-layout` (a directory), `oci-archive` (a tar of one) or `docker-archive`
    /// (a tar for `docker load`, one platform).
    #[arg(long, value_parser = ExportFormat::NAMES)]
    format: String,
    /// Where to write; must not exist (an empty directory is fine for oci-layout).
    #[arg(long, short)]
    output: PathBuf,
    /// `OS/ARCH[/VARIANT]` of a multi-platform image (docker-archive defaults to
    /// linux/amd64; OCI formats keep every platform unless this is given).
    #[arg(long)]
    platform: Option<String>,
    /// Resolve the tag as it was at this time: RFC 3339, or `YYYY-MM-DD` (end of day, UTC).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshot")]
    as_of: Option<String>,
    /// Resolve the tag as this snapshot saw it.
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
    /// Name of the image inside the output (default: the tag for OCI layouts,
    /// REPOSITORY:TAG for docker archives).
    #[arg(long)]
    ref_name: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `export`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let image: ImageReference = args.image.parse()?;
    let format: ExportFormat = args.format.parse().map_err(anyhow::Error::msg)?;
    let point = PointInTime::from_flags(args.as_of.as_deref(), args.snapshot.as_deref())?;
    let store = super::open_store(&args.store).await?;
    let options = ExportOptions {
        format,
        output: args.output,
        platform: args.platform,
        point,
        ref_name: args.ref_name,
    };
    let report = export::export(&store, &image, &options).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else if !global.quiet {
        let platform = report
            .platform
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        outln!(
            "Exported {} {}{platform} to {} as {}",
            report.image,
            report.digest,
            report.output.display(),
            report.format
        );
        outln!(
            "  {} blobs, {}, {:.1} s",
            report.blobs,
            human_bytes(report.bytes),
            report.elapsed_seconds
        );
        if let Some(name) = &report.ref_name {
            outln!("  named {name} inside the output");
        }
    }
    Ok(Outcome::Success)
}

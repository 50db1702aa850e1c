//! `ecr-backup verify`: prove a store is whole, or name what is broken.

use std::sync::Arc;

use anyhow::Result;
use ecr_backup_shared::wayback::verify::{self, ImageName, VerifyOptions, VerifyReport};

use super::Global;
use crate::progress::{human_bytes, Bar};
use crate::Outcome;

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup store: a directory, or `s3://bucket/prefix`.
    #[arg(long, env = "ECR_BACKUP_STORE", default_value = "ecr-backup-store")]
    store: String,
    /// Re-hash every referenced blob (reads the whole store).
    #[arg(long)]
    read_data: bool,
    /// Re-hash only this percentage of blobs, the same ones each time (implies --read-data).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    sample: Option<f64>,
    /// Also check that every image of this snapshot was backed up.
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
    /// Blobs re-hashed at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 100"))
    }
}

/// Runs `verify`.
pub async fn run(args: Args, global: Global) -> Result<Outcome> {
    let store = super::open_store(&args.store).await?;
    let options = VerifyOptions {
        read_data: args.read_data,
        sample_percent: args.sample,
        snapshot: args.snapshot,
        read_concurrency: args.concurrency,
    };
    let bar = Arc::new(Bar::counting(
        global.show_progress(args.json),
        "re-hashing",
        "blobs",
    ));
    let report = verify::verify(&store, &options, bar.clone()).await?;
    bar.finish();
    // The result is recorded in the store (`verifications/`), so `status` can say when the
    // store was last proven whole. A store this user may only read is still verified.
    let record = report.to_record(args.read_data);
    if let Err(e) = store.put_verify_record(&record).await {
        eprintln!(
            "warning: could not record this verify in the store: {}",
            ecr_backup_shared::error::error_chain(&e)
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, global.quiet);
    }
    Ok(if report.is_clean() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

fn image(i: &ImageName) -> String {
    if i.tags.is_empty() {
        format!("{}@{}", i.repository, i.digest)
    } else {
        let tags: Vec<&str> = i.tags.iter().map(|t| t.as_str()).collect();
        format!("{}@{} (tags {})", i.repository, i.digest, tags.join(", "))
    }
}

fn print_report(report: &VerifyReport, quiet: bool) {
    if !quiet {
        let read = if report.blobs_read > 0 || report.sample_percent.is_some() {
            let sample = report
                .sample_percent
                .map(|p| format!(", a {p}% sample"))
                .unwrap_or_default();
            format!(
                "; re-hashed {} blobs ({}{sample})",
                report.blobs_read,
                human_bytes(report.bytes_read)
            )
        } else {
            String::new()
        };
        outln!(
            "Checked {}: {} images, {} tag records, {} blobs ({}){read} in {:.1} s",
            report.store,
            report.images_checked,
            report.tags_checked,
            report.blobs_checked,
            human_bytes(report.bytes_checked),
            report.elapsed_seconds
        );
        if let Some(id) = &report.snapshot {
            outln!("  against snapshot {id}");
        }
    }
    for p in &report.blob_problems {
        outln!("blob {}: {}", p.digest, p.fault);
        for i in &p.images {
            outln!("  breaks {}", image(i));
        }
    }
    for t in &report.dangling_tags {
        outln!(
            "tag {}:{} (observed {}) points at {}, which has no image record",
            t.repository,
            t.tag,
            t.observed_at.to_rfc3339(),
            t.digest
        );
    }
    for r in &report.unreadable_records {
        outln!("record {}: {}", r.key, r.error);
    }
    for i in &report.missing_images {
        outln!(
            "not backed up (in the snapshot, no image record): {}",
            image(i)
        );
    }
    if report.is_clean() {
        if !quiet {
            outln!("OK: no problems found");
        }
    } else {
        outln!(
            "PROBLEMS: {} broken blobs, {} broken images, {} dangling tags, {} unreadable records, {} images missing",
            report.blob_problems.len(),
            report.broken_images.len(),
            report.dangling_tags.len(),
            report.unreadable_records.len(),
            report.missing_images.len()
        );
    }
}

//! Verify: a good store passes; a deleted, truncated or (with `--read-data`) flipped blob
//! fails naming the images it breaks; snapshot images without a record are reported.

use std::sync::Arc;

use anyhow::Result;
use ecr_backup_shared::progress::NoProgress;
use ecr_backup_shared::store::{Layout, StoreError};
use ecr_backup_shared::wayback::inventory::InventoryError;
use ecr_backup_shared::wayback::verify::{
    self, BlobFault, VerifyError, VerifyOptions, VerifyReport,
};
use ecr_backup_shared::Digest;

use crate::common::dir_store_at;
use crate::restore::{cli, run_cli, Fixture};

async fn check(f: &Fixture, options: VerifyOptions) -> Result<VerifyReport> {
    Ok(verify::verify(&f.store, &options, Arc::new(NoProgress)).await?)
}

fn reading() -> VerifyOptions {
    VerifyOptions {
        read_data: true,
        ..VerifyOptions::default()
    }
}

/// The report names `layer` as broken by `fault`, breaking exactly `image` with `tag`.
fn assert_names(
    report: &VerifyReport,
    layer: &Digest,
    image: &Digest,
    tag: &str,
    fault: fn(&BlobFault) -> bool,
) {
    assert!(!report.is_clean());
    assert_eq!(report.blob_problems.len(), 1, "{:#?}", report.blob_problems);
    let problem = &report.blob_problems[0];
    assert_eq!(&problem.digest, layer);
    assert!(fault(&problem.fault), "{:?}", problem.fault);
    assert_eq!(problem.images.len(), 1);
    assert_eq!(&problem.images[0].digest, image);
    assert_eq!(
        problem.images[0]
            .tags
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        vec![tag]
    );
    assert_eq!(report.broken_images.len(), 1);
    assert_eq!(&report.broken_images[0].image.digest, image);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_a_good_store_and_names_broken_blobs_and_images() -> Result<()> {
    let f = Fixture::new("verify", 0).await?;
    let snapshot = f.backup.snapshot.clone();

    let report = check(
        &f,
        VerifyOptions {
            snapshot: Some(snapshot.clone()),
            ..reading()
        },
    )
    .await?;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.images_checked as usize, f.tagged().count());
    // Every unique blob and manifest, child manifests included, was re-hashed.
    let blobs = f.tagged_blobs();
    assert_eq!(report.blobs_checked as usize, blobs.len());
    assert_eq!(report.blobs_read, report.blobs_checked);
    assert_eq!(report.bytes_read, blobs.values().sum::<u64>());
    let output = run_cli(
        cli()
            .args(["verify", "--read-data", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(0));

    let (layer, image) = f.private_layer("app", "release-2");
    let path = f.blob_path(&layer);
    let good = std::fs::read(&path)?;

    // Deleted.
    std::fs::remove_file(&path)?;
    let report = check(&f, VerifyOptions::default()).await?;
    assert_names(&report, &layer, &image, "release-2", |p| {
        matches!(p, BlobFault::Missing)
    });
    let output = run_cli(cli().args(["verify", "--store"]).arg(f.store_dir()));
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("blob {layer}: missing")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}@{image} (tags release-2)", f.repo("app"))),
        "{stdout}"
    );
    let output = run_cli(
        cli()
            .args(["verify", "--json", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["blob_problems"][0]["problem"], "missing");
    assert_eq!(
        json["blob_problems"][0]["images"][0]["digest"],
        image.to_string()
    );

    // Truncated.
    std::fs::write(&path, &good[..good.len() - 100])?;
    let report = check(&f, VerifyOptions::default()).await?;
    assert_names(
        &report,
        &layer,
        &image,
        "release-2",
        |p| matches!(p, BlobFault::WrongSize { expected, actual } if *expected == *actual + 100),
    );

    // One byte flipped: the size is right, so only re-hashing finds it.
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x04;
    std::fs::write(&path, &flipped)?;
    assert!(check(&f, VerifyOptions::default()).await?.is_clean());
    let report = check(&f, reading()).await?;
    assert_names(&report, &layer, &image, "release-2", |p| {
        matches!(p, BlobFault::Corrupt { .. })
    });
    let sampled = check(
        &f,
        VerifyOptions {
            sample_percent: Some(100.0),
            ..VerifyOptions::default()
        },
    )
    .await?;
    assert_eq!(sampled.blob_problems.len(), 1);
    let none = check(
        &f,
        VerifyOptions {
            sample_percent: Some(0.0),
            ..VerifyOptions::default()
        },
    )
    .await?;
    assert!(none.is_clean() && none.blobs_read == 0);
    let output = run_cli(
        cli()
            .args(["verify", "--read-data", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("blob {layer}: corrupt")));

    // A shared base layer breaks every image that uses it.
    std::fs::write(&path, &good)?;
    let base = f
        .tagged()
        .map(|i| i.layers.clone())
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .and_then(|common| common.into_iter().next())
        .expect("the corpus shares base layers");
    std::fs::remove_file(f.blob_path(&base))?;
    let report = check(&f, VerifyOptions::default()).await?;
    assert_eq!(report.blob_problems.len(), 1);
    assert_eq!(report.broken_images.len(), f.tagged().count());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_snapshot_images_without_records_and_refuses_bad_input() -> Result<()> {
    let f = Fixture::new("verify-snapshot", 0).await?;
    let snapshot = f.backup.snapshot.clone();

    // An image whose record is gone: the snapshot still lists it, and its tag records
    // now point at nothing.
    let app = f.repo("app");
    let image = f
        .corpus
        .image(app.as_str(), "build_3")
        .expect("app:build_3")
        .digest
        .clone();
    std::fs::remove_file(f.store_dir().join(Layout::image(&app, &image)))?;
    let report = check(
        &f,
        VerifyOptions {
            snapshot: Some(snapshot.clone()),
            ..VerifyOptions::default()
        },
    )
    .await?;
    assert!(!report.is_clean());
    assert_eq!(
        report.missing_images.len(),
        1,
        "{:#?}",
        report.missing_images
    );
    assert_eq!(report.missing_images[0].digest, image);
    assert_eq!(
        report.missing_images[0]
            .tags
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        vec!["build_3"]
    );
    assert_eq!(report.dangling_tags.len(), 1);
    assert_eq!(report.dangling_tags[0].tag.as_str(), "build_3");

    // Unknown snapshot, and a location that is not a store.
    let err = verify::verify(
        &f.store,
        &VerifyOptions {
            snapshot: Some("20200101T000000Z-000000".into()),
            ..VerifyOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .expect_err("unknown snapshot");
    assert!(
        matches!(
            err,
            VerifyError::Inventory(InventoryError::UnknownSnapshot { .. })
        ),
        "{err:?}"
    );
    let empty = tempfile::tempdir()?;
    let err = verify::verify(
        &dir_store_at(empty.path()),
        &VerifyOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .expect_err("not a store");
    assert!(
        matches!(
            err,
            VerifyError::Inventory(InventoryError::Store(StoreError::NotAStore { .. }))
        ),
        "{err:?}"
    );
    let output = run_cli(cli().args(["verify", "--store"]).arg(empty.path()));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an ecr-backup store"));
    let output = run_cli(
        cli()
            .args(["verify", "--snapshot", "nope", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(2));

    // ls shows the store's contents.
    let output = run_cli(cli().args(["ls", "--json", "--store"]).arg(f.store_dir()));
    assert_eq!(output.status.code(), Some(0));
    let repos: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(
        repos.as_array().map(Vec::len),
        Some(f.corpus.repositories().len())
    );
    let output = run_cli(
        cli()
            .args(["ls", "--json", "--store"])
            .arg(f.store_dir())
            .arg(app.as_str()),
    );
    assert_eq!(output.status.code(), Some(0));
    let detail: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let v1 = detail["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tag"] == "v1.0"))
        .cloned();
    let v1 = v1.expect("v1.0 listed");
    let expected = f.corpus.image(app.as_str(), "v1.0").expect("app:v1.0");
    assert_eq!(v1["digest"], expected.digest.to_string());
    assert_eq!(
        v1["size"],
        expected.manifest_bytes.len() as u64 + expected.blobs.values().sum::<u64>()
    );
    let output = run_cli(
        cli()
            .args(["ls", "--snapshots", "--json", "--store"])
            .arg(f.store_dir()),
    );
    let snapshots: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(snapshots[0]["id"], snapshot);
    Ok(())
}

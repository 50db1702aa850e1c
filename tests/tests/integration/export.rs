//! Export: OCI layouts and archives that stock skopeo copies back with the same digest, a
//! docker archive whose files match the manifest, and refusals that leave no output.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use ecr_backup_shared::wayback::export::{
    self, ExportError, ExportFormat, ExportOptions, ImageReference,
};
use ecr_backup_shared::wayback::inventory::PointInTime;
use ecr_backup_shared::{Digest, RepositoryName};
use serde_json::Value;

use crate::common::skopeo;
use crate::restore::{cli, run_cli, Fixture};

fn options(format: ExportFormat, output: &Path) -> ExportOptions {
    ExportOptions {
        format,
        output: output.to_path_buf(),
        platform: None,
        point: PointInTime::Latest,
        ref_name: None,
    }
}

fn sha256_file(path: &Path) -> Result<Digest> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Digest::of(&bytes))
}

fn host(url: &str) -> &str {
    url.split("://").last().unwrap_or(url)
}

#[tokio::test(flavor = "multi_thread")]
async fn export_oci_layouts_copy_back_with_skopeo_and_the_same_digest() -> Result<()> {
    let f = Fixture::new("export-oci", 0).await?;
    let out = tempfile::tempdir()?;
    let b = f.servers.target_client();
    let registry_b = host(&f.servers.target_registry);

    // One OCI image as a layout directory, named by its tag.
    let app = f.repo("app");
    let image = f.corpus.image(app.as_str(), "v1.0").expect("app:v1.0");
    let layout = out.path().join("app-layout");
    let reference: ImageReference = format!("{app}:v1.0").parse()?;
    let report = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::OciLayout, &layout),
    )
    .await?;
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.blobs as usize, image.blobs.len() + 1);
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    assert_eq!(index["manifests"][0]["digest"], image.digest.to_string());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1.0"
    );
    assert!(layout.join("oci-layout").exists());
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(sha256_file(&entry.path())?.hex(), name);
    }
    let dest = format!("docker://{registry_b}/{}/exported/app:v1.0", f.prefix);
    let skopeo_home = out.path().join("skopeo");
    let copied = skopeo(
        &skopeo_home,
        &[
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1.0", layout.display()),
            &dest,
        ],
    );
    ensure!(
        copied.status.success(),
        "skopeo copy from the layout failed"
    );
    let exported_app: RepositoryName = format!("{}/exported/app", f.prefix).parse()?;
    let head = b.head_manifest(&exported_app, "v1.0").await?;
    assert_eq!(head.map(|h| h.digest), Some(image.digest.clone()));

    // A multi-platform OCI index as an OCI archive, kept whole.
    let multi = f.repo("multi");
    let index_image = f.corpus.image(multi.as_str(), "v1").expect("multi:v1");
    let archive = out.path().join("multi.tar");
    let reference: ImageReference = format!("{multi}:v1").parse()?;
    let report = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::OciArchive, &archive),
    )
    .await?;
    assert_eq!(report.digest, index_image.digest);
    let dest = format!("docker://{registry_b}/{}/exported/multi:v1", f.prefix);
    let copied = skopeo(
        &skopeo_home,
        &[
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}:v1", archive.display()),
            &dest,
        ],
    );
    ensure!(
        copied.status.success(),
        "skopeo copy from the archive failed"
    );
    let exported_multi: RepositoryName = format!("{}/exported/multi", f.prefix).parse()?;
    let fetched = b.get_manifest(&exported_multi, "v1").await?;
    assert_eq!(fetched.digest, index_image.digest);
    assert_eq!(fetched.bytes, index_image.manifest_bytes);

    // By digest through the CLI, named REPOSITORY:TAG inside the layout.
    let by_digest = out.path().join("by-digest");
    let ref_name = format!("{app}:v1.0");
    let output = run_cli(
        cli()
            .args(["export", "--store"])
            .arg(f.store_dir())
            .arg(format!("{app}@{}", image.digest))
            .args([
                "--format",
                "oci-layout",
                "--ref-name",
                &ref_name,
                "--output",
            ])
            .arg(&by_digest),
    );
    assert_eq!(output.status.code(), Some(0));
    let inspected = skopeo(
        &skopeo_home,
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:{ref_name}", by_digest.display()),
        ],
    );
    ensure!(
        inspected.status.success(),
        "skopeo cannot read oci:DIR:{ref_name}"
    );
    assert_eq!(Digest::of(&inspected.stdout), image.digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn export_docker_archive_holds_the_manifest_config_and_layers() -> Result<()> {
    let f = Fixture::new("export-docker", 0).await?;
    let out = tempfile::tempdir()?;
    let a = f.servers.source_client();

    // The OCI index of `multi`: linux/amd64 is picked by default.
    let multi = f.repo("multi");
    let index_image = f.corpus.image(multi.as_str(), "v1").expect("multi:v1");
    let archive = out.path().join("multi-docker.tar");
    let reference: ImageReference = format!("{multi}:v1").parse()?;
    let report = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::DockerArchive, &archive),
    )
    .await?;
    assert_eq!(report.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(report.digest, index_image.children[0]);
    let child: Value = serde_json::from_slice(
        &a.get_manifest(&multi, &report.digest.to_string())
            .await?
            .bytes,
    )?;

    let extracted = out.path().join("extracted");
    std::fs::create_dir_all(&extracted)?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&extracted)
        .status()?;
    ensure!(status.success(), "tar cannot read the archive");
    let manifest: Value = serde_json::from_slice(&std::fs::read(extracted.join("manifest.json"))?)?;
    let entry = &manifest[0];
    assert_eq!(
        entry["RepoTags"],
        serde_json::json!([format!("{multi}:v1")])
    );
    let config_file = entry["Config"].as_str().context("Config")?;
    assert_eq!(
        sha256_file(&extracted.join(config_file))?.to_string(),
        child["config"]["digest"]
    );
    let layer_files: Vec<&str> = entry["Layers"]
        .as_array()
        .context("Layers")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let layer_digests: Vec<&str> = child["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    assert_eq!(layer_files.len(), layer_digests.len());
    for (file, digest) in layer_files.iter().zip(&layer_digests) {
        assert_eq!(
            &sha256_file(&extracted.join(file))?.to_string(),
            digest,
            "{file}"
        );
    }
    // A stock docker-archive reader accepts it; it names layers by their diff_ids.
    let config: Value = serde_json::from_slice(&std::fs::read(extracted.join(config_file))?)?;
    let skopeo_home = out.path().join("skopeo");
    let inspected = skopeo(
        &skopeo_home,
        &["inspect", &format!("docker-archive:{}", archive.display())],
    );
    ensure!(
        inspected.status.success(),
        "skopeo cannot read the docker archive"
    );
    let inspected: Value = serde_json::from_slice(&inspected.stdout)?;
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Layers"], config["rootfs"]["diff_ids"]);
    // And copies it, reading every layer, into a fresh OCI layout.
    let copy = out.path().join("from-docker-archive");
    let copied = skopeo(
        &skopeo_home,
        &[
            "--insecure-policy",
            "copy",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:x", copy.display()),
        ],
    );
    ensure!(
        copied.status.success(),
        "skopeo cannot copy from the docker archive"
    );

    // The Docker manifest list of `dockerlist`, one platform asked for.
    let dockerlist = f.repo("dockerlist");
    let archive = out.path().join("arm.tar");
    let reference: ImageReference = format!("{dockerlist}:v1").parse()?;
    let report = export::export(
        &f.store,
        &reference,
        &ExportOptions {
            platform: Some("linux/arm64".into()),
            ..options(ExportFormat::DockerArchive, &archive)
        },
    )
    .await?;
    assert_eq!(report.platform.as_deref(), Some("linux/arm64/v8"));
    let inspected = skopeo(
        &skopeo_home,
        &["inspect", &format!("docker-archive:{}", archive.display())],
    );
    ensure!(
        inspected.status.success(),
        "skopeo cannot read the arm64 docker archive"
    );

    // A platform the image does not have: the error lists those it has; no output.
    let missing = out.path().join("s390x.tar");
    let err = export::export(
        &f.store,
        &reference,
        &ExportOptions {
            platform: Some("linux/s390x".into()),
            ..options(ExportFormat::DockerArchive, &missing)
        },
    )
    .await
    .expect_err("no such platform");
    assert!(matches!(err, ExportError::NoSuchPlatform { .. }), "{err:?}");
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64/v8"),
        "{err}"
    );
    assert!(!missing.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn export_refuses_unknown_images_and_corrupt_blobs_and_leaves_no_output() -> Result<()> {
    let f = Fixture::new("export-bad", 0).await?;
    let out = tempfile::tempdir()?;
    let app = f.repo("app");

    let target = out.path().join("nope");
    let reference: ImageReference = format!("{app}:nope").parse()?;
    let err = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::OciLayout, &target),
    )
    .await
    .expect_err("unknown tag");
    assert!(matches!(err, ExportError::UnknownImage { .. }), "{err:?}");
    let reference: ImageReference = format!("{app}@{}", Digest::of(b"never pushed")).parse()?;
    let err = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::OciLayout, &target),
    )
    .await
    .expect_err("unknown digest");
    assert!(matches!(err, ExportError::UnknownImage { .. }), "{err:?}");
    assert!(!target.exists());
    let output = run_cli(
        cli()
            .args(["export", "--store"])
            .arg(f.store_dir())
            .arg(format!("{app}:nope"))
            .args(["--format", "docker-archive", "--output"])
            .arg(&target),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("{app}:nope is not in")));
    let output = run_cli(
        cli()
            .args(["export", "--store"])
            .arg(out.path())
            .arg(format!("{app}:v1.0"))
            .args(["--format", "oci-layout", "--output"])
            .arg(&target),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an ecr-backup store"));

    // An existing output is never overwritten.
    let taken = out.path().join("taken.tar");
    std::fs::write(&taken, b"keep me")?;
    let reference: ImageReference = format!("{app}:v1.0").parse()?;
    let err = export::export(
        &f.store,
        &reference,
        &options(ExportFormat::OciArchive, &taken),
    )
    .await
    .expect_err("output exists");
    assert!(matches!(err, ExportError::OutputExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&taken)?, b"keep me");

    // A flipped byte in a layer fails the export, naming the blob; nothing is left.
    let (layer, _) = f.private_layer("app", "release-2");
    let path = f.blob_path(&layer);
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&path, &bytes)?;
    let reference: ImageReference = format!("{app}:release-2").parse()?;
    for format in [
        ExportFormat::OciLayout,
        ExportFormat::OciArchive,
        ExportFormat::DockerArchive,
    ] {
        let output = out.path().join(format!("corrupt-{format}"));
        let err = export::export(&f.store, &reference, &options(format, &output))
            .await
            .expect_err("corrupt layer");
        assert!(
            matches!(&err, ExportError::Corrupt { blob, .. } if blob == &layer),
            "{format}: {err:?}"
        );
        assert!(!output.exists(), "{format}: partial output left");
    }
    let leftovers: Vec<String> = std::fs::read_dir(out.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

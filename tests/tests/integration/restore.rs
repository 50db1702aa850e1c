//! Restore: a disaster-recovery drill from registry A through a store into registry B,
//! restores into ECR (moto's API + the auth registry as data plane), point-in-time
//! restores, idempotence, and refusals that leave nothing half-written tagged.
//!
//! Also the helpers the export and verify tests share: a corpus backed up into a fresh
//! directory store, and a way to run the CLI binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ecr_backup_shared::backup::BackupReport;
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::progress::NoProgress;
use ecr_backup_shared::source::registry::{Credentials, RegistryError};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::{Store, StoreError};
use ecr_backup_shared::wayback::inventory::{parse_time, InventoryError, PointInTime};
use ecr_backup_shared::wayback::restore::{self, Rename, RestoreError, RestoreOptions};

use crate::common::{dir_store_at, try_backup_source};
use ecr_backup_shared::{Digest, RegistryClient, RepositoryName};
use ecr_backup_tests::corpus::{
    push_corpus, push_image, random_layer, Corpus, CorpusImage, CorpusOptions, Format,
};
use ecr_backup_tests::servers::{log_lines, registry_client, unique_prefix, TestServers};

/// A corpus in registry A, backed up into a fresh directory store.
pub struct Fixture {
    pub servers: TestServers,
    pub prefix: String,
    pub corpus: Corpus,
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub backup: BackupReport,
}

impl Fixture {
    /// Pushes the corpus under a new prefix and backs it up.
    pub async fn new(name: &str, big_layer_mib: u64) -> Result<Fixture> {
        let servers = TestServers::from_env();
        let prefix = unique_prefix(name);
        let corpus = push_corpus(
            &servers.source_client(),
            &CorpusOptions {
                prefix: prefix.clone(),
                big_layer_mib,
                seed: 7,
            },
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let store = dir_store_at(&dir.path().join("store"));
        let backup = back_up(&servers, &store, &prefix).await?;
        ensure!(
            backup.is_success(),
            "backup failed: {:?}",
            backup.images_failed
        );
        Ok(Fixture {
            servers,
            prefix,
            corpus,
            dir,
            store,
            backup,
        })
    }

    /// The store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `PREFIX/name`.
    pub fn repo(&self, name: &str) -> RepositoryName {
        format!("{}/{name}", self.prefix)
            .parse()
            .expect("valid name")
    }

    /// The images a backup from a plain registry sees: the tagged ones (`tags/list` cannot
    /// show the others).
    pub fn tagged(&self) -> impl Iterator<Item = &CorpusImage> {
        self.corpus.images.iter().filter(|i| !i.tags.is_empty())
    }

    /// Every blob (manifests included) of the tagged images, with its size.
    pub fn tagged_blobs(&self) -> BTreeMap<Digest, u64> {
        self.tagged()
            .flat_map(|i| {
                i.blobs
                    .iter()
                    .map(|(d, s)| (d.clone(), *s))
                    .chain([(i.digest.clone(), i.manifest_bytes.len() as u64)])
            })
            .collect()
    }

    /// Where a blob lives in the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.store_dir().join("blobs/sha256").join(digest.hex())
    }

    /// A layer that belongs to exactly one image of the corpus, and that image.
    pub fn private_layer(&self, repo: &str, tag: &str) -> (Digest, Digest) {
        let image = self
            .corpus
            .image(self.repo(repo).as_str(), tag)
            .unwrap_or_else(|| panic!("{repo}:{tag} is in the corpus"));
        let layer = image
            .layers
            .iter()
            .find(|l| {
                self.corpus
                    .images
                    .iter()
                    .filter(|i| i.blobs.contains_key(l))
                    .count()
                    == 1
            })
            .expect("every corpus image has a layer of its own")
            .clone();
        (layer, image.digest.clone())
    }
}

/// Backs up everything under `prefix` in registry A into `store`, as the CLI does.
pub async fn back_up(servers: &TestServers, store: &Store, prefix: &str) -> Result<BackupReport> {
    let source = Source::connect(&servers.registry, None, None).await?;
    try_backup_source(&source, prefix, store).await
}

/// Restore options selecting `prefix/**`.
pub fn options_for(prefix: &str) -> RestoreOptions {
    RestoreOptions {
        filter: ImageFilter::new(&[format!("{prefix}/**")], &[], None).expect("valid glob"),
        ..RestoreOptions::default()
    }
}

/// A target for an anonymous registry.
pub fn plain_target(url: &str) -> Source {
    let client = registry_client(url, Credentials::Anonymous);
    Source::from_parts(client.name(), client, None)
}

/// The CLI, with no store taken from the environment.
pub fn cli() -> Command {
    let mut command = Command::new(crate::common::cli_binary());
    command.env_remove("ECR_BACKUP_STORE");
    command
}

/// Runs a CLI command, returning its output; prints it for the test log.
pub fn run_cli(command: &mut Command) -> Output {
    let output = command.output().expect("running ecr-backup");
    eprintln!(
        "ecr-backup exited {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Blob upload requests (POST/PATCH/PUT on `/blobs/uploads/`) for repositories under
/// `prefix` in an access log, after its first `since` lines.
fn blob_uploads(log: &Path, since: usize, prefix: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .skip(since)
        .filter(|l| {
            ["\"POST ", "\"PATCH ", "\"PUT "]
                .iter()
                .any(|m| l.contains(&format!("{m}/v2/{prefix}/")) && l.contains("/blobs/uploads/"))
        })
        .count()
}

/// Every tag of every repository under `prefix` in a registry, with its digest.
async fn registry_state(
    client: &RegistryClient,
    prefix: &str,
) -> Result<BTreeMap<(RepositoryName, String), Digest>> {
    let mut state = BTreeMap::new();
    for repo in client.catalog().await? {
        if !repo.as_str().starts_with(&format!("{prefix}/")) {
            continue;
        }
        for tag in client.tags(&repo).await? {
            let head = client
                .head_manifest(&repo, tag.as_str())
                .await?
                .with_context(|| format!("{repo}:{tag} does not resolve"))?;
            state.insert((repo.clone(), tag.to_string()), head.digest);
        }
    }
    Ok(state)
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_dr_drill_gives_every_digest_back() -> Result<()> {
    let f = Fixture::new("restore-drill", 64).await?;
    let b = f.servers.target_client();
    let options = RestoreOptions {
        include_untagged: true,
        ..options_for(&f.prefix)
    };
    let started = Instant::now();
    let report = restore::run(
        &f.store,
        &plain_target(&f.servers.target_registry),
        &options,
        Arc::new(NoProgress),
    )
    .await?;
    let elapsed = started.elapsed();
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "restored {} images, {:.1} MiB in {:.2?} ({:.0} MiB/s)",
        report.images_restored,
        report.bytes_pushed as f64 / (1 << 20) as f64,
        elapsed,
        report.bytes_pushed as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    ensure!(report.is_success(), "failures: {:?}", report.images_failed);
    assert_eq!(report.images_restored as usize, f.tagged().count());
    assert!(report.bytes_pushed >= f.tagged_blobs().values().sum::<u64>());

    // Every repository, tag and digest of A is in B, and nothing else.
    let a = registry_state(&f.servers.source_client(), &f.prefix).await?;
    let in_b = registry_state(&b, &f.prefix).await?;
    assert_eq!(in_b, a);
    let repos_a: BTreeSet<RepositoryName> = a.keys().map(|(r, _)| r.clone()).collect();
    assert_eq!(repos_a, f.corpus.repositories());
    // Every manifest byte for byte (the OCI index and the Docker manifest list too), every
    // child and blob.
    for image in f.tagged() {
        let fetched = b
            .get_manifest(&image.repository, &image.digest.to_string())
            .await?;
        assert_eq!(
            fetched.bytes, image.manifest_bytes,
            "{}@{}",
            image.repository, image.digest
        );
        for child in &image.children {
            assert!(
                b.manifest_exists(&image.repository, child).await?,
                "child {child}"
            );
        }
        for blob in image.blobs.keys().filter(|d| !image.children.contains(d)) {
            assert!(
                b.blob_exists(&image.repository, blob).await?,
                "{} blob {blob}",
                image.repository
            );
        }
    }

    // A second restore HEADs, skips, and uploads nothing.
    let mark = log_lines(&f.servers.target_registry_log);
    let again = restore::run(
        &f.store,
        &plain_target(&f.servers.target_registry),
        &options,
        Arc::new(NoProgress),
    )
    .await?;
    eprintln!(
        "second restore: {} bytes pushed, {} images present, {:.3} s",
        again.bytes_pushed, again.images_present, again.elapsed_seconds
    );
    ensure!(again.is_success(), "failures: {:?}", again.images_failed);
    assert_eq!(again.bytes_pushed, 0);
    assert_eq!(
        (
            again.blobs_pushed,
            again.blobs_mounted,
            again.manifests_pushed,
            again.tags_pushed
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(again.images_present as usize, f.tagged().count());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        blob_uploads(&f.servers.target_registry_log, mark, &f.prefix),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_mounts_blobs_shared_across_repositories_and_renames() -> Result<()> {
    let f = Fixture::new("restore-rename", 0).await?;
    let new_prefix = unique_prefix("restore-renamed");
    let options = RestoreOptions {
        rename: Some(Rename::parse(&format!("{}/={new_prefix}/", f.prefix))?),
        ..options_for(&f.prefix)
    };
    let mark = log_lines(&f.servers.target_registry_log);
    let report = restore::run(
        &f.store,
        &plain_target(&f.servers.target_registry),
        &options,
        Arc::new(NoProgress),
    )
    .await?;
    ensure!(report.is_success(), "failures: {:?}", report.images_failed);
    // The two base layers are in every repository: uploaded once, mounted elsewhere.
    assert!(report.blobs_mounted >= 2, "{report:?}");
    let b = f.servers.target_client();
    for ((repo, tag), digest) in f.corpus.tags() {
        let renamed: RepositoryName = repo.as_str().replacen(&f.prefix, &new_prefix, 1).parse()?;
        let head = b.head_manifest(&renamed, tag.as_str()).await?;
        assert_eq!(head.map(|h| h.digest), Some(digest), "{renamed}:{tag}");
        assert!(
            b.head_manifest(&repo, tag.as_str()).await?.is_none(),
            "{repo} must not be written"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        blob_uploads(&f.servers.target_registry_log, mark, &f.prefix),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_into_ecr_creates_the_repositories_first() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("restore-ecr");
    let client = servers.source_client();
    let app: RepositoryName = format!("{prefix}/app").parse()?;
    let api: RepositoryName = format!("{prefix}/team/api").parse()?;
    let base = random_layer(41, 64 * 1024);
    let one = push_image(
        &client,
        &app,
        &["v1".parse()?],
        &[base.clone(), random_layer(42, 4096)],
        Format::Oci,
    )
    .await?;
    let two = push_image(
        &client,
        &api,
        &["2.0".parse()?],
        &[base, random_layer(43, 4096)],
        Format::Docker,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    back_up(&servers, &dir_store_at(&store_dir), &prefix).await?;

    // Through the CLI, as an operator would: the ECR API at moto, the data plane at the
    // auth registry, credentials from moto's GetAuthorizationToken.
    let ecr_host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let output = run_cli(
        cli()
            .args(["restore", "--json", "--store"])
            .arg(&store_dir)
            .args([
                "--target",
                ecr_host,
                "--target-endpoint",
                &servers.auth_registry,
            ])
            .args(["--repository", &format!("{prefix}/**")])
            .env("AWS_ENDPOINT_URL_ECR", &servers.moto)
            .env("AWS_REGION", "us-east-1"),
    );
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut created: Vec<String> = serde_json::from_value(report["repositories_created"].clone())?;
    created.sort();
    assert_eq!(created, vec![app.to_string(), api.to_string()]);
    assert_eq!(report["images_restored"], 2);

    // moto's DescribeRepositories knows them, and the data plane has the images.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&servers.moto)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let ecr = aws_sdk_ecr::Client::new(&config);
    let described = ecr
        .describe_repositories()
        .registry_id("123456789012")
        .repository_names(app.as_str())
        .repository_names(api.as_str())
        .send()
        .await?;
    let names: BTreeSet<&str> = described
        .repositories()
        .iter()
        .filter_map(|r| r.repository_name())
        .collect();
    assert_eq!(names, BTreeSet::from([app.as_str(), api.as_str()]));
    let data_plane = servers.auth_client();
    for (repo, tag, image) in [(&app, "v1", &one), (&api, "2.0", &two)] {
        let head = data_plane.head_manifest(repo, tag).await?;
        assert_eq!(
            head.map(|h| h.digest),
            Some(image.digest.clone()),
            "{repo}:{tag}"
        );
    }

    // Again: the repositories exist, nothing is created or pushed.
    let output = run_cli(
        cli()
            .args(["restore", "--json", "--store"])
            .arg(&store_dir)
            .args([
                "--target",
                ecr_host,
                "--target-endpoint",
                &servers.auth_registry,
            ])
            .args(["--repository", &format!("{prefix}/**")])
            .env("AWS_ENDPOINT_URL_ECR", &servers.moto)
            .env("AWS_REGION", "us-east-1"),
    );
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["repositories_created"], serde_json::json!([]));
    assert_eq!(report["bytes_pushed"], 0);
    assert_eq!(report["images_present"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_as_of_gives_the_tag_its_old_digest() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("restore-pit");
    let client = servers.source_client();
    let repo: RepositoryName = format!("{prefix}/app").parse()?;
    let old = push_image(
        &client,
        &repo,
        &["v1".parse()?, "stable".parse()?],
        &[random_layer(51, 8192)],
        Format::Oci,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let store = dir_store_at(&dir.path().join("store"));
    let first = back_up(&servers, &store, &prefix).await?;
    // As of the first run: its snapshot's time.
    let first_taken = store
        .snapshot(&first.snapshot)
        .await?
        .context("the first snapshot")?
        .observed_at;
    // Snapshot ids name the second they were taken in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = push_image(
        &client,
        &repo,
        &["v1".parse()?],
        &[random_layer(52, 8192)],
        Format::Oci,
    )
    .await?;
    back_up(&servers, &store, &prefix).await?;
    assert_ne!(old.digest, new.digest);

    let target = plain_target(&servers.target_registry);
    let b = servers.target_client();
    let restore_under = |point: PointInTime, name: &str| {
        let renamed = format!("{prefix}/{name}");
        let options = RestoreOptions {
            point,
            rename: Some(Rename::parse(&format!("{prefix}/={renamed}/")).expect("valid rule")),
            ..options_for(&prefix)
        };
        let (store, target) = (store.clone(), target.clone());
        async move {
            let report = restore::run(&store, &target, &options, Arc::new(NoProgress)).await?;
            ensure!(report.is_success(), "failures: {:?}", report.images_failed);
            anyhow::Ok(format!("{renamed}/app").parse::<RepositoryName>()?)
        }
    };
    let digest_of = |repo: RepositoryName, tag: &'static str| {
        let b = b.clone();
        async move { anyhow::Ok(b.head_manifest(&repo, tag).await?.map(|h| h.digest)) }
    };

    let then = restore_under(PointInTime::AsOf(first_taken), "then").await?;
    assert_eq!(
        digest_of(then.clone(), "v1").await?,
        Some(old.digest.clone())
    );
    assert_eq!(digest_of(then, "stable").await?, Some(old.digest.clone()));
    let now = restore_under(PointInTime::Latest, "now").await?;
    assert_eq!(
        digest_of(now.clone(), "v1").await?,
        Some(new.digest.clone())
    );
    assert_eq!(digest_of(now, "stable").await?, Some(old.digest.clone()));
    let snap = restore_under(PointInTime::Snapshot(first.snapshot.clone()), "snap").await?;
    assert_eq!(digest_of(snap, "v1").await?, Some(old.digest.clone()));
    // A time before any backup has nothing to restore.
    let before = restore::run(
        &store,
        &target,
        &RestoreOptions {
            point: PointInTime::AsOf(parse_time("2000-01-01")?),
            ..options_for(&prefix)
        },
        Arc::new(NoProgress),
    )
    .await?;
    assert_eq!(before.images_restored + before.images_present, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_bad_input_and_tags_nothing_half_written() -> Result<()> {
    let f = Fixture::new("restore-bad", 0).await?;
    let auth = f.servers.auth_client();

    // A target that refuses the credentials stops the run before anything is pushed.
    let wrong = registry_client(
        &f.servers.auth_registry,
        Credentials::from_user_password("AWS:not-the-token").expect("user:password"),
    );
    let err = restore::run(
        &f.store,
        &Source::from_parts(wrong.name(), wrong, None),
        &options_for(&f.prefix),
        Arc::new(NoProgress),
    )
    .await
    .expect_err("wrong credentials must be refused");
    assert!(
        matches!(
            &err,
            RestoreError::Target {
                source: RegistryError::Unauthorized { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        ecr_backup_shared::error::error_chain(&err).contains("authentication failed"),
        "{err}"
    );
    for ((repo, tag), _) in f.corpus.tags() {
        assert!(
            auth.head_manifest(&repo, tag.as_str()).await?.is_none(),
            "{repo}:{tag} was pushed"
        );
    }

    // An unknown snapshot and a location that is not a store are clear errors.
    let target = plain_target(&f.servers.target_registry);
    let err = restore::run(
        &f.store,
        &target,
        &RestoreOptions {
            point: PointInTime::Snapshot("20200101T000000Z-000000".into()),
            ..options_for(&f.prefix)
        },
        Arc::new(NoProgress),
    )
    .await
    .expect_err("unknown snapshot");
    assert!(
        matches!(
            err,
            RestoreError::Inventory(InventoryError::UnknownSnapshot { .. })
        ),
        "{err:?}"
    );
    let empty = tempfile::tempdir()?;
    let err = restore::run(
        &dir_store_at(empty.path()),
        &target,
        &options_for(&f.prefix),
        Arc::new(NoProgress),
    )
    .await
    .expect_err("not a store");
    assert!(
        matches!(
            err,
            RestoreError::Inventory(InventoryError::Store(StoreError::NotAStore { .. }))
        ),
        "{err:?}"
    );
    // The CLI maps both to exit code 2 with the reason.
    let out = run_cli(
        cli()
            .args(["restore", "--store"])
            .arg(empty.path())
            .args(["--target", &f.servers.target_registry]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an ecr-backup store"));
    let out = run_cli(cli().args(["restore", "--store"]).arg(f.store_dir()).args([
        "--target",
        &f.servers.target_registry,
        "--snapshot",
        "nope",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot \"nope\""));

    // A corrupt layer fails its image only; that image is not tagged, its manifest and
    // the corrupt blob are not in the target, and every other image is restored.
    let (layer, broken) = f.private_layer("app", "release-2");
    let path = f.blob_path(&layer);
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes)?;
    let b = f.servers.target_client();
    let report = restore::run(
        &f.store,
        &target,
        &options_for(&f.prefix),
        Arc::new(NoProgress),
    )
    .await?;
    assert_eq!(report.images_failed.len(), 1, "{:?}", report.images_failed);
    let failed = &report.images_failed[0];
    assert_eq!(failed.digest, broken);
    assert!(
        failed.error.contains(&layer.to_string()) && failed.error.contains("corrupt"),
        "{}",
        failed.error
    );
    let app = f.repo("app");
    assert!(
        b.head_manifest(&app, "release-2").await?.is_none(),
        "half-written image tagged"
    );
    assert!(!b.manifest_exists(&app, &broken).await?);
    assert!(
        !b.blob_exists(&app, &layer).await?,
        "corrupt bytes reached the target"
    );
    for ((repo, tag), digest) in f.corpus.tags() {
        if digest != broken {
            let head = b.head_manifest(&repo, tag.as_str()).await?;
            assert_eq!(head.map(|h| h.digest), Some(digest), "{repo}:{tag}");
        }
    }
    // Through the CLI: exit code 1 naming the image.
    let out = run_cli(cli().args(["restore", "--store"]).arg(f.store_dir()).args([
        "--target",
        &f.servers.target_registry,
        "--repository",
        &format!("{}/**", f.prefix),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{app}@{broken}")) && stderr.contains("release-2"),
        "{stderr}"
    );
    Ok(())
}

/// `--trusted-before`: a forged tag record (with an `observedAt` of the forger's choosing)
/// moves `v1` to an image the forger put into the store, and a later run writes a new
/// snapshot. A plain restore follows the forgery; a restore trusting only what was
/// written before the vault's last recovery point refuses, names every late record and
/// pushes nothing; pinned to a point before the forgery it restores the real image.
#[tokio::test(flavor = "multi_thread")]
async fn restore_trusted_before_refuses_records_written_after_it() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("restore-trust");
    let client = servers.source_client();
    let repo: RepositoryName = format!("{prefix}/app").parse()?;
    let good = push_image(
        &client,
        &repo,
        &["v1".parse()?],
        &[random_layer(61, 8192)],
        Format::Oci,
    )
    .await?;
    let (_s3, store, bucket) = crate::common::s3_store(&servers.moto, "trust").await;
    let first = back_up(&servers, &store, &prefix).await?;
    // S3 write times have whole seconds: the trusted time is a second after the first
    // run's last write, and every later write is a second after that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let trusted = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The forger's image enters the store under another tag of the repository, then a
    // tag record points v1 at it.
    let evil = push_image(
        &client,
        &repo,
        &["staging".parse()?],
        &[random_layer(62, 8192)],
        Format::Oci,
    )
    .await?;
    let second = back_up(&servers, &store, &prefix).await?;
    assert!(second.images_copied >= 1, "{second:?}");
    let forged = ecr_backup_shared::store::records::TagRecord {
        version: 1,
        repository: repo.clone(),
        tag: "v1".parse()?,
        digest: evil.digest.clone(),
        observed_at: chrono::Utc::now(),
    };
    store.put_tag_record(&forged).await?;

    let target = plain_target(&servers.target_registry);
    let b = servers.target_client();
    let restore_as = |name: &str, point: PointInTime, trusted_before| {
        let renamed = format!("{prefix}/{name}");
        let options = RestoreOptions {
            point,
            trusted_before,
            rename: Some(Rename::parse(&format!("{prefix}/={renamed}/")).expect("valid rule")),
            ..options_for(&prefix)
        };
        let (store, target) = (store.clone(), target.clone());
        let repo: RepositoryName = format!("{renamed}/app").parse().expect("valid name");
        async move {
            (
                restore::run(&store, &target, &options, Arc::new(NoProgress)).await,
                repo,
            )
        }
    };

    // Unpinned, the forgery wins: this is what the check is for.
    let (report, plain) = restore_as("plain", PointInTime::Latest, None).await;
    assert!(report?.is_success());
    assert_eq!(
        b.head_manifest(&plain, "v1").await?.map(|h| h.digest),
        Some(evil.digest.clone())
    );

    // Trusting only what was written before `trusted`: refused, every late record named.
    let (refused, checked) = restore_as("checked", PointInTime::Latest, Some(trusted)).await;
    let err = refused.expect_err("late records must be refused");
    let RestoreError::Untrusted { records, .. } = &err else {
        panic!("expected Untrusted, got {err}");
    };
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let tag_key =
        ecr_backup_shared::store::Layout::tag(&repo, &forged.tag, &evil.digest, forged.observed_at);
    assert!(keys.contains(&tag_key.as_str()), "{keys:?}");
    let image_key = ecr_backup_shared::store::Layout::image(&repo, &evil.digest);
    assert!(keys.contains(&image_key.as_str()), "{keys:?}");
    assert!(
        keys.contains(&format!("snapshots/{}.json", second.snapshot).as_str()),
        "the later run's snapshot: {keys:?}"
    );
    assert!(records.iter().all(|r| r.written_at > trusted));
    let text = err.to_string();
    assert!(
        text.contains(&tag_key) && text.contains("nothing was pushed"),
        "{text}"
    );
    assert!(
        b.head_manifest(&checked, "v1").await?.is_none(),
        "nothing pushed"
    );

    // Pinned before the forgery, with the same trust: the real image.
    for (name, point) in [
        ("snap", PointInTime::Snapshot(first.snapshot.clone())),
        ("asof", PointInTime::AsOf(trusted)),
    ] {
        let (report, restored) = restore_as(name, point, Some(trusted)).await;
        let report = report?;
        assert!(report.is_success(), "{name}: {:?}", report.images_failed);
        assert_eq!(
            b.head_manifest(&restored, "v1").await?.map(|h| h.digest),
            Some(good.digest.clone()),
            "{name}"
        );
    }

    // The CLI flag: refused with the key named, exit code of an error.
    let output = run_cli(
        cli()
            .args(["restore", "--store", &format!("s3://{bucket}/backup")])
            .args(["--target", &servers.target_registry])
            .args(["--repository", &format!("{prefix}/**")])
            .args(["--rename", &format!("{prefix}/={prefix}/cli/")])
            .args(["--trusted-before", &trusted.to_rfc3339()])
            .env("AWS_ENDPOINT_URL", &servers.moto),
    );
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&tag_key), "{stderr}");
    Ok(())
}

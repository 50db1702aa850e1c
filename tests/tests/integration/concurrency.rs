//! Two backups of the same registry into the same store at once (two CLI processes): the
//! store ends consistent and verified, and no blob is downloaded more than once per
//! process (the second finds it in the store, or both raced for it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ecr_backup_shared::store::{Backend, ByteStream, ObjectInfo, StoreError, WriteOutcome};

use ecr_backup_tests::corpus::{push_corpus, CorpusOptions};
use ecr_backup_tests::servers::{self, TestServers};

use crate::common::*;
use crate::faults::assert_s3_store_consistent;

/// Starts `ecr-backup backup` of the repositories under `prefix` into `store`.
fn spawn_backup(servers: &TestServers, prefix: &str, store: &str) -> std::process::Child {
    std::process::Command::new(cli_binary())
        .args([
            "backup",
            "--source",
            &servers.registry,
            "--store",
            store,
            "--repository",
            &format!("{}/**", prefix.trim_end_matches('/')),
            "--json",
        ])
        .env("AWS_ENDPOINT_URL", &servers.moto)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ecr-backup")
}

/// Runs two backups at once; returns their reports and the registry's blob GETs per digest.
async fn two_at_once(
    servers: &TestServers,
    prefix: &str,
    store: &str,
) -> (Vec<serde_json::Value>, BTreeMap<String, usize>, f64) {
    let log_start = servers::log_lines(&servers.registry_log);
    let started = Instant::now();
    let children = [
        spawn_backup(servers, prefix, store),
        spawn_backup(servers, prefix, store),
    ];
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for out in outputs {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        reports.push(serde_json::from_slice(&out.stdout).expect("a JSON report"));
    }
    // The access log is written as requests finish; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut gets = BTreeMap::new();
    let p = prefix.trim_end_matches('/');
    for g in servers::blob_gets(&servers.registry_log, log_start) {
        if g.repository.starts_with(p) {
            *gets.entry(g.digest.to_string()).or_insert(0) += 1;
        }
    }
    (reports, gets, elapsed)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_backups_into_one_store_at_once_end_consistent_without_duplicate_downloads() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("twice");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 24;
    let corpus = push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    tokio::task::spawn_blocking(cli_binary).await.unwrap();
    let tagged = corpus.images.iter().filter(|i| !i.tags.is_empty()).count();
    let unique: u64 = corpus
        .images
        .iter()
        .filter(|i| !i.tags.is_empty())
        .flat_map(|i| i.blobs.iter())
        .collect::<BTreeMap<_, _>>()
        .values()
        .copied()
        .sum();

    // A directory store.
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("store");
    let (reports, gets, dir_elapsed) = two_at_once(&servers, &prefix, root.to_str().unwrap()).await;
    let (code, out, err) = run_cli(&["verify", "--read-data", "--store", root.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let blobs = assert_dir_store_consistent(&root);
    assert!(!gets.is_empty(), "no blob GETs found in the access log");
    let most = gets.values().copied().max().unwrap_or(0);
    assert!(most <= 2, "a blob was downloaded {most} times: {gets:?}");
    let copied: u64 = reports
        .iter()
        .map(|r| r["images_copied"].as_u64().unwrap() + r["images_present"].as_u64().unwrap())
        .sum();
    assert_eq!(
        copied as usize,
        2 * tagged,
        "each run accounts for every image"
    );
    let downloaded: u64 = reports
        .iter()
        .map(|r| r["bytes_copied"].as_u64().unwrap())
        .sum();
    let twice: usize = gets.values().filter(|&&n| n == 2).count();
    let snapshots = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert_eq!(snapshots, 2, "one snapshot per run");

    // An S3 store (conditional writes settle the races there).
    let (client, _, bucket) = s3_store(&servers.moto, "twice").await;
    let (s3_reports, s3_gets, s3_elapsed) =
        two_at_once(&servers, &prefix, &format!("s3://{bucket}/backup")).await;
    let s3_blobs = assert_s3_store_consistent(&client, &bucket).await;
    assert_eq!(s3_blobs.len(), blobs.len());
    let s3_most = s3_gets.values().copied().max().unwrap_or(0);
    assert!(
        s3_most <= 2,
        "a blob was downloaded {s3_most} times: {s3_gets:?}"
    );
    let out = std::process::Command::new(cli_binary())
        .args([
            "verify",
            "--read-data",
            "--store",
            &format!("s3://{bucket}/backup"),
        ])
        .env("AWS_ENDPOINT_URL", &servers.moto)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s3_twice: usize = s3_gets.values().filter(|&&n| n == 2).count();
    println!(
        "FIGURES concurrency: directory store: {} blobs, {twice} of them downloaded by both runs, {} bytes written by the two runs for {unique} unique bytes, {dir_elapsed:.1} s; S3 store: {} of {} blobs downloaded by both runs, {:.1} s; verify --read-data passes on both",
        gets.len(),
        downloaded,
        s3_twice,
        s3_gets.len(),
        s3_elapsed
    );
    for r in &s3_reports {
        assert_eq!(r["images_failed"].as_array().map(Vec::len), Some(0), "{r}");
    }
}

/// A directory store whose blob lookups answer late: the first lookup of a key returns at
/// once, every later one only after `delay` (with the answer read before the delay, as a
/// slow S3 HEAD or a busy disk would give it).
struct LateLookups {
    inner: Arc<dyn Backend>,
    delay: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl Backend for LateLookups {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let answer = self.inner.stat(key).await;
        let first = self.seen.lock().unwrap().insert(key.to_owned());
        if !first && key.starts_with("blobs/") {
            tokio::time::sleep(self.delay).await;
        }
        answer
    }
    async fn read(&self, key: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        self.inner.read(key).await
    }
    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.inner.open(key).await
    }
    async fn write(&self, key: &str, bytes: bytes::Bytes) -> Result<(), StoreError> {
        self.inner.write(key, bytes).await
    }
    async fn write_verified(
        &self,
        key: &str,
        digest: &ecr_backup_shared::Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.write_verified(key, digest, size, bytes).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
}

/// Two images of one run share a layer; the second image's store lookup of it answers
/// "absent" only after the first image has finished copying it (and released its
/// in-flight lock). The engine must not download the layer again: under load, that
/// window made one run download a blob twice and the two-backups test see three GETs.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_layer_finished_during_a_slow_lookup_is_not_downloaded_again() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("late");
    let client = servers.source_client();
    let repo = ecr_backup_tests::corpus::repository(&prefix, "app").unwrap();
    let shared = ecr_backup_tests::corpus::random_layer(rand::random(), 256 * 1024);
    for (tag, own) in [("a", 1u64), ("b", 2u64)] {
        let own = ecr_backup_tests::corpus::random_layer(rand::random::<u64>() ^ own, 4 * 1024);
        ecr_backup_tests::corpus::push_image(
            &client,
            &repo,
            &[tag.parse().unwrap()],
            &[shared.clone(), own],
            ecr_backup_tests::corpus::Format::Oci,
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(LateLookups {
        inner: Arc::new(ecr_backup_shared::store::DirBackend::new(
            dir.path().join("store"),
        )),
        delay: std::time::Duration::from_millis(700),
        seen: Default::default(),
    });
    let store = ecr_backup_shared::Store::new(backend);
    let log_start = servers::log_lines(&servers.registry_log);
    let report = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let shared_digest = ecr_backup_tests::corpus::sha256(&shared);
    let gets = servers::blob_gets(&servers.registry_log, log_start)
        .into_iter()
        .filter(|g| g.digest == shared_digest)
        .count();
    assert_eq!(gets, 1, "downloads of the shared layer by one run");
}

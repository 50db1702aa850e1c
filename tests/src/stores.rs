//! Stores and backups for tests: directory stores in temporary directories, S3 stores in
//! new buckets on the test S3 server, AWS clients configured as the project configures its
//! own, and a backup of a prefix run through the library as the CLI runs it.

use std::path::Path;
use std::sync::Arc;

use ecr_backup_shared::backup::{self, BackupReport, RunOptions};
use ecr_backup_shared::copy::CopyEngine;
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::progress::NoProgress;
use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::{DirBackend, S3Backend, S3Location, Store, StoreLocation};

/// The AWS settings the project itself uses (retry mode and attempts included), with every
/// request sent to `endpoint` (moto, or a fault proxy in front of it).
pub async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    ecr_backup_shared::aws::sdk_config()
        .await
        .into_builder()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .build()
}

/// An S3 client built like the project's, path-style, reaching S3 through `endpoint`.
pub async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_config(endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// A store under `s3://bucket/backup`, through `client`.
pub fn s3_store_in(client: aws_sdk_s3::Client, bucket: &str) -> Store {
    let location = S3Location::parse(&format!("s3://{bucket}/backup")).expect("bucket name");
    Store::new(Arc::new(S3Backend::new(client, location)))
}

/// A new bucket on the test S3 server, and a store in it under `backup/`; returns the
/// client, the store and the bucket's name.
pub async fn s3_store(moto: &str, name: &str) -> (aws_sdk_s3::Client, Store, String) {
    let client = s3_client(moto).await;
    let bucket = format!("{name}-{:08x}", rand::random::<u32>());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let store = s3_store_in(client.clone(), &bucket);
    (client, store, bucket)
}

/// A directory store at `path`.
pub fn dir_store_at(path: &Path) -> Store {
    Store::new(Arc::new(DirBackend::new(path)))
}

/// A directory store in a fresh temporary directory (kept alive by the returned guard),
/// at `store/` inside it.
pub async fn dir_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&StoreLocation::Dir(dir.path().join("store"))).await;
    (dir, store)
}

/// Backs up the repositories under `prefix` of a connected source into `store`, as
/// `ecr-backup backup` does.
pub async fn try_backup_source(
    source: &Source,
    prefix: &str,
    store: &Store,
) -> anyhow::Result<BackupReport> {
    let engine = CopyEngine::for_source(source, store.clone());
    let options = RunOptions {
        filter: ImageFilter::new(&[format!("{}/**", prefix.trim_end_matches('/'))], &[], None)?,
        image_concurrency: 4,
        prices: Default::default(),
    };
    Ok(backup::run(source, &engine, &options, Arc::new(NoProgress)).await?)
}

/// [`try_backup_source`], panicking on a failure of the run itself.
pub async fn backup_source(source: &Source, prefix: &str, store: &Store) -> BackupReport {
    try_backup_source(source, prefix, store)
        .await
        .expect("backup run")
}

/// Backs up the repositories under `prefix` of `registry` into `store`.
pub async fn backup_prefix(
    registry: &str,
    credentials: Option<Credentials>,
    prefix: &str,
    store: &Store,
) -> BackupReport {
    let source = Source::connect(registry, None, credentials)
        .await
        .expect("source");
    backup_source(&source, prefix, store).await
}

//! The fault matrix: backups through a fault-injecting proxy in front of the real registry
//! and the real S3 server, crashes of the CLI, and the queue's duplicate, out-of-order and
//! late deliveries. Every case asserts the end state of the store (and of the queue where
//! it matters), not only that the code returned. `docs/reliability.md` lists the results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use ecr_backup_shared::copy::{CopyEngine, CopyOptions, CopyRequest};
use ecr_backup_shared::pipeline::message::{Message, Reason};
use ecr_backup_shared::pipeline::queue::{ReceivedMessage, SqsQueue};
use ecr_backup_shared::pipeline::worker::Worker;
use ecr_backup_shared::progress::NoProgress;
use ecr_backup_shared::source::ecr::{EcrApi, EcrCredentials};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::tag_view::tag_view;
use ecr_backup_shared::store::{Layout, Store};
use ecr_backup_shared::{Digest, RegistryClient, RepositoryName, Tag};
use ecr_backup_tests::corpus::{
    push_corpus, push_image, push_small_image, random_layer, repository, Corpus, CorpusImage,
    CorpusOptions, Format,
};
use ecr_backup_tests::fault_proxy::{Fault, FaultProxy, Flavor, RandomFaults, Rule, When};
use ecr_backup_tests::servers::{self, TestServers};
use ecr_backup_worker::WorkerContext;
use rand::{Rng, SeedableRng};
use sha2::{Digest as _, Sha256};

use crate::common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A proxy in front of the test registry.
pub(crate) async fn registry_proxy(servers: &TestServers) -> FaultProxy {
    FaultProxy::start(&servers.registry, Flavor::Registry)
        .await
        .expect("start the fault proxy")
}

/// Checks an S3 store by hand, like [`assert_dir_store_consistent`]: every blob hashes to
/// its key, every image record's manifests and blobs exist with their sizes, and no
/// multipart upload was left open. Returns the blob keys and sizes.
pub(crate) async fn assert_s3_store_consistent(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> BTreeMap<String, u64> {
    let mut objects = BTreeMap::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix("backup/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            objects.insert(
                o.key().unwrap()["backup/".len()..].to_owned(),
                o.size().unwrap_or(0) as u64,
            );
        }
    }
    let read = |key: String| async move {
        client
            .get_object()
            .bucket(bucket)
            .key(format!("backup/{key}"))
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
    };
    let mut blobs = BTreeMap::new();
    for (key, size) in &objects {
        let Some(hex) = key.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let bytes = read(key.clone()).await;
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            hex,
            "S3 blob {key} does not hash to its name"
        );
        blobs.insert(key.clone(), *size);
    }
    for key in objects.keys().filter(|k| k.contains("/_images/")) {
        let record: ecr_backup_shared::store::records::ImageRecord =
            serde_json::from_slice(&read(key.clone()).await).unwrap();
        for (digest, size) in std::iter::once((&record.digest, Some(record.size)))
            .chain(record.manifests.iter().map(|m| (&m.digest, Some(m.size))))
            .chain(record.blobs.iter().map(|b| (&b.digest, Some(b.size))))
        {
            let stored = blobs.get(&Layout::blob(digest));
            assert!(stored.is_some(), "{key} names missing blob {digest}");
            assert_eq!(stored.copied(), size, "{key}: size of {digest}");
        }
    }
    assert_no_open_multipart_uploads(client, bucket).await;
    blobs
}

/// Throttling and 5xx answers that came from the server itself, not from the proxy (the
/// test servers rarely send any; each costs a retry like an injected one).
pub(crate) fn upstream_errors(proxy: &FaultProxy) -> u64 {
    proxy
        .log()
        .iter()
        .filter(|r| r.fault.is_none() && r.status.is_some_and(|s| s == 429 || s >= 500))
        .count() as u64
}

/// GETs of a blob that the registry answered with its bytes (faulted or not).
fn answered_gets(proxy: &FaultProxy, digest: &Digest) -> usize {
    let path = format!("/blobs/{digest}");
    proxy
        .log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&path) && r.status == Some(200))
        .count()
}

/// Keys (and sizes) of every blob the tagged images of a corpus reach.
fn tagged_blobs(corpus: &Corpus) -> BTreeMap<String, u64> {
    let mut wanted = BTreeMap::new();
    for image in corpus.images.iter().filter(|i| !i.tags.is_empty()) {
        wanted.insert(
            Layout::blob(&image.digest),
            image.manifest_bytes.len() as u64,
        );
        for (d, size) in &image.blobs {
            wanted.insert(Layout::blob(d), *size);
        }
    }
    wanted
}

/// The tag view of a store, as the corpus's tags are compared with it.
async fn tags_of(store: &Store) -> BTreeMap<(RepositoryName, Tag), Digest> {
    let listing = store.listing(None).await.unwrap();
    tag_view(store, &listing, None).await.unwrap()
}

/// Files left in a directory store's `tmp/`.
fn temp_files(store_dir: &Path) -> usize {
    std::fs::read_dir(store_dir.join("tmp")).map_or(0, |d| d.count())
}

fn corpus_options(prefix: &str, big_layer_mib: u64) -> CorpusOptions {
    let mut options = CorpusOptions::new(prefix);
    options.big_layer_mib = big_layer_mib;
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_5xx_storms_on_the_registry_end_in_a_complete_backup_with_every_retry_counted(
) {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("storm");
    let corpus = push_corpus(&servers.source_client(), &corpus_options(&prefix, 0))
        .await
        .unwrap();
    let proxy = registry_proxy(&servers).await;
    // The first request of the run (the registry's `_catalog`) is throttled with Retry-After: 2, so the
    // whole run must wait that long.
    proxy.add_rule(Rule::new(
        "GET",
        "/v2/_catalog",
        When::Nth(1),
        Fault::TooManyRequests {
            retry_after_seconds: 2,
        },
    ));
    proxy.set_random(Some(RandomFaults {
        seed: 0x5eed_0001,
        probability: 0.25,
        faults: vec![
            Fault::TooManyRequests {
                retry_after_seconds: 1,
            },
            Fault::ServerError { status: 500 },
            Fault::ServerError { status: 503 },
        ],
        method: "*".into(),
        path_contains: "/v2/".into(),
        max_faults: 24,
        max_in_a_row: 3,
    }));

    let (dir, store) = dir_store().await;
    let started = Instant::now();
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    let elapsed = started.elapsed();

    assert!(report.is_success(), "{:?}", report.images_failed);
    let tagged = corpus.images.iter().filter(|i| !i.tags.is_empty()).count();
    assert_eq!(report.images_copied as usize, tagged);
    assert_eq!(tags_of(&store).await, corpus.tags());
    let blobs = assert_dir_store_consistent(&dir.path().join("store"));
    assert_eq!(blobs.len(), tagged_blobs(&corpus).len());
    let injected = proxy.faults_injected();
    assert!(injected >= 10, "the storm was too small: {injected} faults");
    // Every fault cost exactly one retry of its request, and the report counts them all.
    assert_eq!(
        report.retries,
        injected + upstream_errors(&proxy),
        "retries in the report"
    );
    assert_eq!(report.registry_requests as usize, proxy.requests());
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured ({elapsed:?})"
    );
    println!(
        "FIGURES registry storm: {} requests, {injected} faults (429/500/503), report.retries {}, {} images, {:.1} s",
        proxy.requests(),
        report.retries,
        report.images_copied,
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowdown_and_5xx_storms_on_s3_end_in_a_complete_backup() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("s3storm");
    // A 12 MiB layer: written as a multipart upload, so parts are faulted too.
    let corpus = push_corpus(&servers.source_client(), &corpus_options(&prefix, 12))
        .await
        .unwrap();
    let (direct, _, bucket) = s3_store(&servers.moto, "s3storm").await;
    let proxy = FaultProxy::start(&servers.moto, Flavor::S3).await.unwrap();
    // Two SlowDowns, on a blob upload and on a blob HEAD. Each one makes the SDK's
    // adaptive retry mode slow the whole client down for seconds (which is what it is
    // for), so there are only two.
    for (method, nth) in [("PUT", 2), ("HEAD", 5)] {
        proxy.add_rule(Rule::new(
            method,
            format!("/{bucket}/backup/blobs/sha256/"),
            When::Nth(nth),
            Fault::ServerError { status: 503 },
        ));
    }
    // And a storm of 500s on everything.
    proxy.set_random(Some(RandomFaults {
        seed: 0x5eed_0002,
        probability: 0.2,
        faults: vec![Fault::ServerError { status: 500 }],
        method: "*".into(),
        path_contains: format!("/{bucket}"),
        max_faults: 12,
        max_in_a_row: 2,
    }));
    let store = s3_store_in(s3_client(&proxy.url()).await, &bucket);

    let started = Instant::now();
    let report = backup_prefix(&servers.registry, None, &prefix, &store).await;
    let elapsed = started.elapsed();

    assert!(report.is_success(), "{:?}", report.images_failed);
    let tagged = corpus.images.iter().filter(|i| !i.tags.is_empty()).count();
    assert_eq!(report.images_copied as usize, tagged);
    let blobs = assert_s3_store_consistent(&direct, &bucket).await;
    assert_eq!(blobs, tagged_blobs(&corpus));
    let direct_store = s3_store_in(direct.clone(), &bucket);
    assert_eq!(tags_of(&direct_store).await, corpus.tags());
    let injected = proxy.faults_injected();
    assert!(injected >= 6, "the storm was too small: {injected} faults");
    let slowdowns = proxy.log().iter().filter(|r| r.status == Some(503)).count();
    assert_eq!(slowdowns, 2);
    // Each S3 call is retried by the SDK; the report counts those retries too.
    assert_eq!(
        report.retries,
        injected + upstream_errors(&proxy),
        "retries in the report"
    );
    println!(
        "FIGURES S3 storm: {} S3 requests, {injected} faults ({slowdowns} SlowDown 503), report.retries {}, {:.1} s",
        proxy.requests(),
        report.retries,
        elapsed.as_secs_f64()
    );
}

/// Layers of the `big` image of a corpus, largest first.
fn big_layers(corpus: &Corpus) -> Vec<Digest> {
    let big = corpus
        .images
        .iter()
        .find(|i| i.repository.as_str().ends_with("/big"))
        .expect("a big image");
    let mut layers: Vec<&Digest> = big.layers.iter().collect();
    layers.sort_by_key(|d| std::cmp::Reverse(big.blobs[*d]));
    layers.into_iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn resets_and_truncation_mid_blob_leave_no_partial_object_and_are_retried() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("cut");
    let corpus = push_corpus(&servers.source_client(), &corpus_options(&prefix, 20))
        .await
        .unwrap();
    // big (20 MiB), then the 1 MiB and the 512 KiB base layers.
    let layers = big_layers(&corpus);
    let (big, base1, base0) = (&layers[0], &layers[1], &layers[2]);
    let faults = |proxy: &FaultProxy| {
        // Past the first 8 MiB part, so an S3 store has a multipart upload open.
        proxy.add_rule(Rule::new(
            "GET",
            format!("/blobs/{big}"),
            When::Nth(1),
            Fault::ResetBody { after: 12 * MIB },
        ));
        proxy.add_rule(Rule::new(
            "GET",
            format!("/blobs/{base1}"),
            When::Nth(1),
            Fault::TruncateBody { after: 300 * KIB },
        ));
        proxy.add_rule(Rule::new(
            "GET",
            format!("/blobs/{base0}"),
            When::Nth(1),
            Fault::ResetBody { after: 100 * KIB },
        ));
        proxy.add_rule(Rule::new(
            "GET",
            "/manifests/sha256:",
            When::Nth(2),
            Fault::TruncateBody { after: 40 },
        ));
    };
    let wanted = tagged_blobs(&corpus);

    // Into a directory store.
    let proxy = registry_proxy(&servers).await;
    faults(&proxy);
    let (dir, store) = dir_store().await;
    let started = Instant::now();
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    let dir_elapsed = started.elapsed();
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(proxy.faults_injected(), 4);
    assert!(report.retries >= 4, "report.retries {}", report.retries);
    let root = dir.path().join("store");
    let blobs = assert_dir_store_consistent(&root);
    assert_eq!(blobs.len(), wanted.len());
    assert_eq!(temp_files(&root), 0, "partial files left in tmp/");
    assert_eq!(tags_of(&store).await, corpus.tags());
    let dir_retries = report.retries;

    // Into an S3 store: the reset of the big layer aborts an open multipart upload; and
    // on the way to S3, the upload of a part is reset after 4 MiB of its body.
    let proxy = registry_proxy(&servers).await;
    faults(&proxy);
    let (client, _, bucket) = s3_store(&servers.moto, "cut").await;
    let s3_proxy = FaultProxy::start(&servers.moto, Flavor::S3).await.unwrap();
    s3_proxy.add_rule(Rule::new(
        "PUT",
        "partNumber=2&",
        When::Nth(1),
        Fault::ResetRequestBody { after: 4 * MIB },
    ));
    let store = s3_store_in(s3_client(&s3_proxy.url()).await, &bucket);
    let started = Instant::now();
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    let s3_elapsed = started.elapsed();
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(proxy.faults_injected(), 4);
    assert_eq!(
        s3_proxy.faults_injected(),
        1,
        "an upload was reset mid-body: {:#?}",
        s3_proxy
            .log()
            .iter()
            .filter(|r| r.method != "HEAD")
            .collect::<Vec<_>>()
    );
    assert!(report.retries >= 5, "report.retries {}", report.retries);
    assert_eq!(assert_s3_store_consistent(&client, &bucket).await, wanted);
    assert_eq!(tags_of(&store).await, corpus.tags());
    assert_eq!(
        proxy.blob_gets()[&big.to_string()],
        2,
        "big layer fetched twice"
    );
    println!(
        "FIGURES resets/truncation: 4 faults; directory store report.retries {dir_retries}, {:.1} s; S3 store (and a part upload reset after 4 MiB) report.retries {}, {:.1} s",
        dir_elapsed.as_secs_f64(),
        report.retries,
        s3_elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_corrupted_on_every_attempt_is_never_stored_and_once_is_retried() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("flip");
    let client = servers.source_client();
    let repo = repository(&prefix, "app").unwrap();
    let bad = push_small_image(&client, &repo, "bad", 300 * KIB)
        .await
        .unwrap();
    let good = push_small_image(&client, &repo, "good", 200 * KIB)
        .await
        .unwrap();
    let layer = bad.layers.iter().next().unwrap().clone();

    // Every download of the layer has one byte flipped.
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{layer}"),
        When::Every,
        Fault::FlipByte { offset: 1000 },
    ));
    let (dir, store) = dir_store().await;
    let started = Instant::now();
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    let elapsed = started.elapsed();
    assert_eq!(report.images_failed.len(), 1, "{report:?}");
    let failure = &report.images_failed[0];
    assert_eq!(failure.digest, bad.digest);
    assert!(
        failure.error.contains("digest mismatch"),
        "{}",
        failure.error
    );
    assert!(
        failure.error.contains(&layer.to_string()),
        "{}",
        failure.error
    );
    assert_eq!(report.images_copied, 1, "the good image is backed up");
    assert!(
        store.blob_size(&layer).await.unwrap().is_none(),
        "corrupt blob stored"
    );
    assert!(store
        .image_record(&repo, &bad.digest)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .image_record(&repo, &good.digest)
        .await
        .unwrap()
        .is_some());
    let listing = store.listing(Some(&repo)).await.unwrap();
    let bad_tag: Tag = "bad".parse().unwrap();
    assert!(
        !listing[&repo].tags.contains_key(&bad_tag),
        "the failed image's tag was recorded"
    );
    let root = dir.path().join("store");
    assert_dir_store_consistent(&root);
    assert_eq!(temp_files(&root), 0);
    // Bounded: the first attempt and the copy engine's three retries.
    let gets = answered_gets(&proxy, &layer);
    assert_eq!(gets, 4, "downloads of the corrupt layer");
    assert_eq!(report.retries, 3 + upstream_errors(&proxy));
    println!(
        "FIGURES flip every attempt: {gets} downloads, report.retries {}, image failed with digest mismatch, {:.1} s",
        report.retries,
        elapsed.as_secs_f64()
    );

    // Flipped once: the retry gets good bytes and the image is backed up.
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{layer}"),
        When::Nth(1),
        Fault::FlipByte { offset: 1000 },
    ));
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 1);
    assert_eq!(report.retries, 1 + upstream_errors(&proxy));
    assert_eq!(answered_gets(&proxy, &layer), 2);
    assert!(store
        .image_record(&repo, &bad.digest)
        .await
        .unwrap()
        .is_some());
    assert_dir_store_consistent(&root);
    println!("FIGURES flip once: 2 downloads, report.retries 1, image backed up");

    // A manifest corrupted once in transit: refused by digest, fetched again, backed up.
    let third = push_small_image(&client, &repo, "third", 20 * KIB)
        .await
        .unwrap();
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/manifests/{}", third.digest),
        When::Nth(1),
        Fault::FlipByte { offset: 10 },
    ));
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 1);
    assert!(report.retries >= 1);
    assert_eq!(
        proxy.count("GET", &format!("/manifests/{}", third.digest)),
        2
    );
    assert_dir_store_consistent(&root);
    println!(
        "FIGURES manifest flipped once: fetched twice, report.retries {}, image backed up",
        report.retries
    );
}

/// Registers images (already pushed to the auth registry) in moto's ECR API, with their
/// real digests, creating the repository.
pub(crate) async fn register_in_ecr(
    servers: &TestServers,
    repo: &RepositoryName,
    images: &[(&CorpusImage, Option<String>)],
) {
    let ecr = aws_sdk_ecr::Client::new(&aws_config(&servers.moto).await);
    ecr.create_repository()
        .repository_name(repo.as_str())
        .send()
        .await
        .unwrap();
    for (image, tag) in images {
        ecr.put_image()
            .repository_name(repo.as_str())
            .image_manifest(String::from_utf8(image.manifest_bytes.to_vec()).unwrap())
            .image_manifest_media_type(&image.media_type)
            .image_digest(image.digest.to_string())
            .set_image_tag(tag.clone())
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_registry_token_mid_run_is_refreshed_and_the_run_completes() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("expired");
    let auth = servers.auth_client();
    let repo = repository(&prefix, "svc").unwrap();
    let mut images = Vec::new();
    for n in 0..3u64 {
        images.push(
            push_small_image(&auth, &repo, &format!("v{n}"), 64 * KIB + n)
                .await
                .unwrap(),
        );
    }
    let tagged: Vec<(&CorpusImage, Option<String>)> = images
        .iter()
        .enumerate()
        .map(|(n, i)| (i, Some(format!("v{n}"))))
        .collect();
    register_in_ecr(&servers, &repo, &tagged).await;

    // The ECR API and the registry's data plane both behind proxies: the first counts
    // GetAuthorizationToken calls, the second says the token expired on one blob GET.
    let api_proxy = FaultProxy::start(&servers.moto, Flavor::S3).await.unwrap();
    let data_proxy = FaultProxy::start(&servers.auth_registry, Flavor::Registry)
        .await
        .unwrap();
    data_proxy.add_rule(Rule::new(
        "GET",
        "/blobs/",
        When::Nth(2),
        Fault::Unauthorized {
            challenge: r#"Basic realm="x""#.into(),
        },
    ));
    let api = EcrApi::new(
        aws_sdk_ecr::Client::new(&aws_config(&api_proxy.url()).await),
        Some("123456789012".into()),
    );
    let registry = RegistryClient::new(
        ecr_backup_shared::source::registry::parse_registry_url(&data_proxy.url()).unwrap(),
        Arc::new(EcrCredentials::new(api.clone())),
    )
    .unwrap();
    let source = Source::from_parts(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
        registry,
        Some(api),
    );
    let (dir, store) = dir_store().await;
    let report = backup_source(&source, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 3);
    assert_eq!(data_proxy.faults_injected(), 1);
    let unauthorized = data_proxy
        .log()
        .iter()
        .filter(|r| r.status == Some(401))
        .count();
    assert_eq!(unauthorized, 1, "only the injected 401");
    let logins = api_proxy.count_operation("GetAuthorizationToken");
    assert_eq!(logins, 2, "one login, and one refresh after the 401");
    for image in &images {
        assert!(store
            .image_record(&repo, &image.digest)
            .await
            .unwrap()
            .is_some());
    }
    assert_dir_store_consistent(&dir.path().join("store"));
    println!(
        "FIGURES expired token: 1 injected 401, {logins} GetAuthorizationToken calls, {} images backed up, report.retries {}",
        report.images_copied, report.retries
    );
}

/// Runs the CLI off the async threads.
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args)
    })
    .await
    .unwrap()
}

/// What a directory store holds: (blobs, image records, tag records, temporary files).
fn store_census(root: &Path) -> (usize, usize, usize, usize) {
    let count = |dir: &Path, wanted: &dyn Fn(&Path) -> bool| -> usize {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if wanted(&p) {
                    n += 1;
                }
            }
        }
        n
    };
    let in_dir = |name: &'static str| move |p: &Path| p.components().any(|c| c.as_os_str() == name);
    (
        count(&root.join("blobs"), &|_| true),
        count(&root.join("repositories"), &in_dir("_images")),
        count(&root.join("repositories"), &in_dir("_tags")),
        count(&root.join("tmp"), &|_| true),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_then_a_rerun_leaves_a_verified_store() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("sigkill");
    let corpus = push_corpus(&servers.source_client(), &corpus_options(&prefix, 8))
        .await
        .unwrap();
    let tagged = corpus.images.iter().filter(|i| !i.tags.is_empty()).count();
    // Latency on every request spreads a run over a couple of seconds, so kill points
    // land in enumeration, blob transfers, records, the snapshot and the index.
    // The big layer streams at 8 MiB/s, so some kills land in the middle of it.
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{}", big_layers(&corpus)[0]),
        When::Every,
        Fault::SlowBody {
            bytes_per_second: 8 * MIB,
        },
    ));
    proxy.add_rule(Rule::new(
        "*",
        "/v2/",
        When::Every,
        Fault::Latency(Duration::from_millis(80)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let backup_args = |source: &str, store: &Path| -> Vec<String> {
        [
            "backup",
            "--source",
            source,
            "--store",
            store.to_str().unwrap(),
            "--repository",
            &format!("{prefix}/**"),
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Built (if needed) before anything is timed.
    tokio::task::spawn_blocking(cli_binary).await.unwrap();
    // A run that is not killed, to learn how long one takes.
    let reference = dir.path().join("reference");
    let started = Instant::now();
    let (code, _, stderr) = cli(backup_args(&proxy.url(), &reference)).await;
    let full = started.elapsed();
    assert_eq!(code, 0, "{stderr}");

    let mut figures = Vec::new();
    for seed in 1..=6u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let kill_at = full.mul_f64(rng.random_range(0.2..0.97));
        let store_dir = dir.path().join(format!("store-{seed}"));
        let mut child = std::process::Command::new(cli_binary())
            .args(backup_args(&proxy.url(), &store_dir))
            .spawn()
            .unwrap();
        tokio::time::sleep(kill_at).await;
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Crash-consistent as it was left: no record names a missing blob.
        assert_dir_store_consistent(&store_dir);
        let at_kill = store_census(&store_dir);

        // Re-run, straight to the registry.
        let (code, _, stderr) = cli(backup_args(&servers.registry, &store_dir)).await;
        assert_eq!(code, 0, "re-run after kill at {kill_at:?}: {stderr}");
        let store_arg = store_dir.to_str().unwrap().to_owned();
        let (code, out, err) = cli(vec![
            "verify".into(),
            "--read-data".into(),
            "--store".into(),
            store_arg,
        ])
        .await;
        assert_eq!(code, 0, "verify after kill at {kill_at:?}: {out}{err}");
        assert_dir_store_consistent(&store_dir);
        let (_, images, _, temp_left) = store_census(&store_dir);
        assert_eq!(images, tagged, "image records after the re-run");
        figures.push(format!(
            "seed {seed}: killed at {:.2} s{} holding {} blobs, {} image records, {} tag records, {} temp files ({} left after the re-run)",
            kill_at.as_secs_f64(),
            if still_running { "" } else { " (already finished)" },
            at_kill.0,
            at_kill.1,
            at_kill.2,
            at_kill.3,
            temp_left
        ));
    }
    println!(
        "FIGURES sigkill: full run {:.2} s; {}",
        full.as_secs_f64(),
        figures.join("; ")
    );
}

/// A worker Lambda context over `store`, copying from `source`, on a new moto queue.
pub(crate) async fn worker_context(
    servers: &TestServers,
    source: &Source,
    store: &Store,
    options: CopyOptions,
) -> (WorkerContext, Arc<Worker>, SqsQueue) {
    let sqs = aws_sdk_sqs::Client::new(&aws_config(&servers.moto).await);
    let name = format!("faults-{:08x}", rand::random::<u32>());
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "2",
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let queue = SqsQueue::new(sqs, url);
    let engine = CopyEngine::for_source(source, store.clone()).with_options(options);
    let worker = Arc::new(Worker::new(engine, source.clone(), queue.clone(), None));
    (WorkerContext::new(worker.clone(), 4), worker, queue)
}

/// An SQS event as Lambda delivers it, one record per `(message id, body)`.
pub(crate) fn sqs_event(records: &[(String, String, u32)]) -> SqsEvent {
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|(id, body, receives)| {
            serde_json::json!({
                "messageId": id,
                "receiptHandle": format!("handle-{id}"),
                "body": body,
                "attributes": {"ApproximateReceiveCount": receives.to_string()},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

pub(crate) fn failed_ids(response: &SqsBatchResponse) -> BTreeSet<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// Everything a store says about a repository: image records, the tag log, the tag view.
type StoreState = (
    BTreeSet<Digest>,
    BTreeSet<(Tag, Digest, chrono::DateTime<Utc>)>,
    BTreeMap<(RepositoryName, Tag), Digest>,
);

async fn state_of(store: &Store, repo: &RepositoryName) -> StoreState {
    let listing = store.listing(Some(repo)).await.unwrap();
    let r = &listing[repo];
    let images = r.images.keys().cloned().collect();
    let log = r
        .tags
        .iter()
        .flat_map(|(t, entries)| {
            entries
                .iter()
                .map(move |e| (t.clone(), e.digest.clone(), e.observed_at))
        })
        .collect();
    (images, log, tag_view(store, &listing, None).await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_and_out_of_order_deliveries_end_in_the_same_state_as_one_in_order_delivery() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("dup");
    let client = servers.source_client();
    let repo = repository(&prefix, "app").unwrap();
    let tag: Tag = "stable".parse().unwrap();
    // The tag moved from A to B: pushed on A, then on B.
    let a = push_image(
        &client,
        &repo,
        std::slice::from_ref(&tag),
        &[random_layer(rand::random(), 100 * KIB)],
        Format::Oci,
    )
    .await
    .unwrap();
    let b = push_image(
        &client,
        &repo,
        std::slice::from_ref(&tag),
        &[random_layer(rand::random(), 100 * KIB)],
        Format::Docker,
    )
    .await
    .unwrap();
    let t1 = Utc::now() - chrono::Duration::minutes(10);
    let t2 = t1 + chrono::Duration::minutes(1);
    let message = |digest: &Digest, at| {
        Message::copy(
            &CopyRequest {
                repository: repo.clone(),
                digest: digest.clone(),
                tags: vec![tag.clone()],
                observed_at: at,
            },
            Reason::Push,
            None,
        )
        .to_body()
    };
    let (msg_a, msg_b) = (message(&a.digest, t1), message(&b.digest, t2));
    let source = Source::connect(&servers.registry, None, None)
        .await
        .unwrap();

    // One in-order delivery: A, then B.
    let (_d1, in_order) = dir_store().await;
    let (ctx, _, _) = worker_context(&servers, &source, &in_order, CopyOptions::default()).await;
    for (id, body) in [("a", &msg_a), ("b", &msg_b)] {
        let response =
            ecr_backup_worker::handle(&ctx, sqs_event(&[(id.into(), body.clone(), 1)])).await;
        assert!(failed_ids(&response).is_empty());
    }
    let expected = state_of(&in_order, &repo).await;
    assert_eq!(expected.2[&(repo.clone(), tag.clone())], b.digest);

    // Reversed and duplicated, one message per batch: B, A, B, A.
    let (d2, reversed) = dir_store().await;
    let (ctx, _, _) = worker_context(&servers, &source, &reversed, CopyOptions::default()).await;
    for (n, body) in [&msg_b, &msg_a, &msg_b, &msg_a].into_iter().enumerate() {
        let response =
            ecr_backup_worker::handle(&ctx, sqs_event(&[(format!("m{n}"), body.clone(), 1)])).await;
        assert!(failed_ids(&response).is_empty());
    }
    assert_eq!(state_of(&reversed, &repo).await, expected);
    assert_dir_store_consistent(&d2.path().join("store"));

    // All at once in one batch, duplicates running concurrently: B, A, B, A, then again.
    let (d3, concurrent) = dir_store().await;
    let (ctx, _, _) = worker_context(&servers, &source, &concurrent, CopyOptions::default()).await;
    let batch: Vec<(String, String, u32)> = [&msg_b, &msg_a, &msg_b, &msg_a]
        .iter()
        .enumerate()
        .map(|(n, body)| (format!("c{n}"), (*body).clone(), 1))
        .collect();
    for _ in 0..2 {
        let response = ecr_backup_worker::handle(&ctx, sqs_event(&batch)).await;
        assert!(failed_ids(&response).is_empty(), "{response:?}");
    }
    let got = state_of(&concurrent, &repo).await;
    assert_eq!(got, expected);
    assert_eq!(
        got.2[&(repo.clone(), tag.clone())],
        b.digest,
        "the tag says B"
    );
    assert_dir_store_consistent(&d3.path().join("store"));
    println!(
        "FIGURES duplicates/out of order: {} image records, {} tag records, tag view {}:{} -> B in all three deliveries",
        expected.0.len(),
        expected.1.len(),
        repo,
        tag
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_runs_out_of_time_is_redelivered_and_does_not_download_finished_blobs_again()
{
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("timeout");
    let repo = repository(&prefix, "big").unwrap();
    let layers: Vec<_> = (0..4u64)
        .map(|n| random_layer(rand::random::<u64>() ^ n, 3 * MIB))
        .collect();
    let image = push_image(
        &servers.source_client(),
        &repo,
        &["v1".parse().unwrap()],
        &layers,
        Format::Oci,
    )
    .await
    .unwrap();
    // Blobs are copied one at a time, in digest order. Slow down a layer that has at
    // least one blob before it and one after it.
    let order: Vec<Digest> = image.blobs.keys().cloned().collect();
    let slow_at = (1..order.len() - 1)
        .find(|&i| image.layers.contains(&order[i]))
        .expect("a layer in the middle");
    let slow = order[slow_at].clone();
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{slow}"),
        When::Nth(1),
        Fault::SlowBody {
            bytes_per_second: 256 * KIB,
        },
    ));
    let source = Source::connect(&proxy.url(), None, None).await.unwrap();
    let (dir, store) = dir_store().await;
    let options = CopyOptions {
        blob_concurrency: 1,
        ..CopyOptions::default()
    };
    let (ctx, worker, queue) = worker_context(&servers, &source, &store, options).await;
    let body = Message::copy(
        &CopyRequest {
            repository: repo.clone(),
            digest: image.digest.clone(),
            tags: vec!["v1".parse().unwrap()],
            observed_at: Utc::now(),
        },
        Reason::Schedule,
        None,
    )
    .to_body();
    queue
        .send_raw(&[ecr_backup_shared::pipeline::queue::OutgoingMessage {
            body: body.clone(),
            attributes: Default::default(),
        }])
        .await
        .unwrap();

    // First delivery: the invocation runs out of time in the middle of the slow layer.
    let started = Instant::now();
    let first: Vec<ReceivedMessage> = queue.receive(5, 0).await.unwrap();
    assert_eq!(first.len(), 1);
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), worker.run_task(&first[0].body)).await;
    assert!(
        attempt.is_err(),
        "the first attempt should have run out of time"
    );
    let mut finished = Vec::new();
    for d in &order {
        if store.blob_size(d).await.unwrap().is_some() {
            finished.push(d.clone());
        }
    }
    assert!(!finished.is_empty(), "no blob finished before the timeout");
    assert!(!finished.contains(&slow), "the slow layer finished");
    assert!(store
        .image_record(&repo, &image.digest)
        .await
        .unwrap()
        .is_none());
    assert_dir_store_consistent(&dir.path().join("store"));

    // Not deleted: hidden for the visibility timeout, then delivered again.
    assert!(
        queue.receive(5, 0).await.unwrap().is_empty(),
        "visible while in flight"
    );
    tokio::time::sleep_until((started + Duration::from_millis(5500)).into()).await;
    let second = queue.receive(30, 0).await.unwrap();
    assert_eq!(second.len(), 1, "the message came back");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    let response = ecr_backup_worker::handle(
        &ctx,
        sqs_event(&[(
            second[0].message_id.clone(),
            second[0].body.clone(),
            second[0].receive_count,
        )]),
    )
    .await;
    assert!(failed_ids(&response).is_empty(), "{response:?}");
    queue.delete(&[&second[0]]).await.unwrap();
    let total = started.elapsed();

    assert!(store
        .image_record(&repo, &image.digest)
        .await
        .unwrap()
        .is_some());
    assert_dir_store_consistent(&dir.path().join("store"));
    let gets = proxy.blob_gets();
    for d in &finished {
        assert_eq!(
            gets[&d.to_string()],
            1,
            "{d} finished in the first attempt and was downloaded again"
        );
    }
    assert_eq!(
        gets[&slow.to_string()],
        2,
        "the interrupted layer is fetched again"
    );
    let refetched: u64 = order
        .iter()
        .filter(|d| gets[&d.to_string()] > 1)
        .map(|d| image.blobs[d])
        .sum();
    println!(
        "FIGURES worker timeout: {} of {} blobs finished before the 3 s timeout, re-delivered after the visibility timeout (receive count 2); second attempt downloaded only the interrupted layer again ({} bytes re-fetched); {:.1} s in all",
        finished.len(),
        order.len(),
        refetched,
        total.as_secs_f64()
    );
}

/// A registry that answers 503 for ever is asked a bounded number of times: one retry
/// layer per request (the client's policy for a manifest, the engine's for a blob), not a
/// retry loop around a send that retries. The counts are those of the default policies;
/// only the delays are shortened here, so the test does not wait out the backoff.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_503_is_asked_a_bounded_number_of_times_with_a_clear_error() {
    use ecr_backup_shared::source::registry::RetryPolicy;
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("stuck");
    let client = servers.source_client();
    let repo = repository(&prefix, "app").unwrap();
    let manifest_image = push_small_image(&client, &repo, "m", 10 * KIB)
        .await
        .unwrap();
    let blob_image = push_small_image(&client, &repo, "b", 20 * KIB)
        .await
        .unwrap();
    let layer = blob_image.layers.iter().next().unwrap().clone();
    let proxy = registry_proxy(&servers).await;
    proxy.add_rule(Rule::new(
        "GET",
        format!("/manifests/{}", manifest_image.digest),
        When::Every,
        Fault::ServerError { status: 503 },
    ));
    proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{layer}"),
        When::Every,
        Fault::ServerError { status: 503 },
    ));
    let fast = |max_retries| RetryPolicy {
        max_retries,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    let client_retries = RetryPolicy::default().max_retries;
    let blob_retries = CopyOptions::default().retry.max_retries;
    let source = Source::connect(&proxy.url(), None, None).await.unwrap();
    let registry = source.registry().clone().with_retry(fast(client_retries));
    let source = Source::from_parts(source.name().to_owned(), registry.clone(), None);
    let (_dir, store) = dir_store().await;
    let engine = CopyEngine::for_source(&source, store.clone()).with_options(CopyOptions {
        retry: fast(blob_retries),
        ..CopyOptions::default()
    });
    let report = ecr_backup_shared::backup::run(
        &source,
        &engine,
        &ecr_backup_shared::backup::RunOptions {
            filter: ecr_backup_shared::filter::ImageFilter::new(
                &[format!("{prefix}/**")],
                &[],
                None,
            )
            .unwrap(),
            image_concurrency: 2,
            prices: Default::default(),
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let asked = |path: String| {
        proxy
            .log()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains(&path))
            .count()
    };
    let manifest_gets = asked(format!("/manifests/{}", manifest_image.digest));
    let blob_gets = asked(format!("/blobs/{layer}"));
    assert_eq!(
        manifest_gets,
        client_retries + 1,
        "GETs of a manifest that always answers 503"
    );
    assert_eq!(
        blob_gets,
        blob_retries + 1,
        "GETs of a blob that always answers 503"
    );
    assert_eq!(report.images_failed.len(), 2, "{report:?}");
    for failure in &report.images_failed {
        assert!(failure.error.contains("HTTP 503"), "{}", failure.error);
    }
    let blob_failure = report
        .images_failed
        .iter()
        .find(|f| f.digest == blob_image.digest)
        .expect("the blob's image failed");
    assert!(
        blob_failure.error.contains(&layer.to_string()),
        "the error names the blob: {}",
        blob_failure.error
    );
    println!(
        "FIGURES persistent 503: manifest asked {manifest_gets} times, blob {blob_gets} times (default policies: {client_retries} and {blob_retries} retries)"
    );
}

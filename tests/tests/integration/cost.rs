//! Cost figures: every backup's summary says bytes new and deduplicated, objects written,
//! requests by kind and what the store costs a month; `ecr-backup du` says what each
//! repository alone holds and what it shares, by age. Against a directory store and an
//! S3 store (moto), whose requests a counting proxy checks one by one.

use std::collections::BTreeMap;
use std::path::Path;

use ecr_backup_shared::cost::BACKUP_MIN_OBJECT_BYTES;
use ecr_backup_shared::{Digest, RepositoryName, Tag};
use ecr_backup_tests::corpus::{push_image, random_layer, repository, CorpusImage, Format};
use ecr_backup_tests::fault_proxy::{FaultProxy, Flavor};
use ecr_backup_tests::servers::{self, TestServers};
use serde_json::Value;

use crate::common::*;

/// Two repositories whose images share a base layer: `a` (base + its own layer) and `b`
/// (base + its own layer, OCI format).
struct Shared {
    prefix: String,
    a: CorpusImage,
    b: CorpusImage,
    base: (Digest, u64),
}

async fn push_two_repositories_sharing_a_layer(servers: &TestServers, name: &str) -> Shared {
    let prefix = servers::unique_prefix(name);
    let client = servers.source_client();
    let base = random_layer(rand::random(), 300_000);
    let tag: Tag = "v1".parse().unwrap();
    let push = |repo: RepositoryName, own: u64, format: Format| {
        let layers = [base.clone(), random_layer(rand::random(), own)];
        let client = client.clone();
        let tag = tag.clone();
        async move {
            push_image(&client, &repo, &[tag], &layers, format)
                .await
                .unwrap()
        }
    };
    let a = push(repository(&prefix, "a").unwrap(), 200_000, Format::Docker).await;
    let b = push(repository(&prefix, "b").unwrap(), 100_000, Format::Oci).await;
    let base = (Digest::of(&base), base.len() as u64);
    Shared { prefix, a, b, base }
}

/// Bytes an image alone reaches, given the shared base: its manifest, config and own layer.
fn own_bytes(image: &CorpusImage, base: &Digest) -> u64 {
    image.manifest_bytes.len() as u64
        + image
            .blobs
            .iter()
            .filter(|(d, _)| *d != base)
            .map(|(_, size)| size)
            .sum::<u64>()
}

/// Every file of a directory store (as the store lists its objects: `tmp/` left out),
/// with its size.
fn files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let key = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if key == "tmp" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(key, std::fs::metadata(&path).unwrap().len());
            }
        }
    }
    out
}

fn cli_json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, stdout, stderr) = run_cli_env(&args, env);
    assert_eq!(code, 0, "ecr-backup {args:?}:\n{stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The `du` figures of a store holding exactly the two repositories.
fn assert_du(store: &str, shared: &Shared, env: &[(&str, &str)]) {
    let a_only = own_bytes(&shared.a, &shared.base.0);
    let b_only = own_bytes(&shared.b, &shared.base.0);
    let du = cli_json(&["du", "--store", store], env);
    let repos = du["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{du:#}");
    for (r, image, only) in [
        (&repos[0], &shared.a, a_only),
        (&repos[1], &shared.b, b_only),
    ] {
        assert_eq!(r["repository"], image.repository.as_str(), "{du:#}");
        assert_eq!(u(&r["images"]), 1);
        assert_eq!(u(&r["unique_bytes"]), only, "{r:#}");
        assert_eq!(
            u(&r["unique_blobs"]),
            3,
            "manifest, config, own layer: {r:#}"
        );
        assert_eq!(u(&r["shared_bytes"]), shared.base.1, "{r:#}");
        assert_eq!(u(&r["shared_blobs"]), 1, "{r:#}");
        // An image record and a tag record.
        assert_eq!(u(&r["records"]), 2, "{r:#}");
        assert_eq!(r["by_age"][0]["age"], "< 1 day");
        assert_eq!(u(&r["by_age"][0]["images"]), 1);
        assert_eq!(u(&r["by_age"][0]["bytes"]), only + shared.base.1);
    }
    assert_eq!(u(&du["shared_bytes"]), shared.base.1);
    assert_eq!(u(&du["unreferenced_bytes"]), 0);
    assert_eq!(
        u(&du["blobs"]["bytes"]),
        a_only + b_only + shared.base.1,
        "{du:#}"
    );
    assert_eq!(u(&du["by_age"][0]["images"]), 2);
    assert_eq!(
        u(&du["by_age"][0]["bytes"]),
        a_only + b_only + shared.base.1
    );
    let total = &du["total"];
    assert_eq!(
        u(&total["objects"]),
        u(&du["blobs"]["objects"]) + u(&du["records"]["objects"])
    );
    assert!(total["s3_monthly_usd"].as_f64().unwrap() >= 0.0);
    assert_eq!(total["prices_as_of"], "2026-12-03");

    // One repository: its own figures, judged against the other.
    let one = cli_json(&["du", "--store", store, shared.a.repository.as_str()], env);
    let repos = one["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1);
    assert_eq!(u(&repos[0]["unique_bytes"]), a_only);
    assert_eq!(u(&repos[0]["shared_bytes"]), shared.base.1);
    let (code, _, stderr) = run_cli_env(
        &["du", "--store", store, &format!("{}/none", shared.prefix)],
        env,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("has no backup"), "{stderr}");
}

/// A backup into a directory store, one image at a time so that the second image finds
/// the shared layer stored: its bytes are deduplicated; objects written and the storage
/// estimate match the files the store holds; no S3 or ECR request; then `du`.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_into_a_directory_says_what_it_wrote_and_what_the_store_costs() {
    let servers = TestServers::from_env();
    let shared = push_two_repositories_sharing_a_layer(&servers, "cost-dir").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = root.to_str().unwrap().to_owned();
    let glob = format!("{}/**", shared.prefix);
    let backup = [
        "backup",
        "--source",
        &servers.registry,
        "--store",
        &store,
        "--repository",
        &glob,
        "--concurrency",
        "1",
    ];
    let report = tokio::task::spawn_blocking({
        let backup = backup.map(str::to_owned);
        move || cli_json(&backup.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    })
    .await
    .unwrap();
    let cost = &report["cost"];
    let stored = files(&root);
    let blob_bytes: u64 = stored
        .iter()
        .filter(|(k, _)| k.starts_with("blobs/"))
        .map(|(_, s)| s)
        .sum();
    assert_eq!(u(&cost["bytes_new"]), blob_bytes, "{cost:#}");
    assert_eq!(u(&cost["bytes_new"]), u(&report["bytes_copied"]));
    assert_eq!(u(&cost["bytes_deduplicated"]), shared.base.1, "{cost:#}");
    // Every file once, and index.json twice (created empty, then rebuilt).
    assert_eq!(
        u(&cost["objects_written"]),
        stored.len() as u64 + 1,
        "{cost:#}"
    );
    let requests = &cost["requests"];
    for kind in ["s3_put", "s3_get", "s3_list", "s3_head", "ecr_api"] {
        assert_eq!(u(&requests[kind]), 0, "{kind}: {cost:#}");
    }
    // The run's own requests: the registry check before it (`/v2/`) is the command's.
    assert!(
        u(&requests["registry"]) > 0 && u(&requests["registry"]) <= u(&report["registry_requests"]),
        "{cost:#}"
    );
    let storage = &cost["storage"];
    assert_eq!(u(&storage["objects"]), stored.len() as u64, "{storage:#}");
    assert_eq!(u(&storage["bytes"]), stored.values().sum::<u64>());
    assert_eq!(
        u(&storage["backup_billable_bytes"]),
        stored
            .values()
            .map(|s| (*s).max(BACKUP_MIN_OBJECT_BYTES))
            .sum::<u64>()
    );
    assert_eq!(storage["s3_storage_class"], "STANDARD");

    // The human summary says the same.
    let (code, stdout, stderr) = run_cli(&backup);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("0 B new") && stdout.contains("objects written"),
        "{stdout}"
    );
    assert!(stdout.contains("a month in S3 STANDARD"), "{stdout}");

    // Prices are configuration.
    let priced = cli_json(
        &[
            "du",
            "--store",
            &store,
            "--prices",
            r#"{"s3_storage_gb_month": 1000, "s3_storage_class": "EXPENSIVE", "as_of": "2030-01-01"}"#,
        ],
        &[],
    );
    assert_eq!(priced["total"]["s3_storage_class"], "EXPENSIVE");
    assert_eq!(priced["total"]["prices_as_of"], "2030-01-01");
    // The second backup added a snapshot: the store as `du` measured it now.
    let gib = u(&priced["total"]["bytes"]) as f64 / (1u64 << 30) as f64;
    let expected = (gib * 1000.0 * 10_000.0).round() / 10_000.0;
    assert_eq!(
        priced["total"]["s3_monthly_usd"].as_f64().unwrap(),
        expected
    );
    let (code, _, stderr) = run_cli(&["du", "--store", &store, "--prices", "{\"s3\": 1}"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--prices"), "{stderr}");

    assert_du(&store, &shared, &[]);
}

/// The same into S3 (moto) through a counting proxy: the S3 requests the summary reports
/// by kind are exactly the requests the proxy saw, objects written match the bucket, and
/// `du` reads the S3 store as it reads a directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_into_s3_counts_its_requests_by_kind() {
    let servers = TestServers::from_env();
    let shared = push_two_repositories_sharing_a_layer(&servers, "cost-s3").await;
    let (client, _store, bucket) = s3_store(&servers.moto, "cost").await;
    let proxy = FaultProxy::start(&servers.moto, Flavor::S3).await.unwrap();
    let store = format!("s3://{bucket}/backup");
    let glob = format!("{}/**", shared.prefix);
    let endpoint = proxy.url();
    let report = tokio::task::spawn_blocking({
        let (registry, store, glob, endpoint) = (
            servers.registry.clone(),
            store.clone(),
            glob.clone(),
            endpoint.clone(),
        );
        move || {
            cli_json(
                &[
                    "backup",
                    "--source",
                    &registry,
                    "--store",
                    &store,
                    "--repository",
                    &glob,
                    "--concurrency",
                    "1",
                ],
                &[("AWS_ENDPOINT_URL", &endpoint)],
            )
        }
    })
    .await
    .unwrap();
    let cost = &report["cost"];
    let requests = &cost["requests"];
    let log = proxy.log();
    let seen = |f: &dyn Fn(&str, &str) -> bool| {
        log.iter().filter(|r| f(&r.method, &r.path)).count() as u64
    };
    let put = seen(&|m, _| m == "PUT" || m == "POST");
    let list = seen(&|m, p| m == "GET" && p.contains("list-type="));
    let get = seen(&|m, p| m == "GET" && !p.contains("list-type="));
    let head = seen(&|m, _| m == "HEAD");
    assert_eq!(u(&requests["s3_put"]), put, "{cost:#}\n{log:#?}");
    assert_eq!(u(&requests["s3_list"]), list, "{cost:#}");
    assert_eq!(u(&requests["s3_get"]), get, "{cost:#}");
    assert_eq!(u(&requests["s3_head"]), head, "{cost:#}");
    assert!(put > 0 && list > 0 && head > 0, "{cost:#}");
    assert_eq!(u(&requests["ecr_api"]), 0);
    assert!(cost["s3_requests_usd"].as_f64().unwrap() > 0.0);

    let objects = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("backup/")
        .send()
        .await
        .unwrap();
    let listed = objects.contents();
    assert_eq!(
        u(&cost["objects_written"]),
        listed.len() as u64 + 1,
        "{cost:#}"
    );
    assert_eq!(u(&cost["storage"]["objects"]), listed.len() as u64);
    assert_eq!(
        u(&cost["storage"]["bytes"]),
        listed
            .iter()
            .map(|o| o.size().unwrap_or(0) as u64)
            .sum::<u64>()
    );
    assert_eq!(u(&cost["bytes_deduplicated"]), shared.base.1, "{cost:#}");

    let moto = servers.moto.clone();
    tokio::task::spawn_blocking(move || assert_du(&store, &shared, &[("AWS_ENDPOINT_URL", &moto)]))
        .await
        .unwrap();
}

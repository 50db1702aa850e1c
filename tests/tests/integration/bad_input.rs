//! Bad input: malformed and hostile queue messages, names that would escape a path or a
//! key (in messages and in a registry's listings), and manifests that are broken in every
//! way a registry or a network could break them. Each gets a clear error or is handled;
//! nothing panics; nothing is written outside the store layout.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use chrono::Utc;
use ecr_backup_shared::copy::{CopyOptions, CopyRequest};
use ecr_backup_shared::oci::manifest::{OCI_INDEX, OCI_MANIFEST};
use ecr_backup_shared::pipeline::message::{Message, Reason, MAX_MESSAGE_BYTES};
use ecr_backup_shared::pipeline::worker::{TaskError, TaskOutcome};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::Layout;
use ecr_backup_shared::{Digest, RepositoryName, Tag};
use ecr_backup_tests::corpus::{
    push_image, push_small_image, random_layer, repository, CorpusImage, Format,
};
use ecr_backup_tests::fault_proxy::{Canned, Fault, FaultProxy, Flavor, Rewrite, Rule, When};
use ecr_backup_tests::servers::{self, TestServers};
use proptest::prelude::*;

use crate::common::*;
use crate::faults::{failed_ids, sqs_event, worker_context};

/// The only entries a store root may hold.
const ALLOWED_ROOT: &[&str] = &[
    "blobs",
    "repositories",
    "snapshots",
    "trees",
    "oci-layout",
    "index.json",
    "tmp",
];

/// Every file below `root`, relative, `/`-separated.
fn files_below(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    out.sort();
    out
}

/// Nothing outside the store layout: the temporary directory holds only the store, the
/// root holds only layout entries, and every record key parses back to a valid name.
fn assert_only_layout_objects(tempdir: &Path) {
    let outside: Vec<String> = files_below(tempdir)
        .into_iter()
        .filter(|f| !f.starts_with("store/"))
        .collect();
    assert!(outside.is_empty(), "files outside the store: {outside:?}");
    let root = tempdir.join("store");
    for key in files_below(&root) {
        assert_key_in_layout(&key);
    }
}

/// A store key is one of the layout's: `oci-layout`, `index.json`, a blob, a record under
/// a valid repository name, a snapshot (or a directory store's temporary file).
fn assert_key_in_layout(key: &str) {
    let top = key.split('/').next().unwrap();
    assert!(ALLOWED_ROOT.contains(&top), "unexpected object {key:?}");
    assert!(
        !key.split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()),
        "{key:?}"
    );
    if top == "blobs" || top == "trees" {
        let hex = key
            .strip_prefix(&format!("{top}/sha256/"))
            .expect("blobs/sha256/<hex> or trees/sha256/<hex>");
        assert!(format!("sha256:{hex}").parse::<Digest>().is_ok(), "{key:?}");
    }
    if top == "repositories" {
        assert!(
            Layout::split_record_key(key).is_some(),
            "record key that does not parse: {key:?}"
        );
    }
}

const D0: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A copy message with these raw fields (so that invalid values can be sent).
fn raw_copy(repository: &str, digest: &str, tag: &str) -> String {
    serde_json::json!({
        "version": 1, "kind": "copy-image", "repository": repository, "digest": digest,
        "tags": [tag], "reason": "push", "observedAt": "2026-11-27T05:00:00Z"
    })
    .to_string()
}

/// An EventBridge event with these fields.
fn event(source: &str, detail_type: &str, detail: serde_json::Value) -> String {
    serde_json::json!({
        "version": "0", "id": "e", "detail-type": detail_type, "source": source,
        "account": "123456789012", "time": "2026-11-27T05:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail
    })
    .to_string()
}

fn ecr_push(repository: &str, digest: &str, tag: &str) -> String {
    event(
        "aws.ecr",
        "ECR Image Action",
        serde_json::json!({"result": "SUCCESS", "repository-name": repository,
            "image-digest": digest, "action-type": "PUSH", "image-tag": tag}),
    )
}

/// Malformed and hostile bodies, each with a piece of the error it must get.
fn bad_messages() -> Vec<(&'static str, String, &'static str)> {
    let long_repo = format!("{}/{}", "a".repeat(128), "b".repeat(128)); // 257
    vec![
        ("not-json", "not json".into(), "not a JSON object"),
        ("empty", String::new(), "not a JSON object"),
        ("array", "[1,2]".into(), "not a JSON object"),
        ("string", "\"copy-image\"".into(), "not a JSON object"),
        ("nested", "[".repeat(100_000), "not a JSON object"),
        (
            "oversized",
            format!(
                r#"{{"version":1,"pad":"{}"}}"#,
                "x".repeat(MAX_MESSAGE_BYTES)
            ),
            "larger than",
        ),
        (
            "version-2",
            raw_copy("a", D0, "v1").replace(r#""version":1"#, r#""version":2"#),
            "schema version 2",
        ),
        (
            "version-text",
            raw_copy("a", D0, "v1").replace(r#""version":1"#, r#""version":"1""#),
            "version",
        ),
        ("no-version", r#"{"kind":"copy-image"}"#.into(), "version"),
        (
            "unknown-kind",
            r#"{"version":1,"kind":"delete-everything"}"#.into(),
            "schema",
        ),
        (
            "repo-dotdot",
            raw_copy("../etc", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-inner-dotdot",
            raw_copy("a/../b", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-absolute",
            raw_copy("/etc/passwd", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-percent",
            raw_copy("%2e%2e/x", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-encoded-slash",
            raw_copy("a%2Fb", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-unicode",
            raw_copy("r\u{e9}po", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-upper",
            raw_copy("Team/App", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-double-slash",
            raw_copy("a//b", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-trailing-slash",
            raw_copy("a/", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-backslash",
            raw_copy("a\\..\\b", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-nul",
            raw_copy("a\u{0}b", D0, "v1"),
            "invalid repository name",
        ),
        (
            "repo-257",
            raw_copy(&long_repo, D0, "v1"),
            "longer than 256",
        ),
        ("tag-dotdot", raw_copy("a", D0, "../x"), "invalid tag"),
        ("tag-dot", raw_copy("a", D0, "."), "invalid tag"),
        ("tag-slash", raw_copy("a", D0, "a/b"), "invalid tag"),
        ("tag-percent", raw_copy("a", D0, "%2F"), "invalid tag"),
        ("tag-unicode", raw_copy("a", D0, "v\u{fc}"), "invalid tag"),
        (
            "tag-129",
            raw_copy("a", D0, &"t".repeat(129)),
            "invalid tag",
        ),
        ("tag-empty", raw_copy("a", D0, ""), "invalid tag"),
        ("tag-leading-dash", raw_copy("a", D0, "-x"), "invalid tag"),
        (
            "digest-path",
            raw_copy("a", "sha256:../../../etc/passwd", "v1"),
            "invalid digest",
        ),
        (
            "digest-md5",
            raw_copy("a", "md5:d41d8cd98f00b204e9800998ecf8427e", "v1"),
            "only sha256",
        ),
        (
            "digest-upper",
            raw_copy("a", &D0.to_uppercase().replace("SHA256", "sha256"), "v1"),
            "invalid digest",
        ),
        (
            "observed-at",
            raw_copy("a", D0, "v1").replace("2026-11-27T05:00:00Z", "yesterday"),
            "schema",
        ),
        (
            "s3-event",
            event(
                "aws.s3",
                "Object Created",
                serde_json::json!({"bucket": {"name": "b"}}),
            ),
            "unsupported event",
        ),
        (
            "ecr-scan-event",
            event(
                "aws.ecr",
                "ECR Image Scan",
                serde_json::json!({"scan-status": "COMPLETE"}),
            ),
            "unsupported event",
        ),
        (
            "schedule-event",
            event("aws.events", "Scheduled Event", serde_json::json!({})),
            "unsupported event",
        ),
        (
            "event-repo-dotdot",
            ecr_push("../x", D0, "v1"),
            "invalid repository name",
        ),
        (
            "event-tag-slash",
            ecr_push("a", D0, "x/../../y"),
            "invalid tag",
        ),
        (
            "event-no-digest",
            event(
                "aws.ecr",
                "ECR Image Action",
                serde_json::json!({"result": "SUCCESS", "repository-name": "a", "action-type": "PUSH"}),
            ),
            "image-digest",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_hostile_messages_fail_alone_with_clear_errors() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("badmsg");
    let repo = repository(&prefix, "app").unwrap();
    let good = push_small_image(&servers.source_client(), &repo, "v1", 64 * 1024)
        .await
        .unwrap();
    let source = Source::connect(&servers.registry, None, None)
        .await
        .unwrap();
    let (dir, store) = dir_store().await;
    store.init().await.unwrap();
    let (ctx, worker, _) = worker_context(&servers, &source, &store, CopyOptions::default()).await;

    let bad = bad_messages();
    for (name, body, wanted) in &bad {
        match worker.run_task(body).await {
            Err(TaskError::Message(e)) => {
                // What an operator reads (the DLQ's error attribute, the log) is the chain.
                let text = ecr_backup_shared::error::error_chain(&e);
                assert!(
                    text.contains(wanted),
                    "{name}: {text:?} does not say {wanted:?}"
                );
                assert!(text.len() < 2000, "{name}: error of {} bytes", text.len());
            }
            other => panic!("{name}: expected a message error, got {other:?}"),
        }
    }

    // Acknowledged, not failed: events this worker has nothing to do for.
    let failed_push = event(
        "aws.ecr",
        "ECR Image Action",
        serde_json::json!({"result": "FAILURE", "repository-name": "a",
            "image-digest": D0, "action-type": "PUSH"}),
    );
    let replicate = event(
        "aws.ecr",
        "ECR Image Action",
        serde_json::json!({"result": "SUCCESS", "repository-name": "a",
            "image-digest": D0, "action-type": "REPLICATE"}),
    );
    for body in [&failed_push, &replicate] {
        assert!(matches!(
            worker.run_task(body).await,
            Ok(TaskOutcome::Ignored(_))
        ));
    }

    // Names at their limits are valid: a 256-character repository and a 128-character tag.
    let long_repo = format!("{}/{}", "a".repeat(127), "b".repeat(128));
    match ecr_backup_shared::pipeline::message::parse(&raw_copy(&long_repo, D0, &"t".repeat(128))) {
        Ok(ecr_backup_shared::pipeline::message::Task::Copy { request, .. }) => {
            assert_eq!(request.repository.as_str().len(), 256);
            assert_eq!(request.tags[0].as_str().len(), 128);
        }
        other => panic!("names at their limits: {other:?}"),
    }

    // All in one Lambda batch with a good message: only the bad ones are reported.
    let good_body = Message::copy(
        &CopyRequest {
            repository: repo.clone(),
            digest: good.digest.clone(),
            tags: vec!["v1".parse().unwrap()],
            observed_at: Utc::now(),
        },
        Reason::Push,
        None,
    )
    .to_body();
    let mut records: Vec<(String, String, u32)> = bad
        .iter()
        .map(|(name, body, _)| (name.to_string(), body.clone(), 1))
        .collect();
    records.push(("good".into(), good_body, 1));
    records.push(("failed-push".into(), failed_push, 1));
    records.push(("replicate".into(), replicate, 1));
    let response = ecr_backup_worker::handle(&ctx, sqs_event(&records)).await;
    let failed = failed_ids(&response);
    let expected: BTreeSet<String> = bad.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(failed, expected);
    assert!(store
        .image_record(&repo, &good.digest)
        .await
        .unwrap()
        .is_some());
    assert_only_layout_objects(dir.path());
    assert_dir_store_consistent(&dir.path().join("store"));
    println!(
        "FIGURES bad messages: {} malformed or hostile bodies, each refused with its own error; the batch-mate was copied",
        bad.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_named_like_record_directories_and_names_at_their_limits() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("limits");
    let repo = repository(&prefix, "app").unwrap();
    let tags: Vec<Tag> = ["_images", "_deleted", "_tags", &"z".repeat(128)]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let image = push_image(
        &servers.source_client(),
        &repo,
        &tags,
        &[random_layer(rand::random(), 16 * 1024)],
        Format::Oci,
    )
    .await
    .unwrap();
    let (dir, store) = dir_store().await;
    let (client, s3, bucket) = s3_store(&servers.moto, "limits").await;
    for store in [&store, &s3] {
        let report = backup_prefix(&servers.registry, None, &prefix, store).await;
        assert!(report.is_success(), "{:?}", report.images_failed);
        let listing = store.listing(None).await.unwrap();
        let view = ecr_backup_shared::store::tag_view::tag_view(store, &listing, None)
            .await
            .unwrap();
        for tag in &tags {
            assert_eq!(
                view.get(&(repo.clone(), tag.clone())),
                Some(&image.digest),
                "tag {tag} in {}",
                store.location()
            );
        }
        assert_eq!(
            listing[&repo].tags.len(),
            tags.len(),
            "{}",
            store.location()
        );
    }
    assert_only_layout_objects(dir.path());
    // Both the hand-made consistency check and the project's own verify must read the
    // records of a tag named `_images` as tag records.
    let blobs = assert_dir_store_consistent(&dir.path().join("store"));
    assert!(blobs.contains(&image.digest));
    for store in [&store, &s3] {
        let options = ecr_backup_shared::wayback::verify::VerifyOptions {
            read_data: true,
            ..Default::default()
        };
        let report = ecr_backup_shared::wayback::verify::verify(
            store,
            &options,
            std::sync::Arc::new(ecr_backup_shared::progress::NoProgress),
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{report:#?}");
    }

    // One name component of 256 characters is valid (OCI grammar, ECR's limit) but longer
    // than a file name may be on common file systems: a directory store refuses it with
    // the file system's error; S3 keys take it.
    let long: RepositoryName = "a".repeat(256).parse().unwrap();
    let record = ecr_backup_shared::store::records::TagRecord {
        version: ecr_backup_shared::store::records::RECORD_VERSION,
        repository: long.clone(),
        tag: "v1".parse().unwrap(),
        digest: image.digest.clone(),
        observed_at: Utc::now(),
    };
    let dir_error = store.put_tag_record(&record).await.unwrap_err().to_string();
    assert!(dir_error.contains("repositories/aaaa"), "{dir_error}");
    s3.put_tag_record(&record).await.unwrap();
    assert!(s3.listing(Some(&long)).await.unwrap().contains_key(&long));
    assert_only_layout_objects(dir.path());
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    for object in listed.contents() {
        assert_key_in_layout(object.key().unwrap().strip_prefix("backup/").unwrap());
    }
    println!(
        "FIGURES names at limits: tags _images/_deleted/_tags and a 128-character tag backed up and read back (directory and S3); a 256-character repository name component: directory store refuses ({}), S3 stores it",
        dir_error.chars().take(160).collect::<String>()
    );
}

/// Adds names to a registry's JSON listing (`{"repositories": [...]}` or `{"tags": [...]}`).
fn add_names(field: &'static str, extra: Vec<String>) -> Rewrite {
    Rewrite::new(move |body| {
        let mut v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let list = v
            .get_mut(field)
            .and_then(|l| l.as_array_mut())
            .expect("a listing");
        list.extend(extra.iter().cloned().map(serde_json::Value::String));
        serde_json::to_vec(&v).unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn names_a_registry_lists_that_would_escape_the_store_are_skipped() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("badnames");
    let repo = repository(&prefix, "app").unwrap();
    let image = push_small_image(&servers.source_client(), &repo, "v1", 32 * 1024)
        .await
        .unwrap();
    let p = prefix.trim_end_matches('/');
    let bad_repos: Vec<String> = vec![
        format!("{p}/../../escape"),
        format!("{p}/.."),
        format!("{p}/%2e%2e/x"),
        format!("{p}/a%2Fb"),
        format!("{p}/r\u{e9}po"),
        format!("{p}/UPPER"),
        format!("{p}//double"),
        format!("{p}/trailing/"),
        format!("/{p}/absolute"),
        format!("{p}/{}", "x".repeat(300)),
        "../../../etc".into(),
    ];
    let bad_tags: Vec<String> = vec![
        "../../x".into(),
        "..".into(),
        "a/b".into(),
        "%2F..".into(),
        "\u{fc}ber".into(),
        "-lead".into(),
        "t".repeat(129),
        String::new(),
    ];
    let proxy = FaultProxy::start(&servers.registry, Flavor::Registry)
        .await
        .unwrap();
    proxy.add_rule(Rule::new(
        "GET",
        "/v2/_catalog",
        When::Every,
        Fault::RewriteBody(add_names("repositories", bad_repos.clone())),
    ));
    // A valid tag that does not exist, at the length limit: listed, then not found.
    let mut tags = bad_tags.clone();
    tags.push("z".repeat(128));
    proxy.add_rule(Rule::new(
        "GET",
        format!("/v2/{repo}/tags/list"),
        When::Every,
        Fault::RewriteBody(add_names("tags", tags)),
    ));

    let (dir, store) = dir_store().await;
    let report = backup_prefix(&proxy.url(), None, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 1);
    assert!(proxy.faults_injected() >= 2, "the listings were rewritten");
    let listing = store.listing(None).await.unwrap();
    assert_eq!(
        listing.keys().cloned().collect::<Vec<_>>(),
        vec![repo.clone()]
    );
    let tags: Vec<&Tag> = listing[&repo].tags.keys().collect();
    assert_eq!(tags, vec![&"v1".parse::<Tag>().unwrap()]);
    assert!(store
        .image_record(&repo, &image.digest)
        .await
        .unwrap()
        .is_some());
    assert_only_layout_objects(dir.path());
    // The snapshot lists only valid names too.
    let snapshot = store.snapshot(&report.snapshot).await.unwrap().unwrap();
    assert_eq!(
        snapshot.repositories.keys().cloned().collect::<Vec<_>>(),
        vec![repo.clone()]
    );

    // The same into S3: every key below the prefix is a layout key.
    let (client, s3, bucket) = s3_store(&servers.moto, "badnames").await;
    let report = backup_prefix(&proxy.url(), None, &prefix, &s3).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let rel = key
            .strip_prefix("backup/")
            .unwrap_or_else(|| panic!("key outside the prefix: {key}"));
        assert_key_in_layout(rel);
    }
    println!(
        "FIGURES hostile names: {} repository names and {} tags injected into the listings, all skipped; 1 image backed up, only layout keys written (directory and S3)",
        bad_repos.len(),
        bad_tags.len()
    );
}

/// A manifest served through the proxy under the digest of its bytes (or another one).
struct Served {
    name: &'static str,
    digest: Digest,
    /// A piece of the error it must get, or `None` when it must be copied.
    wanted: Option<&'static str>,
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

fn serve(
    proxy: &FaultProxy,
    repo: &RepositoryName,
    digest: &Digest,
    media_type: &str,
    bytes: Bytes,
) {
    proxy.add_rule(Rule::new(
        "GET",
        format!("/v2/{repo}/manifests/{digest}"),
        When::Every,
        Fault::Respond(
            Canned::ok(media_type, bytes).header("Docker-Content-Digest", &digest.to_string()),
        ),
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_manifests_get_clear_errors_and_nothing_is_written_outside_the_layout() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("badmanifest");
    let client = servers.source_client();
    let repo = repository(&prefix, "m").unwrap();
    let real: CorpusImage = push_small_image(&client, &repo, "v1", 48 * 1024)
        .await
        .unwrap();
    let layer = real.layers.iter().next().unwrap().clone();
    // A layer referenced only by the manifest that lies about its size, so that it is
    // transferred (a blob already stored is not downloaded again).
    let other = push_small_image(&client, &repo, "v2", 40 * 1024)
        .await
        .unwrap();
    let other_layer = other.layers.iter().next().unwrap().clone();
    let config = real
        .blobs
        .keys()
        .find(|d| !real.layers.contains(d))
        .unwrap()
        .clone();
    let config_desc = descriptor(
        "application/vnd.oci.image.config.v1+json",
        &config,
        real.blobs[&config],
    );
    let layer_desc = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &layer,
        real.blobs[&layer],
    );
    let real_desc = descriptor(OCI_MANIFEST, &real.digest, real.manifest_bytes.len() as u64);
    let proxy = FaultProxy::start(&servers.registry, Flavor::Registry)
        .await
        .unwrap();
    let mut served = Vec::new();
    let mut json = |name, wanted, media_type: &str, value: serde_json::Value| {
        let bytes = Bytes::from(serde_json::to_vec_pretty(&value).unwrap());
        let digest = Digest::of(&bytes);
        serve(&proxy, &repo, &digest, media_type, bytes);
        served.push(Served {
            name,
            digest,
            wanted,
        });
    };

    // A layer that is not in the registry. (docker-registry refuses to store such a
    // manifest, so it is served through the proxy.)
    let missing = Digest::of(format!("missing {}", rand::random::<u64>()).as_bytes());
    let refused = client
        .put_manifest(
            &repo,
            "missing",
            OCI_MANIFEST,
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": config_desc, "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &missing, 1234)]}))
                .unwrap(),
            ),
        )
        .await
        .is_err();
    json(
        "missing-blob",
        Some("not found"),
        OCI_MANIFEST,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &missing, 1234)]}),
    );
    json(
        "unknown-type-nothing-inside",
        Some("unknown media type"),
        "application/vnd.example.thing+json",
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json", "stuff": [1, 2]}),
    );
    json(
        "unknown-type-with-blobs",
        None,
        "application/vnd.example.thing+json",
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json",
            "config": config_desc, "layers": [layer_desc]}),
    );
    json(
        "bad-reference",
        Some("invalid digest"),
        OCI_MANIFEST,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": "sha256:../../../etc/passwd", "size": 1}, "layers": []}),
    );
    json(
        "sha512-reference",
        Some("only sha256"),
        OCI_MANIFEST,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
            "layers": [{"mediaType": "x", "digest": format!("sha512:{}", "a".repeat(128)), "size": 1}]}),
    );
    json(
        "size-lies",
        Some("size mismatch"),
        OCI_MANIFEST,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &other_layer, 100)]}),
    );
    // An index naming the same child twice (two platforms, one manifest): a DAG, not a cycle.
    json(
        "index-same-child-twice",
        None,
        OCI_INDEX,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": real.digest.to_string(), "size": real.manifest_bytes.len(),
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"mediaType": OCI_MANIFEST, "digest": real.digest.to_string(), "size": real.manifest_bytes.len(),
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}),
    );
    // Indexes nested six deep.
    let mut child = real_desc.clone();
    for level in 0..6 {
        let value = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child],
            "annotations": {"level": level.to_string()}});
        let bytes = Bytes::from(serde_json::to_vec(&value).unwrap());
        let digest = Digest::of(&bytes);
        child = descriptor(OCI_INDEX, &digest, bytes.len() as u64);
        serve(&proxy, &repo, &digest, OCI_INDEX, bytes);
        if level == 5 {
            served.push(Served {
                name: "nested-six-deep",
                digest,
                wanted: Some("deeper than 4"),
            });
        }
    }
    // An index that includes itself: its digest cannot be the digest of bytes that name
    // it, so what a registry serves under it fails the digest check.
    let claimed = Digest::of(format!("self {}", rand::random::<u64>()).as_bytes());
    let self_index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_INDEX, &claimed, 200)]});
    serve(
        &proxy,
        &repo,
        &claimed,
        OCI_INDEX,
        serde_json::to_vec(&self_index).unwrap().into(),
    );
    served.push(Served {
        name: "index-includes-itself",
        digest: claimed,
        wanted: Some("digest mismatch"),
    });
    // Over 4 MiB, and valid JSON otherwise.
    let huge = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
        "layers": [layer_desc], "annotations": {"pad": "x".repeat(4 * 1024 * 1024)}});
    let huge = Bytes::from(serde_json::to_vec(&huge).unwrap());
    let huge_digest = Digest::of(&huge);
    serve(&proxy, &repo, &huge_digest, OCI_MANIFEST, huge);
    served.push(Served {
        name: "over-4-mib",
        digest: huge_digest,
        wanted: Some("larger than 4 MiB"),
    });
    // Not JSON, under the digest of the bytes served: only parsing can fail.
    let garbage = Bytes::from_static(b"\x89PNG\r\n\x1a\n this is not a manifest \x00\xff");
    let garbage_digest = Digest::of(&garbage);
    serve(&proxy, &repo, &garbage_digest, OCI_MANIFEST, garbage);
    served.push(Served {
        name: "not-json",
        digest: garbage_digest,
        wanted: Some("not valid JSON"),
    });

    let source = Source::connect(&proxy.url(), None, None).await.unwrap();
    let (dir, store) = dir_store().await;
    store.init().await.unwrap();
    let (ctx, worker, _) = worker_context(&servers, &source, &store, CopyOptions::default()).await;
    let body = |digest: &Digest| {
        Message::copy(
            &CopyRequest {
                repository: repo.clone(),
                digest: digest.clone(),
                tags: Vec::new(),
                observed_at: Utc::now(),
            },
            Reason::Schedule,
            None,
        )
        .to_body()
    };
    let mut figures = Vec::new();
    for s in &served {
        let outcome = worker.run_task(&body(&s.digest)).await;
        match (s.wanted, &outcome) {
            (None, Ok(TaskOutcome::Copied)) => {
                assert!(
                    store
                        .image_record(&repo, &s.digest)
                        .await
                        .unwrap()
                        .is_some(),
                    "{}",
                    s.name
                );
                figures.push(format!("{}: copied", s.name));
            }
            (Some(wanted), Err(e)) => {
                let text = ecr_backup_shared::error::error_chain(e);
                assert!(
                    text.contains(wanted),
                    "{}: {text:?} does not say {wanted:?}",
                    s.name
                );
                assert!(!matches!(e, TaskError::Panicked(_)), "{}", s.name);
                assert!(
                    store
                        .image_record(&repo, &s.digest)
                        .await
                        .unwrap()
                        .is_none(),
                    "{} was recorded",
                    s.name
                );
                figures.push(format!("{}: {wanted}", s.name));
            }
            (wanted, outcome) => panic!("{}: wanted {wanted:?}, got {outcome:?}", s.name),
        }
    }
    // All together in one batch: exactly the broken ones fail.
    let records: Vec<(String, String, u32)> = served
        .iter()
        .map(|s| (s.name.to_string(), body(&s.digest), 1))
        .collect();
    let response = ecr_backup_worker::handle(&ctx, sqs_event(&records)).await;
    let expected: BTreeSet<String> = served
        .iter()
        .filter(|s| s.wanted.is_some())
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(failed_ids(&response), expected);
    let record = store
        .image_record(
            &repo,
            &served
                .iter()
                .find(|s| s.name == "index-same-child-twice")
                .unwrap()
                .digest,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.manifests.len(), 1, "the child is recorded once");
    assert_only_layout_objects(dir.path());
    assert_dir_store_consistent(&dir.path().join("store"));
    println!(
        "FIGURES broken manifests (registry refused to store a manifest with a missing blob: {refused}): {}",
        figures.join("; ")
    );
}

/// Names drawn from an alphabet with the characters that could escape a path or a key.
fn hostile_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a".to_owned()),
            Just("z9".to_owned()),
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("_".to_owned()),
            Just("__".to_owned()),
            Just("-".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("\\".to_owned()),
            Just("\u{e9}".to_owned()),
            Just("A".to_owned()),
            Just("_images".to_owned()),
            Just("\u{0}".to_owned()),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever names parse give keys inside the layout that parse back to the same name.
    #[test]
    fn accepted_names_make_keys_that_stay_inside_the_layout(
        repo in hostile_name(),
        tag in hostile_name(),
        seconds in 0i64..4_000_000_000,
    ) {
        let (Ok(repo), Ok(tag)) = (repo.parse::<RepositoryName>(), tag.parse::<Tag>()) else {
            return Ok(());
        };
        let digest = Digest::of(repo.as_str().as_bytes());
        let at = chrono::DateTime::from_timestamp(seconds, 0).unwrap();
        for key in [
            Layout::image(&repo, &digest),
            Layout::tag(&repo, &tag, &digest, at),
            Layout::deletion(&repo, &digest),
        ] {
            assert_key_in_layout(&key);
            let (parsed, _, _) = Layout::split_record_key(&key).unwrap();
            prop_assert_eq!(&parsed, &repo);
        }
    }

    /// Message parsing never panics on names and tags from the hostile alphabet, and a
    /// copy message that parses names a repository and tags that are safe in keys.
    #[test]
    fn messages_with_hostile_names_parse_safely(repo in hostile_name(), tag in hostile_name()) {
        if let Ok(ecr_backup_shared::pipeline::message::Task::Copy { request, .. }) =
            ecr_backup_shared::pipeline::message::parse(&raw_copy(&repo, D0, &tag))
        {
            assert_key_in_layout(&Layout::image(&request.repository, &request.digest));
            for t in &request.tags {
                assert_key_in_layout(&Layout::tag(&request.repository, t, &request.digest, Utc::now()));
            }
        }
    }
}

/// A failing command prints its error chain once, one cause a line, outermost first, each
/// saying only its own step (no line repeats the line below it); with `--json` the same
/// chain goes to stdout as a list.
#[test]
fn a_failure_prints_each_cause_once_and_as_a_json_list() {
    let servers = TestServers::from_env();
    let dir = tempfile::tempdir().unwrap();
    // The store's directory cannot be created: a file stands in its way.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let store = blocker.join("store");
    let (code, stdout, stderr) = run_cli(&[
        "backup",
        "--source",
        &servers.registry,
        "--store",
        store.to_str().unwrap(),
        "--repository",
        "no-such-prefix/**",
        "--json",
    ]);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: ") || l.starts_with("  caused by: "))
        .collect();
    let causes: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.trim_start_matches("error: ")
                .trim_start_matches("  caused by: ")
        })
        .collect();
    assert!(causes.len() >= 2, "a chain of causes: {stderr}");
    assert!(causes[0].contains("opening store"), "{stderr}");
    for pair in causes.windows(2) {
        assert!(
            !pair[0].contains(pair[1]),
            "{:?} repeats its cause {:?}:\n{stderr}",
            pair[0],
            pair[1]
        );
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON on stdout");
    assert_eq!(json["error"].as_str(), Some(causes[0]), "{json}");
    let listed: Vec<&str> = json["causes"]
        .as_array()
        .expect("the causes as a list")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(listed, causes[1..]);
}

/// An unreachable registry fails after the short budget of a first contact (at most three
/// retries, each shown at `-v` as it happens), with one error naming the address, not
/// after the full retry budget that later requests keep.
#[test]
fn an_unreachable_registry_fails_after_a_few_retries_shown_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (code, _, stderr) = run_cli(&[
        "-v",
        "backup",
        "--source",
        "http://127.0.0.1:9",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    let retries = stderr.matches("retrying registry request").count();
    assert!(
        (1..=3).contains(&retries),
        "{retries} retries shown:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("127.0.0.1:9"), "{stderr}");
}

//! Backups of the test corpus from a real registry into directory and S3 stores.

use std::collections::BTreeMap;
use std::sync::Arc;

use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_shared::store::tag_view::tag_view;
use ecr_backup_shared::store::Layout;
use ecr_backup_shared::Digest;
use ecr_backup_tests::corpus::{push_corpus, push_image, random_layer, CorpusOptions, Format};
use ecr_backup_tests::servers::{self, TestServers};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn corpus_backs_up_into_a_directory_and_into_s3_with_every_digest_kept() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("corpus");
    let corpus = push_corpus(&servers.source_client(), &CorpusOptions::new(&prefix))
        .await
        .unwrap();

    let (dir, dir_store) = dir_store().await;
    let (_s3, s3_store, _bucket) = s3_store(&servers.moto, "corpus").await;
    // A plain registry lists only tags, so its untagged images cannot be found (ECR's
    // API can: see the ECR test).
    let tagged: Vec<_> = corpus
        .images
        .iter()
        .filter(|i| !i.tags.is_empty())
        .collect();
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    for image in &tagged {
        wanted.insert(
            Layout::blob(&image.digest),
            image.manifest_bytes.len() as u64,
        );
        for (d, size) in &image.blobs {
            wanted.insert(Layout::blob(d), *size);
        }
    }
    let wanted_bytes: u64 = wanted.values().sum();
    for store in [&dir_store, &s3_store] {
        let report = backup_prefix(&servers.registry, None, &prefix, store).await;
        assert!(report.is_success(), "{:?}", report.images_failed);
        assert_eq!(
            report.images_copied as usize,
            tagged.len(),
            "{}",
            store.location()
        );

        // Every tag resolves to the source's digest.
        let listing = store.listing(None).await.unwrap();
        let view = tag_view(store, &listing, None).await.unwrap();
        let expected = corpus.tags();
        let got: BTreeMap<_, _> = view
            .into_iter()
            .filter(|((r, _), _)| expected.keys().any(|(er, _)| er == r))
            .collect();
        assert_eq!(got, expected, "tags in {}", store.location());
        // Every unique blob is stored once, with its size; nothing else is.
        let stored: BTreeMap<_, _> = store
            .backend()
            .list("blobs/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        assert_eq!(stored, wanted, "blobs in {}", store.location());
        assert_eq!(
            report.bytes_copied,
            wanted_bytes,
            "bytes copied into {}",
            store.location()
        );
    }
    let blobs = assert_dir_store_consistent(&dir.path().join("store"));
    // Shared base layers are stored once: stored layer bytes are the unique layer bytes.
    let layers: std::collections::BTreeSet<_> =
        tagged.iter().flat_map(|i| i.layers.iter()).collect();
    let referenced: u64 = tagged
        .iter()
        .flat_map(|i| i.layers.iter().map(|d| i.blobs[d]))
        .sum();
    let stored_layer_bytes: u64 = layers
        .iter()
        .filter(|d| blobs.contains(d))
        .map(|d| corpus.unique_blobs[d])
        .sum();
    let unique_layer_bytes: u64 = layers.iter().map(|d| corpus.unique_blobs[d]).sum();
    assert_eq!(stored_layer_bytes, unique_layer_bytes);
    assert!(
        referenced > stored_layer_bytes,
        "dedup: {referenced} referenced vs {stored_layer_bytes} stored"
    );
    println!("corpus: {referenced} layer bytes referenced, {stored_layer_bytes} stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_over_an_unchanged_registry_downloads_no_blob() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("rerun");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 8;
    let corpus = push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let (_dir, store) = dir_store().await;
    let first_start = servers::log_lines(&servers.registry_log);
    let first = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(first.is_success());
    assert!(first.blob_gets > 0);
    // docker-registry has no referrers API: its first 404 is remembered, not asked
    // again for every new image.
    assert!(first.images_copied > 1);
    let referrers_calls = servers::requests_containing(
        &servers.registry_log,
        first_start,
        &[&format!("/v2/{prefix}"), "/referrers/"],
    );
    // Images copied at once may each ask before the first answer comes back.
    assert!(
        (1..=4).contains(&referrers_calls) && referrers_calls < first.images_copied as usize,
        "{referrers_calls} referrers calls for {} new images, 4 copied at once",
        first.images_copied
    );

    let log_start = servers::log_lines(&servers.registry_log);
    let second = backup_prefix(&servers.registry, None, &prefix, &store).await;
    let gets_at_registry = servers::blob_gets(&servers.registry_log, log_start)
        .into_iter()
        .filter(|g| {
            g.repository
                .as_str()
                .starts_with(prefix.trim_end_matches('/'))
        })
        .count();
    assert_eq!(
        gets_at_registry, 0,
        "blob GETs seen by the registry on the second run"
    );
    assert_eq!(second.blob_gets, 0);
    assert_eq!(second.images_copied, 0);
    let tagged = corpus.images.iter().filter(|i| !i.tags.is_empty()).count();
    assert_eq!(second.images_present as usize, tagged);
    assert_eq!(second.bytes_copied, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_that_does_not_match_its_digest_is_never_stored() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("corrupt");
    let repo = ecr_backup_tests::corpus::repository(&prefix, "bad").unwrap();
    let layer = random_layer(rand::random(), 300 * 1024);
    let image = push_image(
        &servers.source_client(),
        &repo,
        &["v1".parse().unwrap()],
        &[layer],
        Format::Oci,
    )
    .await
    .unwrap();
    let layer_digest = image.layers.iter().next().unwrap().clone();
    // Flip one byte of the layer in the registry's own storage: it serves what it has.
    let data = registry_blob_path(&servers.registry_log, &layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let (dir, store) = dir_store().await;
    let report = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert_eq!(report.images_failed.len(), 1, "{report:?}");
    let failure = &report.images_failed[0];
    assert!(
        failure.error.contains("digest mismatch"),
        "{}",
        failure.error
    );
    assert!(
        failure.error.contains(&layer_digest.to_string()),
        "{}",
        failure.error
    );
    assert!(
        store.blob_size(&layer_digest).await.unwrap().is_none(),
        "corrupt blob stored"
    );
    assert!(
        store
            .image_record(&repo, &image.digest)
            .await
            .unwrap()
            .is_none(),
        "image recorded"
    );
    assert!(store
        .listing(None)
        .await
        .unwrap()
        .get(&repo)
        .is_none_or(|c| c.tags.is_empty()));
    assert_dir_store_consistent(&dir.path().join("store"));
}

/// Where the source registry keeps a blob's bytes on disk (its state directory sits next
/// to its access log).
fn registry_blob_path(
    log: &std::path::Path,
    digest: &ecr_backup_shared::Digest,
) -> std::path::PathBuf {
    let name = log.file_stem().unwrap().to_str().unwrap();
    let hex = digest.hex();
    log.parent().unwrap().join(format!(
        "{name}-data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_killed_in_the_middle_of_a_large_layer_leaves_a_consistent_store() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("kill");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 160;
    push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store_arg = store_dir.to_str().unwrap().to_owned();
    let repo_glob = format!("{}/big", prefix.trim_end_matches('/'));

    let mut child = std::process::Command::new(cli_binary())
        .args([
            "backup",
            "--source",
            &servers.registry,
            "--store",
            &store_arg,
            "--repository",
            &repo_glob,
            "-q",
        ])
        .spawn()
        .unwrap();
    // Wait until a temporary file is being written and has some bytes, then SIGKILL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut killed_mid_blob = false;
    while std::time::Instant::now() < deadline {
        let partial = std::fs::read_dir(store_dir.join("tmp"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 4 * 1024 * 1024))
            })
            .unwrap_or(false);
        if partial {
            child.kill().unwrap();
            killed_mid_blob = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.wait().unwrap();
    assert!(
        killed_mid_blob,
        "the copy finished before it could be killed mid-layer"
    );
    assert_dir_store_consistent(&store_dir);
    // The killed copy's partial file stays in tmp/ until it has been idle for an hour;
    // make it look that old, and the re-run removes it.
    let partials: Vec<std::path::PathBuf> = std::fs::read_dir(store_dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !partials.is_empty(),
        "the killed copy left its partial file"
    );
    for p in &partials {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
    }

    let (code, _, stderr) = run_cli(&[
        "backup",
        "--source",
        &servers.registry,
        "--store",
        &store_arg,
        "--repository",
        &repo_glob,
        "-q",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let blobs = assert_dir_store_consistent(&store_dir);
    assert!(
        blobs.len() >= 4,
        "manifest, config and layers stored after the re-run"
    );
    let left: Vec<_> = partials.iter().filter(|p| p.exists()).collect();
    assert!(
        left.is_empty(),
        "partial files of the killed copy left: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_source_is_enumerated_through_the_ecr_api_with_token_login() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("ecr");
    let auth = servers.auth_client();
    let repo = ecr_backup_tests::corpus::repository(&prefix, "svc").unwrap();
    let tagged = push_image(
        &auth,
        &repo,
        &["v1".parse().unwrap()],
        &[random_layer(1, 4096)],
        Format::Docker,
    )
    .await
    .unwrap();
    let untagged = push_image(&auth, &repo, &[], &[random_layer(2, 4096)], Format::Oci)
        .await
        .unwrap();

    // Register the same images in the ECR API, with their real digests.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&servers.moto)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let ecr = aws_sdk_ecr::Client::new(&config);
    ecr.create_repository()
        .repository_name(repo.as_str())
        .send()
        .await
        .unwrap();
    for (image, tag) in [(&tagged, Some("v1")), (&untagged, None)] {
        ecr.put_image()
            .repository_name(repo.as_str())
            .image_manifest(String::from_utf8(image.manifest_bytes.to_vec()).unwrap())
            .image_manifest_media_type(&image.media_type)
            .image_digest(image.digest.to_string())
            .set_image_tag(tag.map(str::to_owned))
            .send()
            .await
            .unwrap();
    }

    let api = ecr_backup_shared::source::ecr::EcrApi::new(ecr, Some("123456789012".into()));
    let registry = servers::registry_client(&servers.auth_registry, Credentials::Anonymous);
    // Anonymous at first: the credentials come from GetAuthorizationToken.
    let registry = ecr_backup_shared::RegistryClient::new(
        registry.url().clone(),
        std::sync::Arc::new(ecr_backup_shared::source::ecr::EcrCredentials::new(
            api.clone(),
        )),
    )
    .unwrap();
    let source = ecr_backup_shared::source::Source::from_parts(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
        registry,
        Some(api),
    );
    let (_dir, store) = dir_store().await;
    let report = backup_source(&source, &prefix, &store).await;
    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 2, "tagged and untagged images");
    assert!(store
        .image_record(&repo, &untagged.digest)
        .await
        .unwrap()
        .is_some());
    let record = store
        .image_record(&repo, &tagged.digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.source,
        "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_naming_what_was_wrong() {
    let servers = TestServers::from_env();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let store = store.to_str().unwrap();

    let (code, _, err) = run_cli(&["backup", "--source", "http://127.0.0.1:9", "--store", store]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("127.0.0.1:9") && err.contains("cannot reach the registry"),
        "{err}"
    );

    let (code, _, err) = run_cli(&[
        "backup",
        "--source",
        &servers.auth_registry,
        "--store",
        store,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("authentication failed") && err.contains("requires credentials"),
        "{err}"
    );

    let (code, _, err) = run_cli(&[
        "backup",
        "--source",
        &servers.auth_registry,
        "--credentials",
        "AWS:wrong",
        "--store",
        store,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("credentials were refused"), "{err}");
    assert!(!err.contains("wrong"), "the password is printed: {err}");

    let (code, _, err) = run_cli(&[
        "backup",
        "--source",
        &servers.registry,
        "--store",
        "gs://bucket/x",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown scheme \"gs\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_restores_from_the_directory_store_itself_with_digests_unchanged() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("skopeo");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 0;
    let corpus = push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let (dir, store) = dir_store().await;
    assert!(backup_prefix(&servers.registry, None, &prefix, &store)
        .await
        .is_success());
    let store_dir = dir.path().join("store");
    let home = dir.path().join("skopeo");
    let target = servers.target_registry.trim_start_matches("http://");
    // A single-arch OCI image and the multi-arch OCI index (--all). skopeo 1.9 does not
    // see Docker-typed entries of an index.json (`ecr-backup restore` handles those).
    for (repo, tag, all) in [
        ("app", "v1.0", false),
        ("app", "release-2", false),
        ("multi", "v1", true),
    ] {
        let full = ecr_backup_tests::corpus::repository(&prefix, repo).unwrap();
        let image = corpus
            .image(full.as_str(), tag)
            .unwrap_or_else(|| panic!("{repo}:{tag} in corpus"));
        let source = format!("oci:{}:{}:{}", store_dir.display(), image.repository, tag);
        let dest = format!("docker://{target}/{}-restored:{tag}", image.repository);
        let mut args = vec!["copy", "--dest-tls-verify=false", "--preserve-digests"];
        if all {
            args.push("--all");
        }
        args.extend([source.as_str(), dest.as_str()]);
        let out = skopeo(&home, &args);
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let restored: ecr_backup_shared::RepositoryName =
            format!("{}-restored", image.repository).parse().unwrap();
        let head = servers
            .target_client()
            .head_manifest(&restored, tag)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.digest, image.digest, "{repo}:{tag} restored by skopeo");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_reads_back_no_record_or_manifest_it_wrote_and_only_the_newest_snapshot() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("reads");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 1;
    push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counting = ecr_backup_shared::store::CountingBackend::new(Arc::new(
        ecr_backup_shared::store::DirBackend::new(dir.path().join("store")),
    ));
    let store = ecr_backup_shared::store::Store::new(counting.clone());

    let first = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(first.is_success() && first.images_copied > 1, "{first:?}");
    let reads = counting.take_reads();
    let record_or_blob: Vec<&String> = reads
        .iter()
        .filter(|k| k.starts_with("blobs/") || k.contains("/_images/"))
        .collect();
    assert!(
        record_or_blob.is_empty(),
        "a first run read back what it wrote: {record_or_blob:?}"
    );
    // index.json is right without reading the records back.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("store/index.json")).unwrap())
            .unwrap();
    let listed = index["manifests"].as_array().unwrap();
    let tagged: usize = store
        .listing(None)
        .await
        .unwrap()
        .values()
        .map(|r| r.tags.len())
        .sum();
    assert_eq!(listed.len(), tagged);
    for m in listed {
        let digest: Digest = m["digest"].as_str().unwrap().parse().unwrap();
        let bytes =
            std::fs::read(dir.path().join("store/blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(m["size"].as_u64().unwrap(), bytes.len() as u64);
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["mediaType"]
            .as_str()
            .map(str::to_owned);
        if let Some(t) = media_type {
            assert_eq!(m["mediaType"].as_str().unwrap(), t);
        }
    }

    // Each unchanged run adds a snapshot; a run reads only the newest one. Runs within
    // one second are all read (snapshot ids resolve to the second), hence the pauses.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert!(backup_prefix(&servers.registry, None, &prefix, &store)
            .await
            .is_success());
    }
    assert_eq!(store.snapshot_ids().await.unwrap().len(), 4);
    counting.take_reads();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(backup_prefix(&servers.registry, None, &prefix, &store)
        .await
        .is_success());
    let snapshot_reads: Vec<String> = counting
        .take_reads()
        .into_iter()
        .filter(|k| k.starts_with("snapshots/"))
        .collect();
    assert_eq!(snapshot_reads.len(), 1, "{snapshot_reads:?}");
}

/// The daily cost grows with what changed: a run over a registry that did not change
/// since the last run asks the store nothing about its repositories (no listing, no
/// record read), writes no tree and leaves `index.json` alone, and its snapshot names the
/// same trees; a change to one repository makes the next run compare that repository
/// alone, write one tree, and bring `index.json` up to date.
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_run_asks_the_store_nothing_about_its_repositories() {
    use ecr_backup_shared::store::{CountingBackend, DirBackend, Store};
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("unchanged");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 0;
    let corpus = push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let repositories = corpus.repositories().len();
    assert!(repositories > 2, "the corpus has several repositories");
    let dir = tempfile::tempdir().unwrap();
    let counting = CountingBackend::new(Arc::new(DirBackend::new(dir.path().join("store"))));
    let store = Store::new(counting.clone());
    let trees = || {
        std::fs::read_dir(dir.path().join("store/trees/sha256"))
            .unwrap()
            .count()
    };

    let first = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(first.is_success(), "{first:?}");
    assert_eq!(first.repositories_unchanged, 0);
    assert!(first.index_written);
    assert_eq!(trees(), repositories, "one tree per repository");
    let index_before = std::fs::read(dir.path().join("store/index.json")).unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    counting.take();
    let second = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(second.is_success(), "{second:?}");
    let counts = counting.take();
    assert_eq!(
        second.repositories_unchanged, repositories as u64,
        "{second:?}"
    );
    assert_eq!(second.images_copied, 0);
    assert!(
        !second.index_written,
        "nothing changed: index.json is not rewritten"
    );
    assert!(
        !counts.contains_key("repositories"),
        "an unchanged run asked about repository records: {counts:?}"
    );
    assert!(!counts.contains_key("trees"), "{counts:?}");
    assert!(!counts.contains_key("blobs"), "{counts:?}");
    assert_eq!(
        counts.get("index.json").map_or(0, |c| c.puts),
        0,
        "{counts:?}"
    );
    let snapshots = counts["snapshots"];
    assert_eq!((snapshots.puts, snapshots.gets), (1, 1), "{counts:?}");
    assert_eq!(
        trees(),
        repositories,
        "the second run's snapshot names the same trees"
    );
    assert_eq!(
        std::fs::read(dir.path().join("store/index.json")).unwrap(),
        index_before
    );

    // One repository changes: only it is compared, and only its tree is new.
    let changed = corpus.repositories().into_iter().next().unwrap();
    let image = push_image(
        &servers.source_client(),
        &changed,
        &["added".parse().unwrap()],
        &[random_layer(7, 4096)],
        Format::Oci,
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    counting.take();
    let third = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(third.is_success(), "{third:?}");
    let counts = counting.take();
    assert_eq!(third.repositories_unchanged, repositories as u64 - 1);
    assert_eq!(third.images_copied, 1);
    assert!(third.index_written);
    assert_eq!(
        counts["repositories"].lists, 4,
        "three record prefixes, then its image records for the index: {counts:?}"
    );
    assert_eq!(counts["trees"].puts, 1, "{counts:?}");
    assert_eq!(trees(), repositories + 1);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("store/index.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    let added = format!("{changed}:added");
    assert!(names.contains(&added.as_str()), "{names:?}");
    let old: serde_json::Value = serde_json::from_slice(&index_before).unwrap();
    assert_eq!(
        names.len(),
        old["manifests"].as_array().unwrap().len() + 1,
        "every other entry kept"
    );
    let view = tag_view(&store, &store.listing(None).await.unwrap(), None)
        .await
        .unwrap();
    assert_eq!(view[&(changed, "added".parse().unwrap())], image.digest);
}

/// A repository the previous run left with an image not backed up is compared again by
/// the next run even though it did not change, so a failed copy is retried every run
/// rather than taken as done.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_left_pending_is_compared_again() {
    use ecr_backup_shared::store::records::RepositoryEntry;
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("pending");
    let mut options = CorpusOptions::new(&prefix);
    options.big_layer_mib = 0;
    let corpus = push_corpus(&servers.source_client(), &options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ecr_backup_tests::stores::dir_store_at(&dir.path().join("store"));
    let first = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(first.is_success(), "{first:?}");
    // Lose one image record, as a failed copy would have left it, and mark the run's
    // entry for it pending, as the run would have.
    let repo = corpus.repositories().into_iter().next().unwrap();
    let record = dir.path().join("store").join(Layout::image(
        &repo,
        &corpus
            .tags()
            .iter()
            .find(|((r, _), _)| r == &repo)
            .unwrap()
            .1
            .clone(),
    ));
    std::fs::remove_file(&record).unwrap();
    let part_path = dir
        .path()
        .join("store")
        .join(Layout::snapshot(&first.snapshot));
    let mut part: ecr_backup_shared::store::records::SnapshotPart =
        serde_json::from_slice(&std::fs::read(&part_path).unwrap()).unwrap();
    let RepositoryEntry::Tree(t) = part.repositories.get_mut(&repo).unwrap() else {
        panic!("a version-2 entry")
    };
    t.pending = 1;
    std::fs::write(&part_path, serde_json::to_vec_pretty(&part).unwrap()).unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = backup_prefix(&servers.registry, None, &prefix, &store).await;
    assert!(second.is_success(), "{second:?}");
    assert_eq!(
        second.repositories_unchanged,
        corpus.repositories().len() as u64 - 1,
        "{second:?}"
    );
    assert_eq!(second.images_copied, 1, "the missing image is copied again");
    assert!(record.exists());
    let latest = store.latest_run(None).await.unwrap().unwrap();
    assert!(latest.entries().values().all(|e| e.confirmed()));
}

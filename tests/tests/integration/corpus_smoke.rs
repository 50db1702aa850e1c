//! The test corpus lands in a real registry as generated, the access log counts blob GETs,
//! and the auth registry behaves like ECR's data plane (Basic auth, wrong password
//! refused).

use std::time::Instant;

use ecr_backup_shared::source::registry::{Credentials, RegistryError};
use ecr_backup_shared::RepositoryName;
use ecr_backup_tests::corpus::{push_corpus, push_image, random_layer, CorpusOptions, Format};
use ecr_backup_tests::servers::{
    blob_gets, log_lines, read_blob, registry_client, unique_prefix, TestServers,
};

#[tokio::test(flavor = "multi_thread")]
async fn corpus_pushes_and_every_tag_resolves() -> anyhow::Result<()> {
    let servers = TestServers::from_env();
    let client = servers.source_client();
    let prefix = unique_prefix("corpus-smoke");
    let options = CorpusOptions {
        prefix: prefix.clone(),
        big_layer_mib: 64,
        seed: 42,
    };
    let started = Instant::now();
    let corpus = push_corpus(&client, &options).await?;
    eprintln!(
        "pushed the corpus ({} manifests, {} unique blobs, {} MiB of layers) in {:.1?}",
        corpus.images.len(),
        corpus.unique_blobs.len(),
        corpus.unique_layer_bytes >> 20,
        started.elapsed()
    );

    // Shape of the corpus.
    let repositories = corpus.repositories();
    let names: Vec<String> = repositories.iter().map(|r| r.to_string()).collect();
    for name in ["app", "team/app/api", "multi", "dockerlist", "big"] {
        assert!(
            names.contains(&format!("{prefix}/{name}")),
            "{name} missing from {names:?}"
        );
    }
    let tags = corpus.tags();
    assert!(
        tags.keys().any(|(_, t)| t.as_str().len() == 128),
        "no 128-character tag"
    );
    for t in ["v1.0", "latest", "release-2", "build_3"] {
        assert!(
            corpus.image(&format!("{prefix}/app"), t).is_some(),
            "app:{t}"
        );
    }
    assert_eq!(
        corpus
            .image(&format!("{prefix}/app"), "v1.0")
            .unwrap()
            .digest,
        corpus
            .image(&format!("{prefix}/app"), "latest")
            .unwrap()
            .digest
    );
    assert_eq!(corpus.untagged().count(), 1);
    assert!(corpus.unique_layer_bytes >= 64 << 20);

    // Every tag resolves to the digest the generator reports.
    for ((repo, tag), digest) in &tags {
        let head = client
            .head_manifest(repo, tag.as_str())
            .await?
            .unwrap_or_else(|| panic!("{repo}:{tag} does not resolve"));
        assert_eq!(&head.digest, digest, "{repo}:{tag}");
    }
    // Untagged images, child manifests and blobs exist, byte-exact.
    for image in &corpus.images {
        let fetched = client
            .get_manifest(&image.repository, &image.digest.to_string())
            .await?;
        assert_eq!(
            fetched.bytes, image.manifest_bytes,
            "{}@{}",
            image.repository, image.digest
        );
        assert_eq!(
            fetched.media_type.as_deref(),
            Some(image.media_type.as_str())
        );
        for child in &image.children {
            assert!(
                client.manifest_exists(&image.repository, child).await?,
                "child {child}"
            );
        }
        for blob in image.blobs.keys().filter(|d| !image.children.contains(d)) {
            assert!(
                client.blob_exists(&image.repository, blob).await?,
                "{} blob {blob}",
                image.repository
            );
        }
    }
    // tags/list shows the tags, and not the untagged image.
    let app: RepositoryName = format!("{prefix}/app").parse()?;
    let mut listed: Vec<String> = client
        .tags(&app)
        .await?
        .iter()
        .map(|t| t.to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = tags
        .keys()
        .filter(|(r, _)| r == &app)
        .map(|(_, t)| t.to_string())
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // The catalog lists every repository.
    let catalog = client.catalog().await?;
    for repo in &repositories {
        assert!(catalog.contains(repo), "{repo} missing from the catalog");
    }

    // Pushing again is idempotent and gives the same digests (deterministic corpus).
    let again = push_corpus(
        &client,
        &CorpusOptions {
            big_layer_mib: 0,
            ..options.clone()
        },
    )
    .await?;
    assert_eq!(
        again
            .image(&format!("{prefix}/app"), "v1.0")
            .unwrap()
            .digest,
        corpus
            .image(&format!("{prefix}/app"), "v1.0")
            .unwrap()
            .digest
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_blob_gets_are_counted_in_the_access_log() -> anyhow::Result<()> {
    let servers = TestServers::from_env();
    let client = servers.source_client();
    let repo: RepositoryName = format!("{}/app", unique_prefix("corpus-log")).parse()?;
    let layer = random_layer(5, 4096);
    let image = push_image(&client, &repo, &["v1".parse()?], &[layer], Format::Oci).await?;

    let mark = log_lines(&servers.registry_log);
    for blob in image.blobs.keys() {
        let body = read_blob(&client, &repo, blob).await?;
        assert_eq!(body.len() as u64, image.blobs[blob]);
    }
    let mine: Vec<_> = blob_gets(&servers.registry_log, mark)
        .into_iter()
        .filter(|g| g.repository == repo.as_str())
        .collect();
    assert_eq!(mine.len(), image.blobs.len(), "{mine:?}");
    assert!(mine.iter().all(|g| image.blobs.contains_key(&g.digest)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_auth_registry_wants_the_ecr_password() -> anyhow::Result<()> {
    let servers = TestServers::from_env();
    let repo: RepositoryName = format!("{}/app", unique_prefix("corpus-auth")).parse()?;
    let layer = random_layer(9, 1024);

    // The right credentials work.
    let good = servers.auth_client();
    let image = push_image(&good, &repo, &["v1".parse()?], &[layer], Format::Docker).await?;
    let head = good.head_manifest(&repo, "v1").await?.expect("v1 resolves");
    assert_eq!(head.digest, image.digest);

    // A wrong password and no credentials are both refused as Unauthorized.
    let wrong = registry_client(
        &servers.auth_registry,
        Credentials::from_user_password("AWS:not-the-token").unwrap(),
    );
    let anonymous = registry_client(&servers.auth_registry, Credentials::Anonymous);
    for (who, client) in [("wrong password", wrong), ("anonymous", anonymous)] {
        let err = client
            .push_blob_bytes(&repo, random_layer(10, 1024))
            .await
            .expect_err("push must be refused");
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{who}: {err:?}"
        );
        let err = client
            .head_manifest(&repo, "v1")
            .await
            .expect_err("resolve must be refused");
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{who}: {err:?}"
        );
    }
    Ok(())
}

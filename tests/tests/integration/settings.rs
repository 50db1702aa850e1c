//! Repository and registry settings, backed up with the images and restored with them,
//! through the CLI as an operator runs it: moto's ECR (and KMS) control plane, each test
//! in accounts of its own (registry settings are per account, so tests cannot share
//! one), reached with credentials from moto's STS AssumeRole; Debian's registry as the
//! data plane.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use ecr_backup_shared::source::ecr::EcrApi;
use ecr_backup_shared::source::ecr_settings::{document_bytes, RepositorySettings};
use ecr_backup_shared::store::settings::SettingsSubject;
use ecr_backup_shared::{RepositoryName, Tag};
use ecr_backup_tests::corpus::{push_image, random_layer, CorpusImage, Format};
use ecr_backup_tests::servers::{unique_prefix, TestServers};
use serde_json::Value;

use crate::common::{aws_config, dir_store_at};

/// One moto account, with credentials for it.
struct Account {
    id: String,
    access_key: String,
    secret_key: String,
    session_token: String,
    ecr: aws_sdk_ecr::Client,
    kms: aws_sdk_kms::Client,
}

impl Account {
    /// A fresh account (a random id), entered through STS AssumeRole as a person would.
    async fn new(servers: &TestServers) -> Account {
        let id = (100_000_000_000u64 + rand::random::<u64>() % 800_000_000_000).to_string();
        let base = aws_config(&servers.moto).await;
        let sts = aws_sdk_sts::Client::new(&base);
        let out = sts
            .assume_role()
            .role_arn(format!("arn:aws:iam::{id}:role/ecr-backup-operator"))
            .role_session_name("settings-test")
            .send()
            .await
            .expect("AssumeRole");
        let c = out.credentials().expect("credentials");
        let credentials = aws_sdk_ecr::config::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            None,
            "assumed-role",
        );
        let ecr = aws_sdk_ecr::Client::from_conf(
            aws_sdk_ecr::config::Builder::from(&base)
                .credentials_provider(credentials.clone())
                .build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&base)
                .credentials_provider(credentials)
                .build(),
        );
        Account {
            id,
            access_key: c.access_key_id().to_owned(),
            secret_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().to_owned(),
            ecr,
            kms,
        }
    }

    fn host(&self) -> String {
        format!("{}.dkr.ecr.us-east-1.amazonaws.com", self.id)
    }

    fn api(&self) -> EcrApi {
        EcrApi::new(self.ecr.clone(), Some(self.id.clone()))
    }

    /// The CLI, as this account's operator, against moto.
    fn cli(&self, servers: &TestServers) -> Command {
        let mut command = Command::new(crate::common::cli_binary());
        command
            .env_remove("ECR_BACKUP_STORE")
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_SESSION_TOKEN", &self.session_token)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_ECR", &servers.moto)
            .env("AWS_ENDPOINT_URL_KMS", &servers.moto);
        command
    }

    async fn new_key(&self) -> String {
        self.kms
            .create_key()
            .send()
            .await
            .expect("CreateKey")
            .key_metadata()
            .expect("key metadata")
            .arn()
            .expect("key ARN")
            .to_owned()
    }

    /// Pushes an image to the data plane and registers it in the ECR API with its digest.
    async fn push(
        &self,
        servers: &TestServers,
        repo: &RepositoryName,
        tags: &[&str],
        seed: u64,
    ) -> CorpusImage {
        let tags: Vec<Tag> = tags.iter().map(|t| t.parse().unwrap()).collect();
        let image = push_image(
            &servers.source_client(),
            repo,
            &tags,
            &[random_layer(seed, 4096)],
            Format::Oci,
        )
        .await
        .expect("push");
        let manifest = String::from_utf8(image.manifest_bytes.to_vec()).unwrap();
        for tag in &tags {
            self.ecr
                .put_image()
                .repository_name(repo.as_str())
                .image_manifest(&manifest)
                .image_manifest_media_type(&image.media_type)
                .image_digest(image.digest.to_string())
                .image_tag(tag.as_str())
                .send()
                .await
                .expect("PutImage");
        }
        image
    }

    async fn settings(&self, repo: &RepositoryName) -> Option<RepositorySettings> {
        self.api()
            .repository_settings(repo)
            .await
            .expect("reading settings")
            .map(|mut s| {
                // A restore cannot set the creation time.
                s.created_at = None;
                s
            })
    }
}

/// Runs a CLI command; prints its output for the test log; returns (code, stdout JSON or
/// Null, stderr).
fn run(command: &mut Command) -> (Option<i32>, Value, String) {
    let out = command.output().expect("running ecr-backup");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "ecr-backup exited {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status.code()
    );
    (
        out.status.code(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

fn backup(account: &Account, servers: &TestServers, store: &Path, prefix: &str) -> Value {
    let (code, report, _) = run(account
        .cli(servers)
        .args(["backup", "--json", "--source", &account.host()])
        .args(["--registry-endpoint", &servers.registry, "--store"])
        .arg(store)
        .args(["--repository", &format!("{prefix}/**")]));
    assert_eq!(code, Some(0));
    report
}

fn restore(
    account: &Account,
    servers: &TestServers,
    store: &Path,
    prefix: &str,
    extra: &[&str],
) -> (Option<i32>, Value, String) {
    run(account
        .cli(servers)
        .args(["restore", "--json", "--store"])
        .arg(store)
        .args(["--target", &account.host()])
        .args(["--target-endpoint", &servers.target_registry])
        .args(["--repository", &format!("{prefix}/**")])
        .args(extra))
}

/// Keys of every settings record and settings document blob in a directory store.
fn settings_objects(store: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut all = BTreeSet::new();
    walk(store, store, &mut all);
    all.into_iter()
        .filter(|k| {
            k.contains("/_settings/")
                || k.starts_with("registry-settings/")
                || k.starts_with("blobs/")
        })
        .collect()
}

const LIFECYCLE: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged images after 14 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;

fn pull_policy(account: &str, role: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "Deploy",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:role/{role}")},
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
        }]
    })
    .to_string()
}

fn registry_policy(account: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ReplicateIn",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
            "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
            "Resource": format!("arn:aws:ecr:us-east-1:{account}:repository/*")
        }]
    })
    .to_string()
}

/// Creates `app` with every repository setting moto keeps, and `plain` with none.
async fn configure(account: &Account, app: &RepositoryName, plain: &RepositoryName, key: &str) {
    use aws_sdk_ecr::types::*;
    account
        .ecr
        .create_repository()
        .repository_name(app.as_str())
        .image_tag_mutability(ImageTagMutability::ImmutableWithExclusion)
        .image_tag_mutability_exclusion_filters(
            ImageTagMutabilityExclusionFilter::builder()
                .filter("latest")
                .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                .build()
                .unwrap(),
        )
        .image_scanning_configuration(
            ImageScanningConfiguration::builder()
                .scan_on_push(true)
                .build(),
        )
        .encryption_configuration(
            EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::Kms)
                .kms_key(key)
                .build()
                .unwrap(),
        )
        .tags(
            Tag::builder()
                .key("team")
                .value("payments")
                .build()
                .unwrap(),
        )
        .tags(
            Tag::builder()
                .key("cost-center")
                .value("42")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("CreateRepository app");
    account
        .ecr
        .set_repository_policy()
        .repository_name(app.as_str())
        .policy_text(pull_policy(&account.id, "deployer"))
        .send()
        .await
        .expect("SetRepositoryPolicy");
    account
        .ecr
        .put_lifecycle_policy()
        .repository_name(app.as_str())
        .lifecycle_policy_text(LIFECYCLE)
        .send()
        .await
        .expect("PutLifecyclePolicy");
    account
        .ecr
        .create_repository()
        .repository_name(plain.as_str())
        .send()
        .await
        .expect("CreateRepository plain");
    account
        .ecr
        .put_registry_policy()
        .policy_text(registry_policy(&account.id))
        .send()
        .await
        .expect("PutRegistryPolicy");
    account
        .ecr
        .put_replication_configuration()
        .replication_configuration(
            ReplicationConfiguration::builder()
                .rules(
                    ReplicationRule::builder()
                        .destinations(
                            ReplicationDestination::builder()
                                .region("eu-west-1")
                                .registry_id(&account.id)
                                .build()
                                .unwrap(),
                        )
                        .repository_filters(
                            RepositoryFilter::builder()
                                .filter("team")
                                .filter_type(RepositoryFilterType::PrefixMatch)
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutReplicationConfiguration");
    account
        .ecr
        .put_registry_scanning_configuration()
        .scan_type(ScanType::Enhanced)
        .rules(
            RegistryScanningRule::builder()
                .scan_frequency(ScanFrequency::ScanOnPush)
                .repository_filters(
                    ScanningRepositoryFilter::builder()
                        .filter("team*")
                        .filter_type(ScanningRepositoryFilterType::Wildcard)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutRegistryScanningConfiguration");
}

/// The registry's three parts as this code reads them, the account id left out.
async fn registry_state(account: &Account) -> (Option<String>, Value, Value) {
    let api = account.api();
    let policy = api.registry_policy().await.unwrap().policy_text;
    let replication = api.registry_replication().await.unwrap();
    let scanning = api.registry_scanning().await.unwrap();
    (
        policy,
        serde_json::to_value(&replication.rules).unwrap(),
        serde_json::to_value((&scanning.scan_type, &scanning.rules)).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_come_back_after_a_disaster_and_into_another_account() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("settings");
    let source = Account::new(&servers).await;
    let app: RepositoryName = format!("{prefix}/app").parse()?;
    let plain: RepositoryName = format!("{prefix}/plain").parse()?;
    let key = source.new_key().await;
    configure(&source, &app, &plain, &key).await;
    let v1 = source.push(&servers, &app, &["v1", "latest"], 61).await;
    source.push(&servers, &plain, &["v1"], 62).await;
    let before_app = source.settings(&app).await.expect("app exists");
    let before_plain = source.settings(&plain).await.expect("plain exists");
    let before_registry = registry_state(&source).await;
    assert_eq!(before_app.image_tag_mutability, "IMMUTABLE_WITH_EXCLUSION");
    assert_eq!(before_app.kms_key.as_deref(), Some(key.as_str()));
    assert_eq!(before_app.resource_tags.len(), 2);

    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let first = backup(&source, &servers, &store, &prefix);
    let mut written: Vec<String> = serde_json::from_value(first["settings"]["written"].clone())?;
    written.sort();
    assert_eq!(
        written,
        vec![
            "registry policy".to_owned(),
            "registry replication".into(),
            "registry scanning".into(),
            format!("repository {app}"),
            format!("repository {plain}"),
        ]
    );
    assert_eq!(first["settings"]["warnings"], serde_json::json!([]));

    // An unchanged run writes no settings object at all.
    let objects = settings_objects(&store);
    let second = backup(&source, &servers, &store, &prefix);
    assert_eq!(second["settings"]["written"], serde_json::json!([]));
    assert_eq!(second["settings"]["unchanged"], 5);
    assert_eq!(
        settings_objects(&store),
        objects,
        "an unchanged run wrote settings objects"
    );

    // `ls --settings` shows what is stored.
    let (code, shown, _) = run(source
        .cli(&servers)
        .args(["ls", "--json", "--settings", "--store"])
        .arg(&store)
        .arg(app.as_str()));
    assert_eq!(code, Some(0));
    assert_eq!(shown["settings"]["lifecyclePolicy"], LIFECYCLE);
    assert_eq!(shown["settings"]["kmsKey"], key.as_str());
    assert_eq!(shown["versions"], 1);

    // The disaster: repositories and registry settings gone.
    for repo in [&app, &plain] {
        source
            .ecr
            .delete_repository()
            .repository_name(repo.as_str())
            .force(true)
            .send()
            .await?;
    }
    source.ecr.delete_registry_policy().send().await?;
    source
        .ecr
        .put_replication_configuration()
        .replication_configuration(
            aws_sdk_ecr::types::ReplicationConfiguration::builder()
                .set_rules(Some(vec![]))
                .build()?,
        )
        .send()
        .await?;
    source
        .ecr
        .put_registry_scanning_configuration()
        .scan_type(aws_sdk_ecr::types::ScanType::Basic)
        .set_rules(Some(vec![]))
        .send()
        .await?;
    assert!(source.settings(&app).await.is_none());

    // Back into the same account: every field as it was.
    let (code, report, _) = restore(&source, &servers, &store, &prefix, &["--settings"]);
    assert_eq!(code, Some(0));
    assert_eq!(report["settings"]["failed"], serde_json::json!([]));
    assert_eq!(report["images_failed"], serde_json::json!([]));
    assert_eq!(source.settings(&app).await.as_ref(), Some(&before_app));
    assert_eq!(source.settings(&plain).await.as_ref(), Some(&before_plain));
    assert_eq!(registry_state(&source).await, before_registry);
    // The images are there, under their tags (pushed before IMMUTABLE was set).
    let head = servers.target_client().head_manifest(&app, "v1").await?;
    assert_eq!(head.map(|h| h.digest), Some(v1.digest.clone()));

    // Into another account: account ids rewritten; the source's KMS key does not exist
    // there, which is an error naming it, and the repository is not created without it.
    let other = Account::new(&servers).await;
    let map = format!("{}={}", source.id, other.id);
    let (code, report, stderr) = restore(
        &other,
        &servers,
        &store,
        &prefix,
        &["--settings", "--map-account", &map],
    );
    assert_eq!(code, Some(1));
    let mapped_key = key.replace(&source.id, &other.id);
    assert!(
        stderr.contains(&format!("KMS key {mapped_key} does not exist")),
        "{stderr}"
    );
    assert!(
        other.settings(&app).await.is_none(),
        "created without its key"
    );
    assert!(other.settings(&plain).await.is_some());
    let failed: Vec<String> = report["images_failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["repository"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(failed, vec![app.to_string()]);

    // A dry run names what would be created and changes nothing.
    let other_key = other.new_key().await;
    let (code, report, _) = restore(
        &other,
        &servers,
        &store,
        &prefix,
        &[
            "--settings",
            "--map-account",
            &map,
            "--kms-key",
            &other_key,
            "--dry-run",
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(report["dry_run"], true);
    let changes = report["settings"]["changes"].as_array().unwrap();
    assert!(changes
        .iter()
        .any(|c| c["subject"] == format!("repository {app}")
            && c["setting"] == "encryptionConfiguration"
            && c["value"] == format!("KMS {other_key}")));
    assert!(
        other.settings(&app).await.is_none(),
        "a dry run created a repository"
    );

    // With a key of the target account it is created, and every field matches the
    // source's with the account ids rewritten.
    let (code, report, _) = restore(
        &other,
        &servers,
        &store,
        &prefix,
        &["--settings", "--map-account", &map, "--kms-key", &other_key],
    );
    assert_eq!(code, Some(0));
    assert_eq!(report["settings"]["differences"], serde_json::json!([]));
    let moved = other.settings(&app).await.expect("created");
    let expected = RepositorySettings {
        registry_id: other.id.clone(),
        repository_arn: before_app.repository_arn.replace(&source.id, &other.id),
        kms_key: Some(other_key.clone()),
        repository_policy: Some(pull_policy(&other.id, "deployer")),
        ..before_app.clone()
    };
    assert_eq!(moved, expected);
    let (policy, replication, scanning) = registry_state(&other).await;
    assert_eq!(policy, Some(registry_policy(&other.id)));
    assert_eq!(
        replication,
        before_registry
            .1
            .to_string()
            .replace(&source.id, &other.id)
            .parse::<Value>()?
    );
    assert_eq!(scanning, before_registry.2);

    // A repository that exists with other settings is not changed silently.
    other
        .ecr
        .set_repository_policy()
        .repository_name(app.as_str())
        .policy_text(pull_policy(&other.id, "someone-else"))
        .send()
        .await?;
    let (code, report, stderr) = restore(
        &other,
        &servers,
        &store,
        &prefix,
        &["--settings", "--map-account", &map, "--kms-key", &other_key],
    );
    assert_eq!(code, Some(0));
    let differences = report["settings"]["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(differences[0]["setting"], "repositoryPolicy");
    assert!(stderr.contains("differs: repositoryPolicy"), "{stderr}");
    assert_eq!(
        other.settings(&app).await.unwrap().repository_policy,
        Some(pull_policy(&other.id, "someone-else"))
    );
    let (code, _, _) = restore(
        &other,
        &servers,
        &store,
        &prefix,
        &[
            "--settings",
            "--map-account",
            &map,
            "--kms-key",
            &other_key,
            "--overwrite-settings",
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(other.settings(&app).await, Some(expected));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_run_s_settings_come_back_with_as_of() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("settings-asof");
    let source = Account::new(&servers).await;
    let repo: RepositoryName = format!("{prefix}/app").parse()?;
    source
        .ecr
        .create_repository()
        .repository_name(repo.as_str())
        .send()
        .await?;
    source
        .ecr
        .set_repository_policy()
        .repository_name(repo.as_str())
        .policy_text(pull_policy(&source.id, "first"))
        .send()
        .await?;
    source.push(&servers, &repo, &["v1"], 71).await;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let first = backup(&source, &servers, &store, &prefix);
    let run_one = dir_store_at(&store)
        .snapshot(first["snapshot"].as_str().unwrap())
        .await?
        .expect("run 1's snapshot")
        .observed_at;

    source
        .ecr
        .set_repository_policy()
        .repository_name(repo.as_str())
        .policy_text(pull_policy(&source.id, "second"))
        .send()
        .await?;
    source
        .ecr
        .put_image_tag_mutability()
        .repository_name(repo.as_str())
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await?;
    let second = backup(&source, &servers, &store, &prefix);
    assert_eq!(
        second["settings"]["written"],
        serde_json::json!([format!("repository {repo}")])
    );

    let shown = |as_of: Option<String>| {
        let mut command = source.cli(&servers);
        command
            .args(["ls", "--json", "--settings", "--store"])
            .arg(&store)
            .arg(repo.as_str());
        if let Some(t) = as_of {
            command.args(["--as-of", &t]);
        }
        run(&mut command)
    };
    let (_, latest, _) = shown(None);
    assert_eq!(
        latest["settings"]["repositoryPolicy"],
        pull_policy(&source.id, "second")
    );
    assert_eq!(latest["versions"], 2);
    let (_, old, _) = shown(Some(run_one.to_rfc3339()));
    assert_eq!(
        old["settings"]["repositoryPolicy"],
        pull_policy(&source.id, "first")
    );
    assert_eq!(old["settings"]["imageTagMutability"], "MUTABLE");
    let (code, _, stderr) = shown(Some((run_one - chrono::Duration::seconds(1)).to_rfc3339()));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no settings of"), "{stderr}");

    // Restored as of each run, into accounts of their own.
    for (at, role, mutability) in [
        (run_one, "first", "MUTABLE"),
        (chrono::Utc::now(), "second", "IMMUTABLE"),
    ] {
        let target = Account::new(&servers).await;
        let map = format!("{}={}", source.id, target.id);
        let (code, report, _) = restore(
            &target,
            &servers,
            &store,
            &prefix,
            &[
                "--settings-only",
                "--map-account",
                &map,
                "--as-of",
                &at.to_rfc3339(),
            ],
        );
        assert_eq!(code, Some(0));
        assert_eq!(report["tags_pushed"], 0, "--settings-only pushes no image");
        let restored = target.settings(&repo).await.expect("created");
        assert_eq!(
            restored.repository_policy,
            Some(pull_policy(&target.id, role))
        );
        assert_eq!(restored.image_tag_mutability, mutability);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_the_target_refuses_is_named_and_the_images_are_restored() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = unique_prefix("settings-bad");
    let source = Account::new(&servers).await;
    let repo: RepositoryName = format!("{prefix}/app").parse()?;
    source
        .ecr
        .create_repository()
        .repository_name(repo.as_str())
        .send()
        .await?;
    source
        .ecr
        .put_lifecycle_policy()
        .repository_name(repo.as_str())
        .lifecycle_policy_text(LIFECYCLE)
        .send()
        .await?;
    let image = source.push(&servers, &repo, &["v1"], 81).await;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    backup(&source, &servers, &store_dir, &prefix);

    // The store's latest settings of the repository carry a policy ECR refuses.
    let store = dir_store_at(&store_dir);
    let mut settings = source.settings(&repo).await.unwrap();
    settings.repository_policy = Some(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":["ecr:BatchGetImage"],"Condition":5}]}"#.into(),
    );
    store
        .put_settings(
            &SettingsSubject::Repository(repo.clone()),
            document_bytes(&settings),
            chrono::Utc::now(),
        )
        .await?;

    let target = Account::new(&servers).await;
    let map = format!("{}={}", source.id, target.id);
    let (code, report, stderr) = restore(
        &target,
        &servers,
        &store_dir,
        &prefix,
        &["--settings", "--map-account", &map, "--no-lifecycle"],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("failed: repositoryPolicy of repository {repo}")),
        "{stderr}"
    );
    let failed = report["settings"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(report["images_failed"], serde_json::json!([]));
    let head = servers.target_client().head_manifest(&repo, "v1").await?;
    assert_eq!(head.map(|h| h.digest), Some(image.digest));
    // --no-lifecycle held the lifecycle policy back, and said so.
    let restored = target.settings(&repo).await.expect("created");
    assert_eq!(restored.lifecycle_policy, None);
    assert_eq!(
        report["settings"]["held_back"][0]["setting"],
        "lifecyclePolicy"
    );
    Ok(())
}

//! Restore drills and `status`: a sample of the latest run restored into scratch
//! repositories of a real registry (docker-registry, and ECR as moto's API over the auth
//! registry), every digest compared, cleaned up and recorded; a corrupt blob that fails
//! the drill naming its image; a registry that cannot delete; the drill Lambda as Lambda
//! runs it; and `status` over the records, the source and the queues (moto SQS).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::common::{aws_config, backup_prefix, build_binaries, s3_store};
use crate::restore::{cli, run_cli, Fixture};
use ecr_backup_shared::RepositoryName;
use ecr_backup_tests::lambda_runtime_api::{FunctionConfig, InvocationResult, LambdaFunction};
use ecr_backup_tests::servers::{registry_client, TestServers};

const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

fn json_out(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn drill_files(store: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store.join("drills"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_restores_a_sample_compares_every_digest_and_cleans_up() -> Result<()> {
    let f = Fixture::new("drill", 0).await?;
    let output = run_cli(
        cli()
            .args(["drill", "--json", "--sample", "3", "--store"])
            .arg(f.store_dir())
            .args(["--target", &f.servers.target_registry]),
    );
    assert_eq!(output.status.code(), Some(0));
    let out = json_out(&output);
    let record = &out["record"];
    assert_eq!(record["passed"], true);
    assert_eq!(record["run"], json!(f.backup.snapshot));
    let images = record["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(
        record["imagesInRun"].as_u64().unwrap() as usize,
        f.tagged().count()
    );
    let target = f.servers.target_client();
    for image in images {
        assert_eq!(image["ok"], true, "{image}");
        assert!(image["blobs"].as_u64().unwrap() >= 2, "{image}");
        let scratch: RepositoryName = image["scratchRepository"].as_str().unwrap().parse()?;
        assert!(
            scratch.as_str().starts_with("ecr-backup-drill/")
                && scratch
                    .as_str()
                    .ends_with(image["repository"].as_str().unwrap()),
            "{scratch}"
        );
        // Cleaned up: the scratch image is gone from the target.
        let digest = image["digest"].as_str().unwrap();
        assert!(
            target.head_manifest(&scratch, digest).await?.is_none(),
            "{scratch}@{digest} is still in the target"
        );
    }
    assert_eq!(record["cleanup"]["method"], "registry");
    assert_eq!(record["cleanup"]["complete"], true);
    assert!(record["cleanup"]["imagesDeleted"].as_u64().unwrap() >= 3);

    // Recorded in the store, create-only, under its id, as docs/format.md says.
    let files = drill_files(&f.store_dir());
    assert_eq!(files.len(), 1);
    let stored: Value = serde_json::from_slice(&std::fs::read(&files[0])?)?;
    assert_eq!(&stored, record);
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        format!("{}.json", record["id"].as_str().unwrap())
    );

    // And status reads it back.
    let output = run_cli(
        cli()
            .args(["status", "--json", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(0));
    let status = json_out(&output);
    assert_eq!(status["healthy"], true);
    assert_eq!(status["last_drill"]["id"], record["id"]);
    assert_eq!(status["last_run"]["id"], json!(f.backup.snapshot));
    assert_eq!(status["last_run"]["failures"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_fails_naming_the_image_whose_blob_is_corrupt_and_status_says_so() -> Result<()> {
    let f = Fixture::new("drill-corrupt", 0).await?;
    let (layer, image) = f.private_layer("app", "release-2");
    let path = f.blob_path(&layer);
    let mut bytes = std::fs::read(&path)?;
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes)?;

    let output = run_cli(
        cli()
            .args(["drill", "--json", "--sample-percent", "100", "--store"])
            .arg(f.store_dir())
            .args(["--target", &f.servers.target_registry]),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = format!("{}@{}", f.repo("app"), image);
    assert!(
        stderr.contains(&format!("failed: {name}")) && stderr.contains(&layer.to_string()),
        "stderr names neither the image nor the blob:\n{stderr}"
    );
    let out = json_out(&output);
    let record = &out["record"];
    assert_eq!(record["passed"], false);
    assert!(record["blobProblems"].as_u64().unwrap() >= 1);
    let images = record["images"].as_array().unwrap();
    assert_eq!(images.len(), f.tagged().count(), "100 % is every image");
    let failed: Vec<&Value> = images.iter().filter(|i| i["ok"] == false).collect();
    assert_eq!(
        failed.len(),
        1,
        "only the image with the corrupt layer fails"
    );
    assert_eq!(failed[0]["digest"], image.to_string());
    assert!(failed[0]["error"].as_str().unwrap().contains("corrupt"));
    // The broken image was never pushed: nothing of it is in a scratch repository.
    let scratch: RepositoryName = failed[0]["scratchRepository"].as_str().unwrap().parse()?;
    assert!(f
        .servers
        .target_client()
        .head_manifest(&scratch, &image.to_string())
        .await?
        .is_none());

    // status: the failed drill is a reason to exit 1, named.
    let output = run_cli(cli().args(["status", "--store"]).arg(f.store_dir()));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("restore drill") && stderr.contains(&name),
        "{stderr}"
    );

    // A verify finds it too, and records it; status then names both.
    let output = run_cli(
        cli()
            .args(["verify", "--read-data", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(1));
    let output = run_cli(
        cli()
            .args(["status", "--json", "--store"])
            .arg(f.store_dir()),
    );
    assert_eq!(output.status.code(), Some(1));
    let status = json_out(&output);
    assert_eq!(status["last_verify"]["clean"], false);
    assert!(status["last_verify"]["problems"][0]
        .as_str()
        .unwrap()
        .contains(&layer.to_string()));
    let reasons = status["reasons"].to_string();
    assert!(
        reasons.contains("verify") && reasons.contains("drill"),
        "{reasons}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_into_ecr_creates_and_deletes_only_scratch_repositories() -> Result<()> {
    let f = Fixture::new("drill-ecr", 0).await?;
    let output = run_cli(
        cli()
            .args([
                "drill",
                "--json",
                "--sample",
                "2",
                "--scratch-prefix",
                "dr-scratch",
            ])
            .arg("--store")
            .arg(f.store_dir())
            .args([
                "--target",
                ECR_HOST,
                "--target-endpoint",
                &f.servers.auth_registry,
            ])
            .env("AWS_ENDPOINT_URL_ECR", &f.servers.moto)
            .env("AWS_REGION", "us-east-1"),
    );
    assert_eq!(output.status.code(), Some(0));
    let record = json_out(&output)["record"].clone();
    assert_eq!(record["passed"], true, "{record}");
    assert_eq!(record["cleanup"]["method"], "ecr");
    assert_eq!(record["cleanup"]["complete"], true, "{record}");
    let scratch: std::collections::BTreeSet<&str> = record["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["scratchRepository"].as_str().unwrap())
        .collect();
    assert!(scratch.iter().all(|s| s.starts_with("dr-scratch/")));
    assert_eq!(
        record["cleanup"]["repositoriesDeleted"].as_u64(),
        Some(scratch.len() as u64)
    );
    // moto's ECR has no repository left under the prefix (it had them during the drill:
    // the restore creates them before it pushes, or the push would have failed).
    let ecr = aws_sdk_ecr::Client::new(&aws_config(&f.servers.moto).await);
    let repos = ecr
        .describe_repositories()
        .registry_id("123456789012")
        .send()
        .await?;
    let left: Vec<&str> = repos
        .repositories()
        .iter()
        .filter_map(|r| r.repository_name())
        .filter(|n| n.starts_with("dr-scratch/"))
        .collect();
    assert!(left.is_empty(), "scratch repositories left: {left:?}");
    Ok(())
}

/// A registry (docker-registry) with deletes disabled, its default; killed on drop.
struct NoDeleteRegistry {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for NoDeleteRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry_without_deletes() -> Result<NoDeleteRegistry> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry is installed (tests/scripts/setup.sh)")?;
    let url = format!("http://127.0.0.1:{port}");
    let registry = NoDeleteRegistry {
        child,
        url: url.clone(),
        _dir: dir,
    };
    for _ in 0..100 {
        if reqwest::get(format!("{url}/v2/")).await.is_ok() {
            return Ok(registry);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("docker-registry did not start on {url}")
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_into_a_registry_without_deletes_passes_and_says_what_is_left() -> Result<()> {
    let f = Fixture::new("drill-nodelete", 0).await?;
    let registry = start_registry_without_deletes().await?;
    let output = run_cli(
        cli()
            .args(["drill", "--json", "--sample", "1", "--store"])
            .arg(f.store_dir())
            .args(["--target", &registry.url]),
    );
    assert_eq!(output.status.code(), Some(0), "the images restored whole");
    let record = json_out(&output)["record"].clone();
    assert_eq!(record["passed"], true);
    assert_eq!(record["cleanup"]["complete"], false);
    let left = record["cleanup"]["leftOver"].to_string();
    assert!(left.contains("does not allow deletes"), "{left}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not allow deletes"), "{stderr}");
    // What it said is left is there.
    let image = &record["images"][0];
    let scratch: RepositoryName = image["scratchRepository"].as_str().unwrap().parse()?;
    let client = registry_client(
        &registry.url,
        ecr_backup_shared::source::registry::Credentials::Anonymous,
    );
    assert!(client
        .head_manifest(&scratch, image["digest"].as_str().unwrap())
        .await?
        .is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_refuses_bad_input_and_a_store_without_runs() -> Result<()> {
    let servers = TestServers::from_env();
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    crate::common::dir_store_at(&store).init().await?;
    let output = run_cli(
        cli()
            .args(["drill", "--store"])
            .arg(&store)
            .args(["--target", &servers.target_registry]),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no complete backup run"));
    for (flag, value, says) in [
        ("--sample-percent", "0", "above 0"),
        ("--scratch-prefix", "Bad_Prefix", "invalid scratch prefix"),
    ] {
        let output = run_cli(cli().args(["drill", "--store"]).arg(&store).args([
            "--target",
            &servers.target_registry,
            flag,
            value,
        ]));
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(says),
            "{flag} {value}"
        );
    }
    assert!(drill_files(&store).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_lambda_drills_an_s3_store_into_ecr_and_emits_its_metrics() -> Result<()> {
    let servers = TestServers::from_env();
    let prefix = ecr_backup_tests::servers::unique_prefix("drill-lambda");
    let client = servers.source_client();
    ecr_backup_tests::corpus::push_small_image(&client, &format!("{prefix}/app").parse()?, "v1", 7)
        .await?;
    let (_s3, store, bucket) = s3_store(&servers.moto, "drill-lambda").await;
    let report = backup_prefix(&servers.registry, None, &prefix, &store).await;
    ensure!(report.is_success(), "{:?}", report.images_failed);
    let binary = build_binaries(&["ecr-backup-drill"], &["ecr-backup-drill"]).remove(0);
    let function = LambdaFunction::new(
        FunctionConfig::new("ecr-backup-drill-test", binary)
            .timeout(Duration::from_secs(120))
            .aws_endpoint(&servers.moto)
            .env("ECR_BACKUP_STORE", format!("s3://{bucket}/backup"))
            .env("ECR_BACKUP_DRILL_SAMPLE", "100%")
            .env("ECR_BACKUP_REGISTRY_ENDPOINT", &servers.auth_registry)
            .env("RUST_LOG", "info"),
    );
    let result = function
        .invoke(&json!({"source": "aws.events"}), Duration::from_secs(120))
        .await;
    let response = match &result {
        InvocationResult::Response(v) => v.clone(),
        other => panic!("{other:?}\n{}", function.log_tail(30)),
    };
    assert_eq!(response["record"]["passed"], true, "{response}");
    let emf = function
        .wait_for_emf("DrillImages", Duration::from_secs(5))
        .await
        .expect("an EMF document with the drill's metrics");
    assert_eq!(emf["Function"], "drill");
    assert_eq!(emf["DrillImages"], 1.0);
    assert_eq!(emf["DrillFailures"], 0.0);
    assert_eq!(emf["VerifyProblems"], 0.0);
    assert!(emf["DrillSeconds"].as_f64().unwrap() > 0.0);

    // The daily check reports the age of that drill.
    let result = function
        .invoke(&json!({"check": "age"}), Duration::from_secs(60))
        .await;
    assert!(result.response().is_some(), "{result:?}");
    let age = function
        .wait_for_emf("DrillAgeHours", Duration::from_secs(5))
        .await
        .expect("an EMF document with DrillAgeHours");
    assert!(age["DrillAgeHours"].as_f64().unwrap() < 1.0, "{age}");
    function.shutdown().await;
    Ok(())
}

async fn queue(servers: &TestServers, name: &str) -> Result<(aws_sdk_sqs::Client, String)> {
    let sqs = aws_sdk_sqs::Client::new(&aws_config(&servers.moto).await);
    let url = sqs
        .create_queue()
        .queue_name(format!("{name}-{:08x}", rand::random::<u32>()))
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    Ok((sqs, url))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_is_healthy_when_fresh_and_names_stale_runs_and_dead_letters() -> Result<()> {
    let f = Fixture::new("status", 0).await?;
    let moto = f.servers.moto.clone();
    let (sqs, dlq) = queue(&f.servers, "status-dlq").await?;
    let (_, copy_queue) = queue(&f.servers, "status-copy").await?;
    let status = |extra: &[&str]| {
        run_cli(
            cli()
                .args(["status", "--store"])
                .arg(f.store_dir())
                .args(extra)
                .env("AWS_ENDPOINT_URL", &moto)
                .env("AWS_REGION", "us-east-1"),
        )
    };

    // Fresh: a run just now, empty queues. The lag (CloudWatch's
    // ApproximateAgeOfOldestMessage) is unknown here: the pinned moto does not speak the
    // protocol the current CloudWatch SDK uses, and an unreadable lag is not a failure.
    let output = status(&["--json", "--dlq", &dlq, "--queue", &copy_queue]);
    assert_eq!(output.status.code(), Some(0));
    let s = json_out(&output);
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["dlq"]["visible"], 0);
    assert_eq!(s["queue"]["visible"], 0);
    assert_eq!(s["queue"]["oldest_message_age_seconds"], Value::Null);

    // Stale: the run is older than --max-age.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let output = status(&["--max-age", "1s"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stale") && stderr.contains(&f.backup.snapshot),
        "{stderr}"
    );

    // A message in the dead-letter queue.
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(r#"{"version":1,"kind":"copy-image"}"#)
        .send()
        .await?;
    let output = status(&["--json", "--dlq", &dlq]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("1 message(s) in the dead-letter queue")
    );
    let s = json_out(&output);
    assert!(s["dlq"]["oldest"]["sent_at"].is_string(), "{s}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_with_source_names_images_not_yet_in_the_store() -> Result<()> {
    let f = Fixture::new("status-source", 0).await?;
    let late: RepositoryName = format!("{}/late", f.prefix).parse()?;
    let pushed =
        ecr_backup_tests::corpus::push_small_image(&f.servers.source_client(), &late, "v1", 99)
            .await?;
    let output = run_cli(
        cli()
            .args(["status", "--json", "--store"])
            .arg(f.store_dir())
            .args(["--source", &f.servers.registry])
            // The test registry is shared by every test: only this test's repositories.
            .args(["--repository", &format!("{}/**", f.prefix)]),
    );
    assert_eq!(output.status.code(), Some(1));
    let s = json_out(&output);
    let missing = s["source"]["first_missing"].to_string();
    assert!(
        missing.contains(&format!("{late}@{}", pushed.digest)),
        "{missing}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not in the store yet"));
    Ok(())
}

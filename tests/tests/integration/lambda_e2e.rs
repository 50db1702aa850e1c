//! The real `ecr-backup-fanout` and `ecr-backup-worker` binaries, run the way AWS Lambda
//! runs them: each in its own process behind a Lambda Runtime API
//! ([`ecr_backup_tests::lambda_runtime_api`]), the worker fed by an SQS event-source
//! mapping ([`ecr_backup_tests::event_source_mapping`]) over a moto queue with a
//! dead-letter queue, moto's ECR API with the auth registry as its data plane, and an S3
//! (moto) store; then the `ecr-backup` CLI restores, lists and verifies what they wrote.
//!
//! Every scenario has its own queues, bucket, repositories and functions, and ends by
//! scanning every line the binaries and the CLI printed for secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use ecr_backup_shared::oci::manifest::OCI_INDEX;
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::{Digest, RepositoryName, Store, Tag};
use ecr_backup_tests::corpus::{
    push_image, push_image_for, push_index, random_layer, repository, CorpusImage, Format, Platform,
};
use ecr_backup_tests::event_source_mapping::{DrainReport, EventSourceMapping};
use ecr_backup_tests::lambda_runtime_api::{
    FunctionConfig, InvocationResult, LambdaFunction, LogStream,
};
use ecr_backup_tests::servers::{self, TestServers};
use serde_json::{json, Value};

use crate::common::{aws_config, build_binaries, cli_binary, s3_store};

const VISIBILITY_SECONDS: i32 = 2;
const MAX_RECEIVES: u32 = 2;
const FANOUT_TIMEOUT: Duration = Duration::from_secs(60);
const WORKER_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Everything the binaries can log, so the secret scan sees the paths that handle secrets
/// (token login, signing, redirects) at their most verbose.
const LOG_FILTER: &str = "trace";

/// The Lambda binaries, built once per test run so they are never stale.
struct Binaries {
    fanout: PathBuf,
    worker: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let mut paths = build_binaries(
            &["ecr-backup-fanout", "ecr-backup-worker"],
            &["ecr-backup-fanout", "ecr-backup-worker"],
        );
        let worker = paths.pop().expect("two binaries");
        let fanout = paths.pop().expect("two binaries");
        Binaries { fanout, worker }
    })
}

/// A copy queue with its dead-letter queue; returns (queue URL, DLQ URL).
async fn queues(sqs: &aws_sdk_sqs::Client, name: &str, max_receives: u32) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let suffix = format!("{:08x}", rand::random::<u32>());
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq-{suffix}"))
        .send()
        .await
        .expect("create the dead-letter queue")
        .queue_url()
        .unwrap()
        .to_owned();
    let dlq_arn = SqsQueue::new(sqs.clone(), dlq_url.clone())
        .arn()
        .await
        .unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-{suffix}"))
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            VISIBILITY_SECONDS.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}).to_string(),
        )
        .send()
        .await
        .expect("create the copy queue")
        .queue_url()
        .unwrap()
        .to_owned();
    (queue_url, dlq_url)
}

/// One scenario's world: servers, queues, bucket, repositories, the two functions and the
/// mapping, and the CLI's output.
struct Lab {
    servers: TestServers,
    prefix: String,
    ecr: aws_sdk_ecr::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    bucket: String,
    store_url: String,
    store: Store,
    queue_url: String,
    dlq_url: String,
    fanout: Arc<LambdaFunction>,
    worker: Arc<LambdaFunction>,
    mapping: EventSourceMapping,
    cli_output: Mutex<Vec<(String, String)>>,
    started: std::time::Instant,
}

impl Lab {
    async fn new(name: &str) -> Lab {
        Lab::with(name, MAX_RECEIVES, &[]).await
    }

    /// A lab whose queue allows `max_receives` receives, with extra variables for both
    /// functions.
    async fn with(name: &str, max_receives: u32, env: &[(&str, &str)]) -> Lab {
        let servers = TestServers::from_env();
        let binaries = tokio::task::spawn_blocking(|| {
            cli_binary();
            binaries()
        })
        .await
        .unwrap();
        let prefix = servers::unique_prefix(name)
            .trim_end_matches('/')
            .to_owned();
        let config = aws_config(&servers.moto).await;
        let ecr = aws_sdk_ecr::Client::new(&config);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let (queue_url, dlq_url) = queues(&sqs, name, max_receives).await;
        let (s3, store, bucket) = s3_store(&servers.moto, name).await;
        let store_url = format!("s3://{bucket}/backup");
        let suffix = format!("{:08x}", rand::random::<u32>());

        let function = |role: &str, binary: &Path, timeout: Duration| {
            let mut config = FunctionConfig::new(format!("ecr-backup-{role}-{suffix}"), binary)
                .timeout(timeout)
                .aws_endpoint(&servers.moto)
                .env("ECR_BACKUP_STORE", &store_url)
                .env("ECR_BACKUP_QUEUE_URL", &queue_url)
                .env("ECR_BACKUP_REPOSITORIES", format!("{prefix}/**"))
                .env("ECR_BACKUP_REGISTRY_ENDPOINT", &servers.auth_registry)
                .env("RUST_LOG", LOG_FILTER);
            for (k, v) in env {
                config = config.env(*k, *v);
            }
            config
        };
        let fanout = Arc::new(LambdaFunction::new(function(
            "fanout",
            &binaries.fanout,
            FANOUT_TIMEOUT,
        )));
        let worker = Arc::new(LambdaFunction::new(
            function("worker", &binaries.worker, WORKER_TIMEOUT).env("ECR_BACKUP_CONCURRENCY", "4"),
        ));
        let mapping = EventSourceMapping::new(sqs.clone(), &queue_url, worker.clone())
            .await
            .expect("an event-source mapping on the copy queue");
        Lab {
            servers,
            prefix,
            ecr,
            sqs,
            s3,
            bucket,
            store_url,
            store,
            queue_url,
            dlq_url,
            fanout,
            worker,
            mapping,
            cli_output: Mutex::default(),
            started: std::time::Instant::now(),
        }
    }

    fn repo(&self, name: &str) -> RepositoryName {
        repository(&self.prefix, name).unwrap()
    }

    /// Registers an image of the data plane in moto's ECR under each tag (`None`:
    /// untagged), with its real digest.
    async fn register(&self, image: &CorpusImage, tags: &[Option<&str>]) {
        let _ = self
            .ecr
            .create_repository()
            .repository_name(image.repository.as_str())
            .send()
            .await;
        let manifest = String::from_utf8(image.manifest_bytes.to_vec()).unwrap();
        for tag in tags {
            self.ecr
                .put_image()
                .repository_name(image.repository.as_str())
                .image_manifest(&manifest)
                .image_manifest_media_type(&image.media_type)
                .image_digest(image.digest.to_string())
                .set_image_tag(tag.map(str::to_owned))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "ECR PutImage {}@{}: {}",
                        image.repository,
                        image.digest,
                        aws_sdk_ecr::error::DisplayErrorContext(&e)
                    )
                });
        }
    }

    /// Pushes a one-layer image of `layer_size` random bytes to the data plane under
    /// `tags` (none: by digest) and registers it in ECR.
    async fn push(
        &self,
        repo: &RepositoryName,
        tags: &[&str],
        layer_size: u64,
        format: Format,
    ) -> CorpusImage {
        let parsed: Vec<Tag> = tags.iter().map(|t| t.parse().unwrap()).collect();
        let layer = random_layer(rand::random(), layer_size);
        let image = push_image(&self.servers.auth_client(), repo, &parsed, &[layer], format)
            .await
            .unwrap();
        let tags: Vec<Option<&str>> = if tags.is_empty() {
            vec![None]
        } else {
            tags.iter().map(|t| Some(*t)).collect()
        };
        self.register(&image, &tags).await;
        image
    }

    /// Pushes an OCI index of a linux/amd64 and a linux/arm64 image (children by digest)
    /// tagged `tag`; returns the index (not registered in ECR).
    async fn push_index(&self, repo: &RepositoryName, tag: &str) -> CorpusImage {
        let client = self.servers.auth_client();
        let mut children = Vec::new();
        for platform in [Platform::LINUX_AMD64, Platform::LINUX_ARM64] {
            let layer = random_layer(rand::random(), 30_000);
            let child = push_image_for(&client, repo, &[], &[layer], Format::Oci, platform)
                .await
                .unwrap();
            children.push((platform, child));
        }
        push_index(
            &client,
            repo,
            &[tag.parse().unwrap()],
            &children,
            Format::Oci,
        )
        .await
        .unwrap()
    }

    /// Invokes the fan-out with a scheduled EventBridge event; returns its report.
    async fn run_fanout(&self) -> Value {
        let event = json!({
            "version": "0",
            "id": format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": Utc::now().trunc_subsecs(0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/ecr-backup-daily"],
            "detail": {}
        });
        match self.fanout.invoke(&event, FANOUT_TIMEOUT).await {
            InvocationResult::Response(report) => report,
            other => panic!(
                "the fan-out did not answer: {other:?}\n{}",
                self.fanout.log_tail(40)
            ),
        }
    }

    /// Runs the mapping until the queue is empty.
    async fn drain(&self) -> DrainReport {
        match self.mapping.drain(DRAIN_TIMEOUT).await {
            Ok(report) => report,
            Err(e) => panic!("{e:#}\n{}", self.worker.log_tail(40)),
        }
    }

    /// Drains, and fails on anything but clean first deliveries.
    async fn drain_cleanly(&self) -> DrainReport {
        let report = self.drain().await;
        let s = &report.stats;
        assert!(
            s.function_errors == 0
                && s.crashes == 0
                && s.timeouts == 0
                && s.reported_failures == 0
                && s.redeliveries == 0,
            "the worker did not process every message on its first delivery: {s:?}\n{}",
            self.worker.log_tail(40)
        );
        report
    }

    async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage");
    }

    /// The EventBridge event of an ECR push, as the push rule delivers it to the queue.
    fn push_event(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        tag: &str,
        time: DateTime<Utc>,
    ) -> String {
        json!({
            "version": "0",
            "id": format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16),
            "detail-type": "ECR Image Action",
            "source": "aws.ecr",
            "account": "123456789012",
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "us-east-1",
            "resources": [],
            "detail": {
                "result": "SUCCESS",
                "repository-name": repo.as_str(),
                "image-digest": digest.to_string(),
                "action-type": "PUSH",
                "image-tag": tag,
                "manifest-media-type": "application/vnd.oci.image.manifest.v1+json"
            }
        })
        .to_string()
    }

    /// Runs the CLI (logs at debug level) against moto; returns (exit code, stdout,
    /// stderr) and keeps the output for the secret scan.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let moto = self.servers.moto.clone();
        let shown = args.join(" ");
        let out = tokio::task::spawn_blocking(move || {
            Command::new(cli_binary())
                .args(&args)
                .env("AWS_ENDPOINT_URL", &moto)
                .env("ECR_BACKUP_LOG", "debug")
                .output()
                .expect("run ecr-backup")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.cli_output
            .lock()
            .unwrap()
            .push((shown, format!("{stdout}{stderr}")));
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// Runs the CLI with `--json`, expecting success; returns its JSON.
    async fn cli_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let (code, stdout, stderr) = self.cli(&args).await;
        assert_eq!(
            code,
            0,
            "ecr-backup {} exited {code}:\n{}\n{stdout}",
            args.join(" "),
            errors_only(&stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("ecr-backup {}: not JSON ({e}):\n{stdout}", args.join(" ")))
    }

    /// `ecr-backup restore` of this lab's repositories into the target registry.
    async fn restore(&self, extra: &[&str]) -> Value {
        let glob = format!("{}/**", self.prefix);
        let mut args = vec![
            "restore",
            "--store",
            &self.store_url,
            "--target",
            &self.servers.target_registry,
            "--repository",
            &glob,
        ];
        args.extend_from_slice(extra);
        let report = self.cli_json(&args).await;
        assert_eq!(
            report["images_failed"],
            json!([]),
            "restore {extra:?} failed images: {report:#}"
        );
        report
    }

    /// `ecr-backup ls REPOSITORY`: tag to digest.
    async fn tags_in_store(&self, repo: &RepositoryName) -> BTreeMap<String, String> {
        let listing = self
            .cli_json(&["ls", "--store", &self.store_url, repo.as_str()])
            .await;
        listing["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("ls {repo}: no tags array: {listing:#}"))
            .iter()
            .map(|t| {
                (
                    t["tag"].as_str().unwrap().to_owned(),
                    t["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// What a reference resolves to in the target registry.
    async fn target_digest(&self, repo: &RepositoryName, reference: &str) -> Option<Digest> {
        self.servers
            .target_client()
            .head_manifest(repo, reference)
            .await
            .unwrap_or_else(|e| panic!("HEAD {repo}:{reference} on the target: {e}"))
            .map(|h| h.digest)
    }

    /// The snapshot `run_id` as `ls --snapshots` shows it.
    async fn snapshot(&self, run_id: &str) -> Value {
        let snapshots = self
            .cli_json(&["ls", "--store", &self.store_url, "--snapshots"])
            .await;
        snapshots
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == run_id)
            .cloned()
            .unwrap_or_else(|| panic!("no snapshot {run_id} in {snapshots:#}"))
    }

    async fn dlq_depth(&self) -> u64 {
        SqsQueue::new(self.sqs.clone(), self.dlq_url.clone())
            .approximate_depth()
            .await
            .unwrap()
    }

    /// Stops the functions and scans everything every binary printed for secrets.
    async fn finish(self) {
        self.fanout.shutdown().await;
        self.worker.shutdown().await;
        let secrets = secrets(&self.servers, &[&self.fanout, &self.worker]);
        let mut searched = 0;
        for function in [&self.fanout, &self.worker] {
            let name = &function.config().name;
            let text = function.log_text();
            searched += text.len();
            assert_no_secret(&text, &secrets, name);
            // Lambda's log pipeline reads structured logs and EMF from standard output.
            for line in function.logs() {
                if line.stream == LogStream::Stdout {
                    assert!(
                        serde_json::from_str::<Value>(&line.text).is_ok_and(|v| v.is_object()),
                        "{name} printed a line that is not a JSON object on stdout: {}",
                        redact(&line.text, &secrets)
                    );
                }
            }
        }
        for (args, output) in self.cli_output.lock().unwrap().iter() {
            searched += output.len();
            assert_no_secret(output, &secrets, &format!("ecr-backup {args}"));
        }
        let worker_log = self.worker.log_text();
        if self.worker.stats().cold_starts > 0 {
            assert!(
                worker_log.contains("fetched an ECR registry token"),
                "the worker's log has no token login: the secret scan did not see it"
            );
        }
        println!(
            "{}: {:.1} s after the build, {searched} bytes of logs scanned, no secret found",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// What must never be printed, with a name for the failure message: the registry's
/// credentials in every form, request signatures, and the functions' AWS credentials.
fn secrets(servers: &TestServers, functions: &[&LambdaFunction]) -> Vec<(String, String)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let credentials = &servers.auth_credentials;
    let (_, password) = credentials.split_once(':').unwrap();
    let mut secrets = vec![
        (
            "registry password / decoded ECR token".to_owned(),
            password.to_owned(),
        ),
        (
            "ECR authorizationToken (base64 user:password)".into(),
            b64(credentials),
        ),
        (
            "Authorization: Basic value".into(),
            format!("Basic {}", b64(credentials)),
        ),
        ("presigned URL signature".into(), "X-Amz-Signature=".into()),
        (
            "SigV4 Authorization value".into(),
            "AWS4-HMAC-SHA256 Credential=".into(),
        ),
    ];
    for function in functions {
        let c = function.config();
        secrets.push((
            format!("{} AWS secret access key", c.name),
            c.secret_access_key.clone(),
        ));
        secrets.push((
            format!("{} AWS session token", c.name),
            c.session_token.clone(),
        ));
    }
    secrets
}

/// The CLI's stderr without its debug and trace lines.
fn errors_only(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `text` with every secret replaced, so a failure message never shows one.
fn redact(text: &str, secrets: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (name, secret) in secrets {
        text = text.replace(secret.as_str(), &format!("<{name}>"));
    }
    text
}

/// Fails naming the secret and showing where it appeared (with the secret blanked out).
fn assert_no_secret(log: &str, secrets: &[(String, String)], context: &str) {
    // The context around log[at..at + len], that span shown as `<hidden>`.
    let excerpt = |at: usize, len: usize| {
        let start = log[..at]
            .char_indices()
            .rev()
            .nth(200)
            .map_or(0, |(i, _)| i);
        let end = (at + len + 100).min(log.len());
        let end = (end..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!(
            "{}<hidden>{}",
            redact(&log[start..at], secrets),
            redact(&log[at + len..end], secrets)
        )
    };
    for (name, secret) in secrets {
        if let Some(at) = log.find(secret.as_str()) {
            panic!(
                "{context}: the {name} appears in the log:\n…{}…",
                excerpt(at, secret.len())
            );
        }
    }
    // A request signature is 64 hex digits after `Signature=`.
    for (at, _) in log.match_indices("Signature=") {
        let hex = log[at + 10..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        assert!(
            hex < 64,
            "{context}: a request signature appears in the log:\n…{}…",
            excerpt(at + 10, hex)
        );
    }
    // Any credential after an auth scheme, whatever the credential.
    for scheme in ["Basic ", "Bearer ", "basic ", "bearer "] {
        for (at, _) in log.match_indices(scheme) {
            let from = at + scheme.len();
            let token = log[from..]
                .bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || b"+/=-._~".contains(c))
                .count();
            assert!(
                token < 16,
                "{context}: a {}credential appears in the log:\n…{}…",
                scheme,
                excerpt(from, token)
            );
        }
    }
}

/// The last EMF document of `function` that has `metric`.
fn last_metric(function: &LambdaFunction, metric: &str) -> Value {
    function
        .emf_documents()
        .into_iter()
        .rev()
        .find(|d| d.get(metric).is_some())
        .unwrap_or_else(|| {
            panic!(
                "{} printed no EMF document with {metric}:\n{}",
                function.config().name,
                function.log_tail(20)
            )
        })
}

/// The JSON log lines of `function` whose message is `message`.
fn log_events(function: &LambdaFunction, message: &str) -> Vec<Value> {
    function
        .logs()
        .into_iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_moves_a_message_to_the_dead_letter_queue_on_the_receive_after_max_receive_count() {
    // The event-source mapping leaves dead-lettering to the queue, as Lambda does; this is
    // the behaviour it relies on.
    let servers = TestServers::from_env();
    let sqs = aws_sdk_sqs::Client::new(&aws_config(&servers.moto).await);
    let (queue_url, dlq_url) = queues(&sqs, "redrive-policy", 2).await;
    let queue = SqsQueue::new(sqs.clone(), queue_url);
    let dlq = SqsQueue::new(sqs.clone(), dlq_url);
    sqs.send_message()
        .queue_url(queue.url())
        .message_body("x")
        .send()
        .await
        .unwrap();
    for receive in 1..=2 {
        let got = queue.receive(1, 2).await.unwrap();
        assert_eq!(got.len(), 1, "receive {receive}");
        assert_eq!(got[0].receive_count, receive);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        queue.receive(1, 1).await.unwrap().is_empty(),
        "a third receive must not deliver the message"
    );
    let moved = dlq.receive(30, 1).await.unwrap();
    assert_eq!(moved.len(), 1, "the message is in the dead-letter queue");
    assert_eq!(moved[0].body, "x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_missing_its_configuration_fails_to_start_naming_the_variable() {
    let servers = TestServers::from_env();
    let binary = tokio::task::spawn_blocking(|| binaries().worker.clone())
        .await
        .unwrap();
    let worker = Arc::new(LambdaFunction::new(
        FunctionConfig::new("ecr-backup-worker-unconfigured", binary)
            .aws_endpoint(&servers.moto)
            .env("RUST_LOG", "info"),
    ));
    let sqs = aws_sdk_sqs::Client::new(&aws_config(&servers.moto).await);
    let (queue_url, _) = queues(&sqs, "unconfigured", 3).await;
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let mapping = EventSourceMapping::new(sqs.clone(), &queue_url, worker.clone())
        .await
        .unwrap();

    let batch = mapping.poll_once().await.unwrap().expect("a batch");
    // Reported to /init/error (Runtime.InitError), or only an exit (Runtime.ExitError).
    let error = match &batch.result {
        InvocationResult::Error(error) => error.clone(),
        other => panic!("expected an init failure, got {other:?}"),
    };
    assert!(
        error["errorType"] == "Runtime.InitError" || error["errorType"] == "Runtime.ExitError",
        "{error}"
    );
    assert!(
        batch.deleted.is_empty(),
        "a failed invocation deletes nothing"
    );
    let said = format!("{error}\n{}", worker.log_text());
    assert!(
        said.contains("ECR_BACKUP_STORE"),
        "neither the init error nor the log names the missing variable:\n{said}"
    );
    // The next invocation is a new cold start, which fails the same way.
    let again = worker.invoke(&json!({"Records": []}), WORKER_TIMEOUT).await;
    assert!(matches!(again, InvocationResult::Error(_)), "{again:?}");
    let stats = worker.stats();
    assert_eq!(
        (stats.cold_starts, stats.init_failures),
        (2, 2),
        "{stats:?}"
    );
    assert_eq!(mapping.in_queue().await.unwrap(), 1, "the message stays");
    worker.shutdown().await;
    assert_no_secret(
        &worker.log_text(),
        &secrets(&servers, &[&*worker]),
        &worker.config().name,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_past_its_deadline_is_killed_and_the_next_one_starts_a_new_process() {
    let lab = Lab::new("lambda-deadline").await;
    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let result = lab
        .fanout
        .invoke(&scheduled, Duration::from_millis(1))
        .await;
    assert_eq!(result, InvocationResult::TimedOut);
    assert!(
        lab.fanout
            .log_text()
            .contains("Task timed out after 0.00 seconds"),
        "{}",
        lab.fanout.log_tail(10)
    );
    let report = lab.run_fanout().await;
    assert_eq!(report["repositories"], 0, "{report}");
    let stats = lab.fanout.stats();
    assert_eq!(
        (stats.cold_starts, stats.timeouts, stats.responses),
        (2, 1, 1),
        "{stats:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_run_backs_up_every_image_restorably_and_a_second_run_sends_nothing() {
    let lab = Lab::new("lambda-full").await;
    let app = lab.repo("app");
    let api = lab.repo("team/api");
    let multi = lab.repo("multi");
    let mut expected: BTreeMap<(RepositoryName, String), Digest> = BTreeMap::new();
    let v1 = lab.push(&app, &["v1", "latest"], 40_000, Format::Oci).await;
    let v2 = lab.push(&app, &["v2"], 50_000, Format::Docker).await;
    let untagged = lab.push(&app, &[], 30_000, Format::Oci).await;
    let api_image = lab.push(&api, &["1.0.0"], 20_000, Format::Docker).await;
    let index = lab.push_index(&multi, "v1").await;
    lab.register(&index, &[Some("v1")]).await;
    for (repo, tag, image) in [
        (&app, "v1", &v1),
        (&app, "latest", &v1),
        (&app, "v2", &v2),
        (&api, "1.0.0", &api_image),
        (&multi, "v1", &index),
    ] {
        expected.insert((repo.clone(), tag.to_owned()), image.digest.clone());
    }

    let report = lab.run_fanout().await;
    assert_eq!(report["repositories"], 3, "{report:#}");
    assert_eq!(report["images_seen"], 5, "{report:#}");
    assert_eq!(report["images_enqueued"], 5, "{report:#}");
    assert_eq!(report["continued_after"], Value::Null, "{report:#}");
    let emf = last_metric(&lab.fanout, "ImagesEnqueued");
    assert_eq!(emf["ImagesEnqueued"], 5.0, "{emf}");
    assert_eq!(
        emf["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "EcrBackup"
    );

    let drained = lab.drain_cleanly().await;
    assert_eq!(drained.stats.messages, 5, "{:?}", drained.stats);
    assert_eq!(drained.stats.deleted, 5, "{:?}", drained.stats);
    let copied: f64 = lab
        .worker
        .emf_documents()
        .iter()
        .filter_map(|d| d["ImagesCopied"].as_f64())
        .sum();
    assert_eq!(copied, 5.0, "the worker's ImagesCopied metrics");
    // The cost figures of every batch: bytes new, objects written, requests by kind.
    let sum = |metric: &str| -> f64 {
        lab.worker
            .emf_documents()
            .iter()
            .filter_map(|d| d[metric].as_f64())
            .sum()
    };
    assert!(sum("BytesNew") > 0.0 && sum("BytesNew") == sum("BytesCopied"));
    assert!(sum("ObjectsWritten") > 0.0);
    assert!(sum("S3PutRequests") >= sum("ObjectsWritten"));
    assert!(sum("RegistryRequests") > 0.0 && sum("EcrApiRequests") >= 1.0);
    assert_eq!(
        lab.worker.stats().cold_starts,
        1,
        "one warm worker for every batch"
    );

    let restored = lab.restore(&["--include-untagged"]).await;
    assert!(
        restored["images_restored"].as_u64().unwrap() >= 5,
        "{restored:#}"
    );
    for ((repo, tag), digest) in &expected {
        assert_eq!(
            lab.target_digest(repo, tag).await.as_ref(),
            Some(digest),
            "{repo}:{tag} restored with another digest"
        );
    }
    assert_eq!(
        lab.target_digest(&app, &untagged.digest.to_string())
            .await
            .as_ref(),
        Some(&untagged.digest),
        "the untagged image is restored by digest"
    );
    // And against the source registry itself, tag by tag.
    let source = lab.servers.auth_client();
    for repo in [&app, &api, &multi] {
        for tag in source.tags(repo).await.unwrap() {
            let at_source = source.head_manifest(repo, tag.as_str()).await.unwrap();
            assert_eq!(
                lab.target_digest(repo, tag.as_str()).await,
                at_source.map(|h| h.digest),
                "{repo}:{tag}"
            );
        }
    }

    // b. Nothing changed: the second run sends nothing.
    let second = lab.run_fanout().await;
    assert_eq!(second["images_enqueued"], 0, "{second:#}");
    assert_eq!(second["images_up_to_date"], 5, "{second:#}");
    assert_eq!(second["send_calls"], 0, "{second:#}");
    assert_eq!(lab.mapping.in_queue().await.unwrap(), 0);
    let emf = last_metric(&lab.fanout, "ImagesEnqueued");
    assert_eq!(emf["ImagesEnqueued"], 0.0, "{emf}");
    assert_eq!(emf["ImagesUpToDate"], 5.0, "{emf}");
    // The fan-out measures the store once a run: its objects, bytes and monthly cost.
    let objects = lab
        .s3
        .list_objects_v2()
        .bucket(&lab.bucket)
        .prefix("backup/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        emf["StoreObjects"].as_f64(),
        Some(objects.contents().len() as f64),
        "{emf}"
    );
    assert!(
        emf["StoreMonthlyCostBackup"].as_f64().unwrap() > 0.0,
        "{emf}"
    );
    assert!(emf["EcrApiRequests"].as_f64().unwrap() >= 2.0, "{emf}");
    assert!(emf["S3ListRequests"].as_f64().unwrap() >= 1.0, "{emf}");
    let finished = log_events(&lab.fanout, "fan-out finished");
    assert_eq!(finished.len(), 2, "one 'fan-out finished' log per run");
    assert_eq!(
        finished[1]["fields"]["images_enqueued"], 0,
        "{}",
        finished[1]
    );
    // Fields are typed: a count is a number, a flag a boolean, and an absent repository
    // is absent, not the text "None".
    for line in &finished {
        let fields = &line["fields"];
        assert!(fields["images_seen"].is_u64(), "{line}");
        assert_eq!(fields["run_complete"], true, "{line}");
        assert!(fields.get("continued_after").is_none(), "{line}");
    }
    assert_eq!(
        lab.fanout.stats().cold_starts,
        1,
        "the second run reuses the warm fan-out"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_events_back_up_the_pushed_image_and_follow_a_moved_tag() {
    let lab = Lab::new("lambda-push").await;
    // The store as a deployment has it after its first scheduled run.
    assert_eq!(lab.run_fanout().await["repositories"], 0);
    let svc = lab.repo("svc");
    let first = lab.push(&svc, &["v1"], 25_000, Format::Oci).await;
    let other = lab.push(&svc, &["v0"], 26_000, Format::Oci).await;

    // c. A push event alone (no fan-out) copies exactly that image.
    lab.send(&lab.push_event(&svc, &first.digest, "v1", Utc::now()))
        .await;
    lab.drain_cleanly().await;
    assert!(
        lab.store
            .image_record(&svc, &first.digest)
            .await
            .unwrap()
            .is_some(),
        "the pushed image is backed up"
    );
    assert!(
        lab.store
            .image_record(&svc, &other.digest)
            .await
            .unwrap()
            .is_none(),
        "only the pushed image is copied"
    );
    assert_eq!(
        lab.tags_in_store(&svc).await.get("v1"),
        Some(&first.digest.to_string())
    );

    // d. The tag moves to a new image, and its push event follows.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moved = lab.push(&svc, &["v1"], 27_000, Format::Oci).await;
    lab.send(&lab.push_event(&svc, &moved.digest, "v1", Utc::now()))
        .await;
    lab.drain_cleanly().await;
    assert_eq!(
        lab.tags_in_store(&svc).await.get("v1"),
        Some(&moved.digest.to_string()),
        "ls shows the tag on its new image"
    );
    lab.restore(&[]).await;
    assert_eq!(
        lab.target_digest(&svc, "v1").await,
        Some(moved.digest.clone()),
        "restore puts the tag on its new image"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_only_by_push_events_is_readable_by_the_cli() {
    // Push events reach the queue from the moment the stack is deployed, possibly a day
    // before the first scheduled run.
    let lab = Lab::new("lambda-push-only").await;
    let svc = lab.repo("svc");
    let image = lab.push(&svc, &["v1"], 24_000, Format::Oci).await;
    lab.send(&lab.push_event(&svc, &image.digest, "v1", Utc::now()))
        .await;
    lab.drain_cleanly().await;
    assert!(
        lab.store
            .image_record(&svc, &image.digest)
            .await
            .unwrap()
            .is_some(),
        "the pushed image is backed up"
    );
    let (code, _, stderr) = lab
        .cli(&["ls", "--store", &lab.store_url, svc.as_str(), "--json"])
        .await;
    assert_eq!(
        code,
        0,
        "a store that only the worker wrote (push events, no fan-out run yet) must be \
         readable: ecr-backup ls said:\n{}",
        errors_only(&stderr)
    );
    lab.restore(&[]).await;
    assert_eq!(
        lab.target_digest(&svc, "v1").await,
        Some(image.digest.clone())
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_in_the_same_second_as_the_snapshot_wins_over_the_snapshot() {
    let lab = Lab::new("lambda-same-second").await;
    let app = lab.repo("app");
    let before = lab.push(&app, &["v1"], 21_000, Format::Oci).await;
    let report = lab.run_fanout().await;
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let snapshot = lab.snapshot(&run_id).await;
    let observed_at: DateTime<Utc> = snapshot["taken_at"]
        .as_str()
        .unwrap()
        .parse()
        .expect("taken_at is RFC 3339");

    // Pushed after the run listed ECR; EventBridge times have whole seconds, and this one
    // falls in the snapshot's second.
    let after = lab.push(&app, &["v1"], 22_000, Format::Oci).await;
    let event_time = observed_at.trunc_subsecs(0);
    lab.send(&lab.push_event(&app, &after.digest, "v1", event_time))
        .await;
    lab.drain_cleanly().await;

    let tags = lab.tags_in_store(&app).await;
    assert_eq!(
        tags.get("v1"),
        Some(&after.digest.to_string()),
        "ls {app}: tag v1 must be on {} (pushed after the run listed ECR, push event at {} \
         in the same second as the snapshot's takenAt {}), not on {} (what the snapshot saw)",
        after.digest,
        event_time.to_rfc3339(),
        observed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        before.digest
    );
    lab.restore(&[]).await;
    assert_eq!(
        lab.target_digest(&app, "v1").await,
        Some(after.digest.clone()),
        "restore of \"now\" must put v1 on the image pushed after the snapshot"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_missing_a_child_manifest_is_dead_lettered_naming_the_child() {
    let lab = Lab::new("lambda-missing-child").await;
    let multi = lab.repo("multi");
    let index = lab.push_index(&multi, "v1").await;
    lab.register(&index, &[Some("v1")]).await;
    assert_eq!(index.media_type, OCI_INDEX);
    let missing = index.children[1].clone();
    delete_manifest(&lab.servers, &multi, &missing).await;

    lab.send(&lab.push_event(&multi, &index.digest, "v1", Utc::now()))
        .await;
    let drained = lab.drain().await;
    let gone = log_events(
        &lab.worker,
        "image no longer at the source; message acknowledged",
    );
    assert_eq!(
        lab.dlq_depth().await,
        1,
        "the index {} whose child manifest {missing} is missing must end in the dead-letter \
         queue after {MAX_RECEIVES} receives; it was acknowledged instead ({} deliveries, {} \
         deleted; worker said: {})",
        index.digest,
        drained.stats.messages,
        drained.stats.deleted,
        gone.first()
            .map(|g| g["fields"].to_string())
            .unwrap_or_else(|| "nothing about it".into())
    );
    assert_eq!(drained.stats.messages, MAX_RECEIVES, "{:?}", drained.stats);
    let letters = lab.cli_json(&["dlq", "ls", "--dlq", &lab.dlq_url]).await;
    let error = letters[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&missing.to_string()),
        "the dead-lettered message's error must name the missing child {missing}: {letters:#}"
    );
    assert!(
        lab.store
            .image_record(&multi, &index.digest)
            .await
            .unwrap()
            .is_none(),
        "no record of an index whose child is missing"
    );
    lab.finish().await;
}

/// Deletes a manifest from the auth registry through its API (deletes are enabled).
async fn delete_manifest(servers: &TestServers, repo: &RepositoryName, digest: &Digest) {
    let (user, password) = servers.auth_credentials.split_once(':').unwrap();
    let response = reqwest::Client::new()
        .delete(format!(
            "{}/v2/{repo}/manifests/{digest}",
            servers.auth_registry
        ))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::ACCEPTED,
        "DELETE {repo}@{digest}"
    );
    let exists = servers
        .auth_client()
        .manifest_exists(repo, digest)
        .await
        .unwrap();
    assert!(
        !exists,
        "{repo}@{digest} is still served after its deletion"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_in_parts_restores_and_verifies_as_one_snapshot() {
    let lab = Lab::with(
        "lambda-parts",
        MAX_RECEIVES,
        &[("ECR_BACKUP_PART_REPOSITORIES", "1")],
    )
    .await;
    let mut expected = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let repo = lab.repo(name);
        let image = lab.push(&repo, &["v1"], 20_000, Format::Oci).await;
        expected.insert(repo, image.digest);
    }
    let b = lab.repo("b");
    let untagged = lab.push(&b, &[], 23_000, Format::Oci).await;

    let report = lab.run_fanout().await;
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            report["repositories"].clone(),
            report["continued_after"].clone()
        ),
        (json!(1), json!(lab.repo("a").as_str())),
        "with ECR_BACKUP_PART_REPOSITORIES=1 the first part must cover one repository and \
         continue after it: {report:#}"
    );
    lab.drain_cleanly().await;
    let continued = log_events(&lab.worker, "copying image").len();
    assert!(continued >= 4, "the workers copied {continued} images");

    let snapshot = lab.snapshot(&run_id).await;
    assert_eq!(
        (
            snapshot["parts"].clone(),
            snapshot["complete"].clone(),
            snapshot["repositories"].clone()
        ),
        (json!(3), json!(true), json!(3)),
        "the run has three parts, is complete and covers the three repositories: {snapshot:#}"
    );

    let renamed = |to: &str| format!("{p}={p}/{to}", p = lab.prefix);
    let by_snapshot = renamed("by-snapshot");
    lab.restore(&["--snapshot", &run_id, "--rename", &by_snapshot])
        .await;
    let with_untagged = renamed("with-untagged");
    lab.restore(&["--include-untagged", "--rename", &with_untagged])
        .await;
    for (repo, digest) in &expected {
        let name = repo.as_str().strip_prefix(&lab.prefix).unwrap();
        for to in ["by-snapshot", "with-untagged"] {
            let restored =
                repository(&format!("{}/{to}", lab.prefix), name.trim_matches('/')).unwrap();
            assert_eq!(
                lab.target_digest(&restored, "v1").await.as_ref(),
                Some(digest),
                "restore ({to}) of run {run_id} is missing {repo}:v1 (as {restored})"
            );
        }
    }
    let restored_b = repository(&format!("{}/with-untagged", lab.prefix), "b").unwrap();
    assert_eq!(
        lab.target_digest(&restored_b, &untagged.digest.to_string())
            .await,
        Some(untagged.digest.clone()),
        "restore --include-untagged is missing {b}@{} of the run's second part",
        untagged.digest
    );

    let verified = lab
        .cli_json(&["verify", "--store", &lab.store_url, "--snapshot", &run_id])
        .await;
    assert_eq!(
        verified["images_checked"], 4,
        "verify --snapshot {run_id} must check the four images of all three parts: {verified:#}"
    );
    assert_eq!(verified["missing_images"], json!([]), "{verified:#}");
    assert_eq!(verified["broken_images"], json!([]), "{verified:#}");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_batch_leaves_its_messages_to_come_back_and_the_store_whole() {
    let lab = Lab::with("lambda-killed", 3, &[]).await;
    let big_repo = lab.repo("big");
    let big = lab
        .push(&big_repo, &["v1"], 40 * 1024 * 1024, Format::Oci)
        .await;
    let small_repo = lab.repo("small");
    let small = [
        lab.push(&small_repo, &["v1"], 20_000, Format::Oci).await,
        lab.push(&small_repo, &["v2"], 21_000, Format::Oci).await,
    ];
    let report = lab.run_fanout().await;
    assert_eq!(report["images_enqueued"], 3, "{report:#}");

    // Killed while the big layer is being uploaded: once its multipart upload is open.
    let watcher = {
        let s3 = lab.s3.clone();
        let bucket = lab.bucket.clone();
        let worker = lab.worker.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                let uploads = s3
                    .list_multipart_uploads()
                    .bucket(&bucket)
                    .send()
                    .await
                    .unwrap();
                if let Some(upload) = uploads.uploads().first() {
                    worker.kill_now();
                    return Some(upload.key().unwrap_or_default().to_owned());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        })
    };
    let drained = lab.drain().await;
    let killed_during = watcher.await.unwrap();
    let layer = big.layers.iter().next().unwrap();
    assert!(
        killed_during
            .as_deref()
            .is_some_and(|key| key.ends_with(layer.hex())),
        "the worker was not killed while uploading the big layer {layer} (upload seen: \
         {killed_during:?})"
    );
    let stats = lab.worker.stats();
    assert_eq!(
        (stats.kills, stats.cold_starts),
        (1, 2),
        "one kill, one new cold start: {stats:?}"
    );
    assert_eq!(drained.stats.crashes, 1, "{:?}", drained.stats);
    let killed_batch = drained
        .batches
        .iter()
        .find(|b| matches!(b.result, InvocationResult::Crashed(_)))
        .unwrap();
    assert!(
        killed_batch.deleted.is_empty(),
        "nothing of a killed batch is deleted"
    );
    assert!(
        drained.stats.redeliveries as usize >= killed_batch.messages.len(),
        "every message of the killed batch came back: {:?}",
        drained.stats
    );
    assert_eq!(lab.dlq_depth().await, 0, "nothing was dead-lettered");
    for image in small.iter().chain([&big]) {
        assert!(
            lab.store
                .image_record(&image.repository, &image.digest)
                .await
                .unwrap()
                .is_some(),
            "{}@{} is backed up after the redelivery",
            image.repository,
            image.digest
        );
    }
    let verified = lab
        .cli_json(&["verify", "--store", &lab.store_url, "--read-data"])
        .await;
    for problem in [
        "blob_problems",
        "broken_images",
        "dangling_tags",
        "unreadable_records",
        "missing_images",
    ] {
        assert_eq!(
            verified[problem],
            json!([]),
            "verify --read-data: {problem}: {verified:#}"
        );
    }
    lab.restore(&[]).await;
    assert_eq!(
        lab.target_digest(&big_repo, "v1").await,
        Some(big.digest.clone())
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_reach_the_dlq_with_their_error_and_redrive_brings_them_back() {
    let lab = Lab::new("lambda-malformed").await;
    let app = lab.repo("app");
    let good = lab.push(&app, &["v1"], 20_000, Format::Oci).await;
    let bad_digest = json!({
        "version": 1, "kind": "copy-image", "repository": app.as_str(),
        "digest": "sha256:not-a-digest", "tags": ["v1"], "reason": "schedule",
        "observedAt": Utc::now().to_rfc3339()
    })
    .to_string();
    lab.send("this is not JSON {").await;
    lab.send(&bad_digest).await;
    lab.send(&lab.push_event(&app, &good.digest, "v1", Utc::now()))
        .await;

    let drained = lab.drain().await;
    assert!(
        lab.store
            .image_record(&app, &good.digest)
            .await
            .unwrap()
            .is_some(),
        "the good message of the batch is processed"
    );
    assert_eq!(
        drained.stats.reported_failures, 2,
        "the two malformed messages, and only they, are reported failed on their first \
         receive: {:?}",
        drained.stats
    );
    assert_eq!(
        lab.dlq_depth().await,
        2,
        "both malformed messages are dead-lettered"
    );

    let letters = lab.cli_json(&["dlq", "ls", "--dlq", &lab.dlq_url]).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let errors: Vec<&str> = letters
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not a JSON object")),
        "dlq ls names the body that is not JSON: {letters:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sha256:not-a-digest") || e.contains("invalid digest")),
        "dlq ls names the bad digest: {letters:#?}"
    );
    for letter in letters {
        assert_eq!(letter["receive_count"], MAX_RECEIVES, "{letter:#}");
    }
    let (code, text, stderr) = lab.cli(&["dlq", "ls", "--dlq", &lab.dlq_url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains(&format!(
            "failed {MAX_RECEIVES} times, last: malformed message"
        )),
        "{text}"
    );

    let moved = lab
        .cli_json(&["redrive", "--dlq", &lab.dlq_url, "--target", &lab.queue_url])
        .await;
    assert_eq!(moved["moved"], 2, "{moved:#}");
    assert_eq!(
        lab.dlq_depth().await,
        0,
        "the DLQ is empty after the redrive"
    );
    assert_eq!(lab.mapping.in_queue().await.unwrap(), 2, "both are back");
    // Back on the queue they fail again, as new messages, and return to the DLQ.
    let again = lab.drain().await;
    assert_eq!(again.stats.messages, 2 * MAX_RECEIVES, "{:?}", again.stats);
    assert_eq!(lab.dlq_depth().await, 2);
    lab.finish().await;
}

#[test]
fn the_secret_scan_finds_each_kind_of_secret_and_never_shows_it() {
    let secrets = vec![("registry password".to_owned(), "hunter2-s3cret".to_owned())];
    let clean = "GET /v2/ 401 WWW-Authenticate: Basic realm=\"ecr\" Signature=abc";
    assert_no_secret(clean, &secrets, "clean");
    for leak in [
        "login with hunter2-s3cret".to_owned(),
        format!("authorization: Bearer {}", "x".repeat(40)),
        format!("authorization: basic {}", "QVdTOnRva2Vu".repeat(3)),
        format!("https://b.s3/k?X-Amz-Signature={}", "0f".repeat(32)),
    ] {
        let message = std::panic::catch_unwind(|| assert_no_secret(&leak, &secrets, "leak"))
            .expect_err(&format!("not caught: {leak}"));
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.starts_with("leak: "), "{message}");
        assert!(message.contains("<hidden>"), "{message}");
        for hidden in [
            "hunter2-s3cret",
            "xxxxxxxxxxxxxxxx",
            "QVdTOnRva2Vu",
            "0f0f0f0f0f0f",
        ] {
            assert!(!message.contains(hidden), "{message}");
        }
    }
}

//! Secret hygiene: with logs at their most verbose, no registry password, ECR token
//! (base64 or decoded), `Authorization` value or presigned URL signature is ever printed,
//! by the CLI or by the library in process, including on the paths where secrets are
//! handled: token login and refresh, `--credentials`, refused credentials, pushes during a
//! restore, redirects of blob downloads to presigned S3 URLs, and errors on those.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use ecr_backup_shared::source::ecr::{EcrApi, EcrCredentials};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::RegistryClient;
use ecr_backup_tests::corpus::{push_small_image, repository, CorpusImage};
use ecr_backup_tests::fault_proxy::{Canned, Fault, FaultProxy, Flavor, Rule, When};
use ecr_backup_tests::servers::{self, TestServers};

use crate::common::*;
use crate::common::{aws_config, s3_client};
use crate::faults::register_in_ecr;

const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const WRONG_PASSWORD: &str = "wr0ng-s3cret-Passw0rd";

/// What must never be printed, with a name for the failure message.
fn secrets(servers: &TestServers) -> Vec<(String, String)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (user, password) = servers.auth_credentials.split_once(':').unwrap();
    let wrong = format!("{user}:{WRONG_PASSWORD}");
    vec![
        (
            "registry password / decoded ECR token".into(),
            password.to_owned(),
        ),
        (
            "ECR authorizationToken (base64 user:password)".into(),
            b64(&servers.auth_credentials),
        ),
        (
            "Authorization: Basic value".into(),
            format!("Basic {}", b64(&servers.auth_credentials)),
        ),
        ("refused password".into(), WRONG_PASSWORD.into()),
        ("refused password, base64".into(), b64(&wrong)),
        ("presigned URL signature".into(), "X-Amz-Signature=".into()),
        (
            "SigV4 Authorization value".into(),
            "AWS4-HMAC-SHA256 Credential=".into(),
        ),
    ]
}

/// Fails naming the secret and showing where it appeared.
fn assert_no_secret(log: &str, secrets: &[(String, String)], context: &str) {
    for (name, secret) in secrets {
        if let Some(at) = log.find(secret.as_str()) {
            let start = log[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            let end = (at + secret.len() + 100).min(log.len());
            let end = (end..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(log.len());
            panic!(
                "{context}: the {name} appears in the log:\n…{}…",
                &log[start..end]
            );
        }
    }
    // A request signature is 64 hex digits after `Signature=`.
    for (at, _) in log.match_indices("Signature=") {
        let hex = log[at + 10..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        assert!(
            hex < 64,
            "{context}: a request signature appears in the log at {at}"
        );
    }
}

/// The CLI at trace level; returns (exit code, stdout and stderr together).
async fn cli_traced(args: Vec<String>, moto: &str) -> (i32, String) {
    let moto = moto.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(cli_binary())
            .args(&args)
            .env("ECR_BACKUP_LOG", "trace")
            .env("AWS_ENDPOINT_URL", &moto)
            .output()
            .expect("run ecr-backup");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Pushes two images to the auth registry and registers them in moto's ECR.
async fn ecr_images(servers: &TestServers, prefix: &str) -> Vec<CorpusImage> {
    let repo = repository(prefix, "svc").unwrap();
    let auth = servers.auth_client();
    let mut images = Vec::new();
    for n in 0..2u64 {
        images.push(
            push_small_image(&auth, &repo, &format!("v{n}"), 32 * 1024 + n)
                .await
                .unwrap(),
        );
    }
    let tagged: Vec<(&CorpusImage, Option<String>)> = images
        .iter()
        .enumerate()
        .map(|(n, i)| (i, Some(format!("v{n}"))))
        .collect();
    register_in_ecr(servers, &repo, &tagged).await;
    images
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_cli_logs_at_trace_level() {
    let servers = TestServers::from_env();
    let secrets = secrets(&servers);
    let prefix = servers::unique_prefix("secretcli");
    let p = prefix.trim_end_matches('/').to_owned();
    ecr_images(&servers, &prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let ecr_store = dir.path().join("ecr");
    let plain_store = dir.path().join("plain");
    let glob = format!("{p}/**");
    let mut sizes = Vec::new();

    // 1. ECR source: the registry login comes from GetAuthorizationToken (moto).
    let (code, log) = cli_traced(
        strings(&[
            "backup",
            "--source",
            ECR_HOST,
            "--registry-endpoint",
            &servers.auth_registry,
            "--store",
            ecr_store.to_str().unwrap(),
            "--repository",
            &glob,
        ]),
        &servers.moto,
    )
    .await;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("fetched an ECR registry token"),
        "the token login is not in the trace"
    );
    assert_no_secret(&log, &secrets, "ECR backup");
    sizes.push(log.len());

    // 2. A registry with --credentials.
    let (code, log) = cli_traced(
        strings(&[
            "backup",
            "--source",
            &servers.auth_registry,
            "--credentials",
            &servers.auth_credentials,
            "--store",
            plain_store.to_str().unwrap(),
            "--repository",
            &glob,
        ]),
        &servers.moto,
    )
    .await;
    assert_eq!(code, 0, "{log}");
    assert_no_secret(&log, &secrets, "backup with --credentials");
    sizes.push(log.len());

    // 3. Refused credentials.
    let user = servers.auth_credentials.split_once(':').unwrap().0;
    let (code, log) = cli_traced(
        strings(&[
            "backup",
            "--source",
            &servers.auth_registry,
            "--credentials",
            &format!("{user}:{WRONG_PASSWORD}"),
            "--store",
            plain_store.to_str().unwrap(),
            "--repository",
            &glob,
        ]),
        &servers.moto,
    )
    .await;
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("credentials were refused"), "{log}");
    assert_no_secret(&log, &secrets, "refused credentials");
    sizes.push(log.len());

    // 4. Restore into the auth registry (uploads, mounts, manifest pushes), renamed.
    let (code, log) = cli_traced(
        strings(&[
            "restore",
            "--store",
            ecr_store.to_str().unwrap(),
            "--target",
            &servers.auth_registry,
            "--target-credentials",
            &servers.auth_credentials,
            "--repository",
            &glob,
            "--rename",
            &format!("{p}={p}/restored"),
        ]),
        &servers.moto,
    )
    .await;
    assert_eq!(code, 0, "{log}");
    assert_no_secret(&log, &secrets, "restore into the auth registry");
    sizes.push(log.len());
    println!(
        "FIGURES secrets (CLI, ECR_BACKUP_LOG=trace): ECR backup, --credentials backup, refused credentials, restore: {} bytes of logs searched, no secret found",
        sizes.iter().sum::<usize>()
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything logged on this thread (and by the `log` crate, which reqwest uses), at
/// trace level, goes to the returned buffer until the guard is dropped. The test runs on
/// a current-thread runtime, so every task it spawns logs here too.
fn capture_logs() -> (Buffer, tracing::subscriber::DefaultGuard) {
    let _ = tracing_log::LogTracer::init();
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn no_secret_reaches_in_process_logs_through_token_refresh_and_presigned_redirects() {
    let servers = TestServers::from_env();
    let secrets = secrets(&servers);
    let prefix = servers::unique_prefix("secretlib");
    let images = ecr_images(&servers, &prefix).await;
    let repo = images[0].repository.clone();
    let layer = images[0].layers.iter().next().unwrap().clone();

    // ECR answers blob GETs with a redirect to a presigned S3 URL: put the layer in a
    // bucket and presign a GET for it, through a proxy that answers SlowDown once.
    let (direct, _, bucket) = s3_store(&servers.moto, "secrets").await;
    let bytes: Bytes = servers::read_blob(&servers.auth_client(), &repo, &layer)
        .await
        .unwrap();
    direct
        .put_object()
        .bucket(&bucket)
        .key("layer")
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    let s3_proxy = FaultProxy::start(&servers.moto, Flavor::S3).await.unwrap();
    s3_proxy.add_rule(Rule::new(
        "GET",
        "X-Amz-Signature=",
        When::Nth(1),
        Fault::ServerError { status: 503 },
    ));
    let presigned = s3_client(&s3_proxy.url())
        .await
        .get_object()
        .bucket(&bucket)
        .key("layer")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(900)).unwrap(),
        )
        .await
        .unwrap();
    let url = presigned.uri().to_owned();
    let signature = url
        .split("X-Amz-Signature=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut secrets = secrets;
    secrets.push(("presigned signature value".into(), signature));

    // The data plane: the layer's GET is redirected, and one manifest GET says the token
    // expired.
    let data_proxy = FaultProxy::start(&servers.auth_registry, Flavor::Registry)
        .await
        .unwrap();
    data_proxy.add_rule(Rule::new(
        "GET",
        format!("/blobs/{layer}"),
        When::Every,
        Fault::Respond(Canned {
            status: 307,
            headers: vec![("Location".into(), url.clone())],
            body: Bytes::new(),
        }),
    ));
    data_proxy.add_rule(Rule::new(
        "GET",
        "/manifests/sha256:",
        When::Nth(1),
        Fault::Unauthorized {
            challenge: r#"Basic realm="x""#.into(),
        },
    ));
    let api = EcrApi::new(
        aws_sdk_ecr::Client::new(&aws_config(&servers.moto).await),
        Some("123456789012".into()),
    );
    let registry = RegistryClient::new(
        ecr_backup_shared::source::registry::parse_registry_url(&data_proxy.url()).unwrap(),
        Arc::new(EcrCredentials::new(api.clone())),
    )
    .unwrap();
    let source = Source::from_parts(ECR_HOST.into(), registry, Some(api));

    let (buffer, guard) = capture_logs();
    let (_dir, store) = dir_store().await;
    let report = backup_source(&source, &prefix, &store).await;
    // A failing run too: refused credentials on every request.
    let refusing = FaultProxy::start(&servers.auth_registry, Flavor::Registry)
        .await
        .unwrap();
    refusing.add_rule(Rule::new(
        "*",
        "/v2/",
        When::Every,
        Fault::Unauthorized {
            challenge: r#"Basic realm="x""#.into(),
        },
    ));
    let refused_client = servers::registry_client(
        &refusing.url(),
        ecr_backup_shared::source::registry::Credentials::from_user_password(&format!(
            "AWS:{WRONG_PASSWORD}"
        ))
        .unwrap(),
    );
    let refused_error = refused_client.ping().await.unwrap_err();
    tracing::error!(error = %refused_error, "refused");
    drop(guard);

    assert!(report.is_success(), "{:?}", report.images_failed);
    assert_eq!(report.images_copied, 2);
    assert_eq!(
        s3_proxy.count("GET", "X-Amz-Signature="),
        2,
        "presigned GET, retried once"
    );
    assert!(
        s3_proxy.log().iter().all(|r| !r.authorization),
        "the registry's Authorization header followed the redirect to S3"
    );
    assert!(
        data_proxy.log().iter().any(|r| r.status == Some(401)),
        "no 401 was answered"
    );
    let log = buffer.text();
    assert!(
        log.len() > 10_000,
        "too little was captured: {} bytes",
        log.len()
    );
    assert!(
        log.contains("fetched an ECR registry token"),
        "the token login is not in the trace"
    );
    assert!(
        // A blob's one retry layer is the copy engine's transfer loop.
        log.contains("retrying blob transfer"),
        "the SlowDown retry is not in the trace"
    );
    assert_no_secret(&log, &secrets, "in-process ECR backup");
    assert_no_secret(
        &refused_error.to_string(),
        &secrets,
        "refused credentials error",
    );
    println!(
        "FIGURES secrets (in process, trace): token login + refresh after a 401, a blob redirected to a presigned S3 URL that answered SlowDown once, refused credentials: {} bytes of logs searched, no secret found; no Authorization header reached S3",
        log.len()
    );
}

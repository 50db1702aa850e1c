//! Counts the AWS calls of the fan-out (`ecr_backup_shared::pipeline::fanout::fan_out`) for N images, against
//! a moto server standing in for ECR's API, SQS and S3.
//!
//! It registers N images in moto's ECR (`PutImage` with the real `imageDigest` of each
//! manifest, spread over R repositories `fanout/rNN`, one tag each), then runs the fan-out
//! three times, each time with its own counted clients:
//!
//! 1. `first`: into an empty S3 store, so every image is sent to the queue;
//! 2. `copied`: after image and tag records exist for every image (as the workers leave
//!    them), so nothing is sent, and `index.json` gains every image;
//! 3. `unchanged`: the next daily run over the same registry.
//!
//! Calls are counted by an SDK interceptor on every attempt (retries included), by
//! operation: the `X-Amz-Target` header for ECR and SQS (JSON protocols), the method and
//! query for S3. The SQS count is checked against `SqsQueue::stats()`, and the queue's
//! depth against N. Prints one JSON object per run on stdout.
//!
//! Usage: `bench-fanout MOTO_URL [IMAGES] [REPOSITORIES]` (defaults 1000 and 20). The moto
//! server should hold nothing else (the benchmark resets it before).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aws_sdk_ecr::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ecr::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ecr::error::BoxError;
use chrono::Utc;
use ecr_backup_shared::filter::FilterSpec;
use ecr_backup_shared::pipeline::fanout::{fan_out, FanoutRun};
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::source::ecr::EcrApi;
use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::records::{ImageRecord, TagRecord, RECORD_VERSION};
use ecr_backup_shared::store::{S3Backend, S3Location, Store};
use ecr_backup_shared::{Digest, RepositoryName, Tag};
use futures::{StreamExt, TryStreamExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCOUNT: &str = "123456789012";
const REGISTRY: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// Counts requests by `service operation`.
#[derive(Debug, Clone, Default)]
struct CallCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl CallCounter {
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().expect("counter lock"))
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let op = match request.headers().get("x-amz-target") {
            // "AmazonEC2ContainerRegistry_V20150921.DescribeImages", "AmazonSQS.SendMessageBatch"
            Some(target) => {
                let (service, op) = target.split_once('.').unwrap_or(("?", target));
                let service = if service.starts_with("AmazonSQS") {
                    "sqs"
                } else {
                    "ecr"
                };
                format!("{service} {op}")
            }
            None => {
                let uri = request.uri();
                let kind = if uri.contains("list-type=2") {
                    "ListObjectsV2"
                } else {
                    match request.method() {
                        "HEAD" => "HeadObject",
                        "GET" => "GetObject",
                        "PUT" => "PutObject",
                        "POST" => "Post",
                        other => other,
                    }
                };
                format!("s3 {kind}")
            }
        };
        *self.0.lock().expect("counter lock").entry(op).or_default() += 1;
        Ok(())
    }
}

struct Clients {
    ecr: aws_sdk_ecr::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
}

fn clients(config: &aws_config::SdkConfig, counter: Option<&CallCounter>) -> Clients {
    let mut ecr = aws_sdk_ecr::config::Builder::from(config);
    let mut sqs = aws_sdk_sqs::config::Builder::from(config);
    let mut s3 = aws_sdk_s3::config::Builder::from(config).force_path_style(true);
    if let Some(c) = counter {
        ecr = ecr.interceptor(c.clone());
        sqs = sqs.interceptor(c.clone());
        s3 = s3.interceptor(c.clone());
    }
    Clients {
        ecr: aws_sdk_ecr::Client::from_conf(ecr.build()),
        sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
        s3: aws_sdk_s3::Client::from_conf(s3.build()),
    }
}

/// One registered image.
struct Image {
    repository: RepositoryName,
    tag: Tag,
    digest: Digest,
    size: u64,
}

/// A small, valid OCI manifest, different for every image.
fn manifest(n: usize) -> String {
    let config = Digest::of(format!("config {n}").as_bytes());
    let layer = Digest::of(format!("layer {n}").as_bytes());
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":100}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":1000}}]}}"#
    )
}

async fn register(ecr: &aws_sdk_ecr::Client, images: usize, repos: usize) -> Result<Vec<Image>> {
    for r in 0..repos {
        ecr.create_repository()
            .repository_name(format!("fanout/r{r:02}"))
            .send()
            .await
            .context("CreateRepository")?;
    }
    futures::stream::iter(0..images)
        .map(|n| async move {
            let repository: RepositoryName = format!("fanout/r{:02}", n % repos).parse()?;
            let tag: Tag = format!("t{n}").parse()?;
            let body = manifest(n);
            let digest = Digest::of(body.as_bytes());
            ecr.put_image()
                .repository_name(repository.as_str())
                .image_manifest(&body)
                .image_manifest_media_type(OCI_MANIFEST)
                .image_digest(digest.to_string())
                .image_tag(tag.as_str())
                .send()
                .await
                .with_context(|| format!("PutImage {repository}:{tag}"))?;
            anyhow::Ok(Image {
                repository,
                tag,
                digest,
                size: body.len() as u64,
            })
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}

/// Writes image and tag records for every image, as if a worker had copied them.
async fn mark_backed_up(store: &Store, images: &[Image]) -> Result<()> {
    let now = Utc::now();
    futures::stream::iter(images)
        .map(|image| async move {
            store
                .put_image_record(&ImageRecord {
                    version: RECORD_VERSION,
                    repository: image.repository.clone(),
                    digest: image.digest.clone(),
                    media_type: OCI_MANIFEST.into(),
                    size: image.size,
                    tags: vec![image.tag.clone()],
                    manifests: Vec::new(),
                    blobs: Vec::new(),
                    subject: None,
                    source: REGISTRY.into(),
                    backed_up_at: now,
                })
                .await?;
            store
                .put_tag_record(&TagRecord {
                    version: RECORD_VERSION,
                    repository: image.repository.clone(),
                    tag: image.tag.clone(),
                    digest: image.digest.clone(),
                    observed_at: now,
                })
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args[0] == "-h" || args[0] == "--help" {
        eprintln!("usage: bench-fanout MOTO_URL [IMAGES] [REPOSITORIES]");
        std::process::exit(2);
    }
    let moto = &args[0];
    let images: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let repos: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    ensure!(
        repos > 0 && images >= repos,
        "need at least one image per repository"
    );

    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let plain = clients(&config, None);
    let registered = register(&plain.ecr, images, repos).await?;
    let bucket = "bench-fanout";
    plain.s3.create_bucket().bucket(bucket).send().await?;
    let queue_url = plain
        .sqs
        .create_queue()
        .queue_name("bench-fanout")
        .send()
        .await?
        .queue_url()
        .context("no queue URL")?
        .to_owned();
    let location = S3Location::parse(&format!("s3://{bucket}/store"))?;
    let filter = FilterSpec {
        repositories: vec!["fanout/*".into()],
        ..FilterSpec::default()
    };

    for phase in ["first", "copied", "unchanged"] {
        if phase == "copied" {
            let store = Store::new(Arc::new(S3Backend::new(plain.s3.clone(), location.clone())));
            mark_backed_up(&store, &registered).await?;
        }
        let counter = CallCounter::default();
        let counted = clients(&config, Some(&counter));
        let api = EcrApi::new(counted.ecr, Some(ACCOUNT.into()));
        // The data plane is never touched by a fan-out from ECR.
        let registry = ecr_backup_tests::servers::registry_client(
            "http://127.0.0.1:9",
            Credentials::Anonymous,
        );
        let source = Source::from_parts(REGISTRY.into(), registry, Some(api));
        let store = Store::new(Arc::new(S3Backend::new(counted.s3, location.clone())));
        let queue = SqsQueue::new(counted.sqs, queue_url.clone());
        let run = FanoutRun::start(filter.clone(), None);
        let report = fan_out(&source, &store, &queue, &run, Duration::from_secs(600)).await?;
        let calls = counter.take();
        let sent = queue
            .stats()
            .send_calls
            .load(std::sync::atomic::Ordering::Relaxed);
        ensure!(
            calls.get("sqs SendMessageBatch").copied().unwrap_or(0) == sent,
            "interceptor and SqsQueue::stats() disagree on SendMessageBatch calls"
        );
        let expected = if phase == "first" { images as u64 } else { 0 };
        ensure!(
            report.images_enqueued == expected,
            "{phase}: enqueued {} images, expected {expected}",
            report.images_enqueued
        );
        if phase == "first" {
            let depth = SqsQueue::new(plain.sqs.clone(), queue_url.clone())
                .approximate_depth()
                .await?;
            ensure!(
                depth == images as u64,
                "queue holds {depth} messages, expected {images}"
            );
        }
        let total = |service: &str| -> u64 {
            calls
                .iter()
                .filter(|(k, _)| k.starts_with(service))
                .map(|(_, v)| v)
                .sum()
        };
        println!(
            "{}",
            serde_json::json!({
                "phase": phase,
                "images": images,
                "repositories": repos,
                "images_enqueued": report.images_enqueued,
                "send_message_batch": sent,
                "ecr_calls": total("ecr "),
                "sqs_calls": total("sqs "),
                "s3_calls": total("s3 "),
                "calls": calls,
                "elapsed_seconds": report.elapsed_seconds,
            })
        );
    }
    Ok(())
}

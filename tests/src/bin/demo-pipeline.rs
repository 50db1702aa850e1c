//! The serverless path, run locally for the demo: the real fan-out and worker Lambda
//! binaries behind the Lambda Runtime API emulator, the worker fed by an SQS event-source
//! mapping, over moto (ECR's API, SQS, S3) and a registry with Basic auth standing in
//! for ECR's data plane; the same emulator and mapping the end-to-end tests use
//! (`ecr_backup_tests::lambda_runtime_api`, `ecr_backup_tests::event_source_mapping`).
//!
//! It pushes sample images into the registry and registers them in moto's ECR, sends
//! the push events of the indexes (as EventBridge delivers them to the queue), invokes
//! the fan-out as the daily schedule does, lets the mapping feed the worker until the
//! queue is empty, prints what each step did (reports, metrics), runs the fan-out once
//! more to show that nothing is sent twice, and prints the store's URL last.
//!
//! Usage: demo-pipeline MOTO_URL REGISTRY_URL USER:PASSWORD FANOUT_BINARY WORKER_BINARY [PREFIX]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::Utc;
use ecr_backup_shared::oci::manifest::OCI_INDEX;
use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_tests::corpus::{push_corpus, CorpusImage, CorpusOptions};
use ecr_backup_tests::event_source_mapping::EventSourceMapping;
use ecr_backup_tests::lambda_runtime_api::{FunctionConfig, InvocationResult, LambdaFunction};
use ecr_backup_tests::servers::registry_client;
use ecr_backup_tests::stores::aws_config;
use serde_json::{json, Value};

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const FANOUT_TIMEOUT: Duration = Duration::from_secs(120);
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

fn step(text: &str) {
    println!("\n-- {text}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [moto, registry, credentials, fanout_bin, worker_bin, rest @ ..] = args.as_slice() else {
        bail!("usage: demo-pipeline MOTO_URL REGISTRY_URL USER:PASSWORD FANOUT_BINARY WORKER_BINARY [PREFIX]");
    };
    let prefix = rest.first().cloned().unwrap_or_else(|| "pipeline".into());
    let credentials =
        Credentials::from_user_password(credentials).context("credentials are USER:PASSWORD")?;
    let config = aws_config(moto).await;
    let ecr = aws_sdk_ecr::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );

    step(&format!("Pushing sample images into {registry} (ECR's data plane here) and registering them in ECR's API (moto)"));
    let client = registry_client(registry, credentials);
    let mut options = CorpusOptions::new(prefix.clone());
    options.big_layer_mib = 16;
    let corpus = push_corpus(&client, &options).await?;
    let mut indexes = Vec::new();
    for image in &corpus.images {
        if image.media_type == OCI_INDEX || image.media_type == DOCKER_LIST {
            indexes.push(image);
        } else {
            register(&ecr, image).await?;
        }
    }
    println!(
        "{} images registered in ECR's API; {} multi-platform indexes will arrive as push events",
        corpus.images.len() - indexes.len(),
        indexes.len()
    );

    step("Creating the copy queue, its dead-letter queue and the store's bucket (moto)");
    let suffix = format!("{:08x}", rand::random::<u32>());
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("ecr-backup-dlq-{suffix}"))
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("the dead-letter queue has no ARN")?;
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("ecr-backup-copy-{suffix}"))
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}).to_string(),
        )
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let bucket = format!("ecr-backup-demo-{suffix}");
    s3.create_bucket().bucket(&bucket).send().await?;
    let store = format!("s3://{bucket}/backup");
    println!("queue {queue_url}\ndead-letter queue {dlq_url}\nstore {store}");

    let function = |role: &str, binary: &str, timeout: Duration| {
        FunctionConfig::new(format!("ecr-backup-{role}"), binary)
            .timeout(timeout)
            .aws_endpoint(moto)
            .env("ECR_BACKUP_STORE", &store)
            .env("ECR_BACKUP_QUEUE_URL", &queue_url)
            .env("ECR_BACKUP_REPOSITORIES", format!("{prefix}/**"))
            .env("ECR_BACKUP_REGISTRY_ENDPOINT", registry)
            .env("RUST_LOG", "info")
    };
    let fanout = LambdaFunction::new(function("fanout", fanout_bin, FANOUT_TIMEOUT));
    let worker = Arc::new(LambdaFunction::new(
        function("worker", worker_bin, WORKER_TIMEOUT).env("ECR_BACKUP_CONCURRENCY", "4"),
    ));
    let mapping = EventSourceMapping::new(sqs.clone(), &queue_url, worker.clone()).await?;

    step("ECR push events for the indexes reach the queue (the EventBridge rule's target)");
    for index in &indexes {
        for tag in &index.tags {
            sqs.send_message()
                .queue_url(&queue_url)
                .message_body(push_event(index, tag.as_str()).to_string())
                .send()
                .await?;
            println!("push event {}:{tag}", index.repository);
        }
    }

    step("The daily schedule invokes the fan-out Lambda (its own process, behind a Lambda Runtime API)");
    let report = invoke_fanout(&fanout).await?;
    println!(
        "fan-out run {}: {} repositories, {} images seen, {} enqueued, {} up to date",
        report["run_id"].as_str().unwrap_or("?"),
        report["repositories"],
        report["images_seen"],
        report["images_enqueued"],
        report["images_up_to_date"]
    );
    print_metrics("fan-out", &fanout.emf_documents());

    step("The SQS event-source mapping feeds the worker Lambda until the queue is empty");
    let drained = mapping.drain(Duration::from_secs(600)).await?;
    let s = &drained.stats;
    println!(
        "{} batches, {} messages, {} deleted after success, {} reported failures, {} redeliveries, {} cold starts of the worker, {:.1} s",
        s.batches,
        s.messages,
        s.deleted,
        s.reported_failures,
        s.redeliveries,
        worker.stats().cold_starts,
        drained.elapsed.as_secs_f64()
    );
    print_metrics("worker", &worker.emf_documents());
    if s.reported_failures + s.function_errors + s.crashes + s.timeouts > 0 {
        println!("{}", worker.log_tail(30));
        bail!("the worker did not process every message");
    }

    step("The next day's run: nothing changed, so nothing is sent");
    let before = fanout.emf_documents().len();
    let again = invoke_fanout(&fanout).await?;
    println!(
        "fan-out run {}: {} images seen, {} enqueued, {} up to date",
        again["run_id"].as_str().unwrap_or("?"),
        again["images_seen"],
        again["images_enqueued"],
        again["images_up_to_date"]
    );
    if again["images_enqueued"] != json!(0) {
        bail!("the second fan-out sent copies for an unchanged registry");
    }
    print_metrics("fan-out", &fanout.emf_documents()[before..]);

    fanout.shutdown().await;
    worker.shutdown().await;
    println!("\n{store}");
    Ok(())
}

/// Registers an image of the data plane in moto's ECR under each of its tags (untagged
/// when it has none), with its real digest (moto computes a wrong one otherwise).
async fn register(ecr: &aws_sdk_ecr::Client, image: &CorpusImage) -> Result<()> {
    let _ = ecr
        .create_repository()
        .repository_name(image.repository.as_str())
        .send()
        .await;
    let manifest = String::from_utf8(image.manifest_bytes.to_vec())?;
    let tags: Vec<Option<String>> = if image.tags.is_empty() {
        vec![None]
    } else {
        image.tags.iter().map(|t| Some(t.to_string())).collect()
    };
    for tag in tags {
        ecr.put_image()
            .repository_name(image.repository.as_str())
            .image_manifest(&manifest)
            .image_manifest_media_type(&image.media_type)
            .image_digest(image.digest.to_string())
            .set_image_tag(tag)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ECR PutImage {}@{}: {}",
                    image.repository,
                    image.digest,
                    aws_sdk_ecr::error::DisplayErrorContext(&e)
                )
            })?;
    }
    Ok(())
}

/// The EventBridge event of an ECR push, as the push rule delivers it to the queue.
fn push_event(image: &CorpusImage, tag: &str) -> Value {
    json!({
        "version": "0",
        "id": format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16),
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": "123456789012",
        "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "result": "SUCCESS",
            "repository-name": image.repository.as_str(),
            "image-digest": image.digest.to_string(),
            "action-type": "PUSH",
            "image-tag": tag,
            "manifest-media-type": image.media_type,
        }
    })
}

async fn invoke_fanout(fanout: &LambdaFunction) -> Result<Value> {
    let event = json!({
        "version": "0",
        "id": format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/ecr-backup-daily"],
        "detail": {}
    });
    match fanout.invoke(&event, FANOUT_TIMEOUT).await {
        InvocationResult::Response(report) => Ok(report),
        other => bail!(
            "the fan-out did not answer: {other:?}\n{}",
            fanout.log_tail(30)
        ),
    }
}

/// Sums the EMF documents' metrics and prints them, as CloudWatch would chart them.
fn print_metrics(function: &str, documents: &[Value]) {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for doc in documents {
        let Some(defs) = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array() else {
            continue;
        };
        for def in defs {
            let Some(name) = def["Name"].as_str() else {
                continue;
            };
            *sums.entry(name.to_owned()).or_default() += doc[name].as_f64().unwrap_or(0.0);
        }
    }
    let shown: Vec<String> = sums
        .iter()
        .filter(|(name, _)| name.as_str() != "Duration")
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    println!(
        "{function} metrics (EMF, namespace EcrBackup, {} documents): {}",
        documents.len(),
        shown.join(" ")
    );
}

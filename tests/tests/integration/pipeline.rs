//! The serverless pipeline end to end against real local servers: the fan-out and worker
//! Lambda handlers, a moto SQS queue with a dead-letter queue, moto's ECR API, the auth
//! registry as ECR's data plane, and an S3 (moto) store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use ecr_backup_fanout::FanoutContext;
use ecr_backup_shared::copy::CopyEngine;
use ecr_backup_shared::filter::FilterSpec;
use ecr_backup_shared::pipeline::config::FanoutConfig;
use ecr_backup_shared::pipeline::queue::SqsQueue;
use ecr_backup_shared::pipeline::worker::Worker;
use ecr_backup_shared::source::ecr::{EcrApi, EcrCredentials};
use ecr_backup_shared::source::Source;
use ecr_backup_shared::store::tag_view::tag_view;
use ecr_backup_shared::store::StoreLocation;
use ecr_backup_shared::{Digest, RegistryClient, RepositoryName, Store, Tag};
use ecr_backup_tests::corpus::{push_image, random_layer, repository, CorpusImage, Format};
use ecr_backup_tests::servers::{self, TestServers};
use ecr_backup_worker::WorkerContext;

use crate::common::{aws_config, s3_store};

const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const MAX_RECEIVES: u32 = 2;
const VISIBILITY_SECONDS: i32 = 2;

/// Everything one pipeline test needs, on its own queues, bucket and repositories.
struct Pipeline {
    servers: TestServers,
    prefix: String,
    ecr: aws_sdk_ecr::Client,
    sqs: aws_sdk_sqs::Client,
    queue: SqsQueue,
    dlq: SqsQueue,
    store: Store,
    source: Source,
    worker: WorkerContext,
}

impl Pipeline {
    async fn new(name: &str) -> Pipeline {
        let servers = TestServers::from_env();
        let prefix = servers::unique_prefix(name);
        let config = aws_config(&servers.moto).await;
        let ecr = aws_sdk_ecr::Client::new(&config);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let suffix = format!("{:08x}", rand::random::<u32>());
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("copy-dlq-{suffix}"))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let dlq = SqsQueue::new(sqs.clone(), dlq_url);
        let dlq_arn = dlq.arn().await.unwrap();
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("copy-{suffix}"))
            .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, VISIBILITY_SECONDS.to_string())
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}).to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let queue = SqsQueue::new(sqs.clone(), queue_url);
        let (_s3, store, _bucket) = s3_store(&servers.moto, name).await;

        let api = EcrApi::new(ecr.clone(), Some("123456789012".into()));
        let registry = RegistryClient::new(
            ecr_backup_shared::source::registry::parse_registry_url(&servers.auth_registry)
                .unwrap(),
            Arc::new(EcrCredentials::new(api.clone())),
        )
        .unwrap();
        let source = Source::from_parts(ECR_HOST.into(), registry.clone(), Some(api));
        let engine = CopyEngine::for_source(&source, store.clone());
        let (max, _) = queue
            .redrive_policy()
            .await
            .unwrap()
            .expect("redrive policy");
        let worker = Worker::new(
            engine,
            source.clone(),
            queue.clone(),
            Some((max, dlq.clone())),
        );
        Pipeline {
            servers,
            prefix,
            ecr,
            sqs,
            queue,
            dlq,
            store,
            source,
            worker: WorkerContext::new(Arc::new(worker), 4),
        }
    }

    /// A worker on the same queues and store, with a repository and tag selection.
    fn worker_with_filter(&self, filter: &FilterSpec) -> Worker {
        let engine = CopyEngine::for_source(&self.source, self.store.clone());
        Worker::new(engine, self.source.clone(), self.queue.clone(), None)
            .with_filter(filter.compile().unwrap())
    }

    fn repo(&self, name: &str) -> RepositoryName {
        repository(&self.prefix, name).unwrap()
    }

    /// Pushes an image to the data plane and registers it in the ECR API with its digest.
    async fn push(
        &self,
        repo: &RepositoryName,
        tags: &[&str],
        seed: u64,
        format: Format,
    ) -> CorpusImage {
        let _ = self
            .ecr
            .create_repository()
            .repository_name(repo.as_str())
            .send()
            .await;
        let tags: Vec<Tag> = tags.iter().map(|t| t.parse().unwrap()).collect();
        let layers = [random_layer(seed, 20_000 + seed * 100)];
        let image = push_image(&self.servers.auth_client(), repo, &tags, &layers, format)
            .await
            .unwrap();
        let manifest = String::from_utf8(image.manifest_bytes.to_vec()).unwrap();
        let tag_list: Vec<Option<String>> = if tags.is_empty() {
            vec![None]
        } else {
            tags.iter().map(|t| Some(t.to_string())).collect()
        };
        for tag in tag_list {
            self.ecr
                .put_image()
                .repository_name(repo.as_str())
                .image_manifest(&manifest)
                .image_manifest_media_type(&image.media_type)
                .image_digest(image.digest.to_string())
                .set_image_tag(tag)
                .send()
                .await
                .unwrap();
        }
        image
    }

    fn fanout(&self) -> FanoutContext {
        let config = FanoutConfig {
            store: StoreLocation::Dir("unused".into()),
            queue_url: self.queue.url().to_owned(),
            filter: FilterSpec {
                repositories: vec![format!("{}/**", self.prefix.trim_end_matches('/'))],
                ..FilterSpec::default()
            },
            registry_endpoint: None,
            part_repositories: None,
        };
        FanoutContext::new(
            self.source.clone(),
            self.store.clone(),
            self.queue.clone(),
            config,
        )
    }

    /// Receives one batch the way Lambda's SQS event source does, hands it to the worker
    /// handler, and deletes the messages it did not report as failed.
    async fn deliver_one_batch(&self) -> Option<(usize, SqsBatchResponse)> {
        let received = self.queue.receive(VISIBILITY_SECONDS, 1).await.unwrap();
        if received.is_empty() {
            return None;
        }
        let records: Vec<serde_json::Value> = received
            .iter()
            .map(|m| {
                serde_json::json!({
                    "messageId": m.message_id,
                    "receiptHandle": m.receipt_handle,
                    "body": m.body,
                    "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let event: SqsEvent =
            serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
        let response = ecr_backup_worker::handle(&self.worker, event).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let done: Vec<_> = received
            .iter()
            .filter(|m| !failed.contains(&m.message_id.as_str()))
            .collect();
        self.queue.delete(&done).await.unwrap();
        Some((received.len(), response))
    }

    /// Delivers batches until the queue is empty; returns the batch sizes seen.
    async fn drain(&self) -> Vec<usize> {
        let mut sizes = Vec::new();
        while let Some((n, response)) = self.deliver_one_batch().await {
            assert!(
                response.batch_item_failures.is_empty(),
                "unexpected failures: {:?}",
                response.batch_item_failures
            );
            sizes.push(n);
        }
        sizes
    }

    async fn send_body(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(self.queue.url())
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    async fn tags_in_store(&self) -> BTreeMap<(RepositoryName, Tag), Digest> {
        let listing = self.store.listing(None).await.unwrap();
        tag_view(&self.store, &listing, None).await.unwrap()
    }
}

/// The SQS event Lambda would deliver for one received message.
fn sqs_event_of(m: &ecr_backup_shared::pipeline::queue::ReceivedMessage) -> SqsEvent {
    serde_json::from_value(serde_json::json!({ "Records": [{
        "messageId": m.message_id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "awsRegion": "us-east-1",
    }]}))
    .unwrap()
}

fn push_event(action: &str, repo: &RepositoryName, digest: &Digest, tag: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "0d6e7f3a-0000-0000-0000-000000000000",
        "detail-type": "ECR Image Action", "source": "aws.ecr",
        "account": "123456789012", "time": chrono::Utc::now().to_rfc3339(), "region": "us-east-1",
        "resources": [],
        "detail": {"result": "SUCCESS", "repository-name": repo.as_str(), "image-digest": digest.to_string(),
                   "action-type": action, "image-tag": tag,
                   "manifest-media-type": "application/vnd.oci.image.manifest.v1+json"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_fanout_then_workers_back_up_every_image_and_a_second_run_sends_nothing() {
    let p = Pipeline::new("pipeline").await;
    let mut expected = BTreeMap::new();
    let mut images = Vec::new();
    // 23 images over 3 repositories: batches must be full across repositories.
    for (r, count) in [("a", 10u64), ("team/b", 8), ("c", 5)] {
        let repo = p.repo(r);
        for i in 0..count {
            let tag = format!("v{i}");
            let format = if i % 2 == 0 {
                Format::Oci
            } else {
                Format::Docker
            };
            let image = p.push(&repo, &[&tag], 1000 * count + i, format).await;
            expected.insert(
                (repo.clone(), tag.parse::<Tag>().unwrap()),
                image.digest.clone(),
            );
            images.push(image);
        }
    }
    let untagged = p.push(&p.repo("c"), &[], 77, Format::Oci).await;

    let report = ecr_backup_fanout::handle(&p.fanout(), Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(report.images_enqueued, 24, "{report:?}");
    assert_eq!(
        report.send_calls, 3,
        "24 messages go out in batches of 10, 10 and 4"
    );
    assert!(report.continued_after.is_none());
    assert_eq!(p.queue.approximate_depth().await.unwrap(), 24);

    let batches = p.drain().await;
    assert!(batches.iter().all(|&n| n <= 10));
    assert_eq!(batches.iter().sum::<usize>(), 24);
    for image in images.iter().chain([&untagged]) {
        let record = p
            .store
            .image_record(&image.repository, &image.digest)
            .await
            .unwrap();
        assert!(
            record.is_some(),
            "{}@{} not backed up",
            image.repository,
            image.digest
        );
    }
    let in_store: BTreeMap<_, _> = p
        .tags_in_store()
        .await
        .into_iter()
        .filter(|((r, _), _)| r.as_str().starts_with(p.prefix.trim_end_matches('/')))
        .collect();
    assert_eq!(
        in_store, expected,
        "every tag resolves to the source's digest"
    );
    // The stored manifests are the source's exact bytes.
    for image in &images {
        assert_eq!(
            p.store.read_blob(&image.digest).await.unwrap().unwrap(),
            image.manifest_bytes
        );
    }

    let second = ecr_backup_fanout::handle(&p.fanout(), Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(second.images_enqueued, 0, "{second:?}");
    assert_eq!(second.images_up_to_date, 24);
    assert_eq!(second.send_calls, 0);
    assert_eq!(p.queue.approximate_depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fanout_out_of_time_continues_through_the_queue() {
    let p = Pipeline::new("continue").await;
    for (r, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        p.push(&p.repo(r), &["v1"], seed, Format::Oci).await;
    }
    // No time at all: one repository per part, the rest handed on.
    let filter = FilterSpec {
        repositories: vec![format!("{}/**", p.prefix.trim_end_matches('/'))],
        ..FilterSpec::default()
    };
    let run = ecr_backup_shared::pipeline::fanout::FanoutRun::start(filter, None);
    let report = ecr_backup_shared::pipeline::fanout::fan_out(
        &p.source,
        &p.store,
        &p.queue,
        &run,
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(report.repositories, 1);
    assert_eq!(report.continued_after, Some(p.repo("a")));
    p.drain().await;
    // Every repository was reached, by continuation messages, and the run's parts merge.
    let tags = p.tags_in_store().await;
    for r in ["a", "b", "c"] {
        assert!(
            tags.contains_key(&(p.repo(r), "v1".parse().unwrap())),
            "{r} missing: {tags:?}"
        );
    }
    let run = ecr_backup_shared::store::tag_view::latest_run(&p.store, None)
        .await
        .unwrap()
        .expect("a complete run");
    assert_eq!(run.run_id(), report.run_id);
    assert!(
        run.repositories
            .keys()
            .filter(|r| r.as_str().starts_with(p.prefix.trim_end_matches('/')))
            .count()
            == 3
    );
}

/// The fan-out records each repository's settings, and the registry's with its first
/// part; a continued part (run by the worker) records its own repositories'; a second run
/// over unchanged settings writes none.
#[tokio::test(flavor = "multi_thread")]
async fn the_fanout_and_its_continuations_record_settings_once() {
    use ecr_backup_shared::store::settings::SettingsSubject;
    let p = Pipeline::new("fanout-settings").await;
    for (r, seed) in [("a", 11), ("b", 12)] {
        p.push(&p.repo(r), &["v1"], seed, Format::Oci).await;
    }
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Sid": "Pull",
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/deployer"},
        "Action": ["ecr:BatchGetImage"]}]})
    .to_string();
    p.ecr
        .set_repository_policy()
        .repository_name(p.repo("b").as_str())
        .policy_text(&policy)
        .send()
        .await
        .unwrap();
    let filter = FilterSpec {
        repositories: vec![format!("{}/**", p.prefix.trim_end_matches('/'))],
        ..FilterSpec::default()
    };
    // No time at all: repository a in the first part, b in a continuation.
    let run = ecr_backup_shared::pipeline::fanout::FanoutRun::start(filter.clone(), None);
    let report = ecr_backup_shared::pipeline::fanout::fan_out(
        &p.source,
        &p.store,
        &p.queue,
        &run,
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(report.continued_after, Some(p.repo("a")));
    assert!(report.settings.warnings.is_empty(), "{report:?}");
    assert!(report
        .settings
        .written
        .contains(&format!("repository {}", p.repo("a"))));
    p.drain().await;
    let b = SettingsSubject::Repository(p.repo("b"));
    let entry = p
        .store
        .settings_as_of(&b, None)
        .await
        .unwrap()
        .expect("b's settings");
    let document: serde_json::Value =
        serde_json::from_slice(&p.store.settings_document(&entry.digest).await.unwrap()).unwrap();
    assert_eq!(document["repositoryPolicy"], policy.as_str());
    for part in ["policy", "replication", "scanning"] {
        assert!(p
            .store
            .settings_as_of(&SettingsSubject::Registry(part), None)
            .await
            .unwrap()
            .is_some());
    }

    let again = ecr_backup_shared::pipeline::fanout::FanoutRun::start(filter, None);
    let second = ecr_backup_shared::pipeline::fanout::fan_out(
        &p.source,
        &p.store,
        &p.queue,
        &again,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert!(second.settings.written.is_empty(), "{second:?}");
    assert_eq!(second.settings.unchanged, 2 + 3);
    for r in ["a", "b"] {
        let history = p
            .store
            .settings_history(&SettingsSubject::Repository(p.repo(r)))
            .await
            .unwrap();
        assert_eq!(history.len(), 1, "{r}: {history:?}");
    }
}

/// The fan-out writes a part before the message that continues the run: a run whose
/// continuation never went out is incomplete, and no reader takes it for the registry.
/// Every continuation delivered twice (SQS delivers at least once) still ends in one
/// complete run with every repository, each part written once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_continuation_leaves_an_incomplete_run_and_a_duplicated_one_completes_once() {
    let p = Pipeline::new("parts").await;
    for (r, seed) in [("a", 41), ("b", 42), ("c", 43)] {
        p.push(&p.repo(r), &["v1"], seed, Format::Oci).await;
    }
    let filter = FilterSpec {
        repositories: vec![format!("{}/**", p.prefix.trim_end_matches('/'))],
        ..FilterSpec::default()
    };
    let continuations = |messages: &[ecr_backup_shared::pipeline::queue::ReceivedMessage]| {
        messages
            .iter()
            .filter(|m| m.body.contains("continue-fanout"))
            .cloned()
            .collect::<Vec<_>>()
    };

    // Lost: the part is written, its continuation is dropped (a crash right after).
    let lost = ecr_backup_shared::pipeline::fanout::FanoutRun::start(filter.clone(), Some(1));
    let report = ecr_backup_shared::pipeline::fanout::fan_out(
        &p.source,
        &p.store,
        &p.queue,
        &lost,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert!(!report.run_complete);
    let queued = p.queue.receive(30, 1).await.unwrap();
    assert_eq!(
        continuations(&queued).len(),
        1,
        "one continuation, sent after the part"
    );
    p.queue
        .delete(&queued.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let run = p
        .store
        .run(&lost.run_id)
        .await
        .unwrap()
        .expect("part 0 written");
    assert!(
        !run.is_complete(),
        "a run without its last part is incomplete"
    );
    assert!(
        ecr_backup_shared::store::tag_view::latest_run(&p.store, None)
            .await
            .unwrap()
            .is_none(),
        "an incomplete run is not the registry's latest state"
    );
    let (code, out, err) = crate::common::run_cli_env(
        &[
            "restore",
            "--store",
            &p.store.location(),
            "--target",
            &p.servers.target_registry,
            "--snapshot",
            &lost.run_id,
        ],
        &[("AWS_ENDPOINT_URL", p.servers.moto.as_str())],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("incomplete"), "{err}");

    // Duplicated: every continuation is delivered twice.
    let run = ecr_backup_shared::pipeline::fanout::FanoutRun::start(filter, Some(1));
    ecr_backup_shared::pipeline::fanout::fan_out(
        &p.source,
        &p.store,
        &p.queue,
        &run,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    // Each continuation is handled by two workers at once; copy messages once.
    for _round in 0..10 {
        let batch = p.queue.receive(30, 1).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            if m.body.contains("continue-fanout") {
                let (x, y) = futures::join!(
                    ecr_backup_worker::handle(&p.worker, sqs_event_of(m)),
                    ecr_backup_worker::handle(&p.worker, sqs_event_of(m))
                );
                assert!(
                    x.batch_item_failures.is_empty() && y.batch_item_failures.is_empty(),
                    "a duplicated continuation failed"
                );
                p.queue.delete(&[m]).await.unwrap();
            } else {
                let response = ecr_backup_worker::handle(&p.worker, sqs_event_of(m)).await;
                assert!(response.batch_item_failures.is_empty(), "a copy failed");
                p.queue.delete(&[m]).await.unwrap();
            }
        }
    }
    p.drain().await;
    let whole = p.store.run(&run.run_id).await.unwrap().expect("the run");
    assert!(
        whole.is_complete(),
        "missing parts {:?}",
        whole.missing_parts()
    );
    assert_eq!(whole.part_count, Some(3));
    let merged = p.store.resolve_run(&whole).await.unwrap();
    for r in ["a", "b", "c"] {
        assert!(
            merged.repositories.contains_key(&p.repo(r)),
            "{r} missing from the run"
        );
    }
    assert_eq!(
        p.dlq.approximate_depth().await.unwrap(),
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_push_event_backs_up_exactly_that_image_and_delete_deletes_nothing() {
    let p = Pipeline::new("events").await;
    let repo = p.repo("svc");
    let one = p.push(&repo, &["v1"], 11, Format::Oci).await;
    let other = p.push(&repo, &["v2"], 12, Format::Oci).await;

    p.send_body(&push_event("PUSH", &repo, &one.digest, "v1"))
        .await;
    p.drain().await;
    assert!(p
        .store
        .image_record(&repo, &one.digest)
        .await
        .unwrap()
        .is_some());
    assert!(
        p.store
            .image_record(&repo, &other.digest)
            .await
            .unwrap()
            .is_none(),
        "only the pushed image"
    );
    assert_eq!(
        p.tags_in_store()
            .await
            .get(&(repo.clone(), "v1".parse().unwrap())),
        Some(&one.digest)
    );

    let objects_before = p.store.backend().list("").await.unwrap().len();
    p.send_body(&push_event("DELETE", &repo, &one.digest, "v1"))
        .await;
    p.drain().await;
    let listing = p.store.listing(Some(&repo)).await.unwrap();
    assert!(
        listing[&repo].deleted.contains_key(&one.digest),
        "deletion recorded"
    );
    assert!(
        p.store
            .image_record(&repo, &one.digest)
            .await
            .unwrap()
            .is_some(),
        "backup kept"
    );
    assert!(p.store.blob_size(&one.digest).await.unwrap().is_some());
    assert_eq!(
        p.store.backend().list("").await.unwrap().len(),
        objects_before + 1,
        "one record added, nothing removed"
    );

    // A failed push and other event types need no work and fail nothing.
    let mut failed_push: serde_json::Value =
        serde_json::from_str(&push_event("PUSH", &repo, &other.digest, "v2")).unwrap();
    failed_push["detail"]["result"] = "FAILURE".into();
    p.send_body(&failed_push.to_string()).await;
    p.drain().await;
    assert!(p
        .store
        .image_record(&repo, &other.digest)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_malformed_record_fails_alone_lands_in_the_dlq_with_its_error_and_redrive_moves_it_back(
) {
    let p = Pipeline::new("batch").await;
    let repo = p.repo("batch");
    let mut images = Vec::new();
    for i in 0..9 {
        images.push(
            p.push(&repo, &[&format!("t{i}")], 200 + i, Format::Oci)
                .await,
        );
    }
    for image in &images {
        p.send_body(&push_event(
            "PUSH",
            &repo,
            &image.digest,
            image.tags[0].as_str(),
        ))
        .await;
    }
    p.send_body(
        r#"{"version":1,"kind":"copy-image","repository":"../../etc","digest":"sha256:nope"}"#,
    )
    .await;

    // Collect the ten messages into one batch, as the event source mapping would.
    let mut received = Vec::new();
    while received.len() < 10 {
        let batch = p.queue.receive(30, 1).await.unwrap();
        assert!(!batch.is_empty(), "queue ran dry after {}", received.len());
        received.extend(batch);
    }
    let records: Vec<serde_json::Value> = received
        .iter()
        .map(|m| serde_json::json!({"messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                                    "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()}}))
        .collect();
    let event: SqsEvent =
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
    let response = ecr_backup_worker::handle(&p.worker, event).await;
    let malformed = received
        .iter()
        .find(|m| m.body.contains("../../etc"))
        .unwrap();
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        failed,
        vec![malformed.message_id.clone()],
        "only the malformed record fails"
    );
    for image in &images {
        assert!(
            p.store
                .image_record(&repo, &image.digest)
                .await
                .unwrap()
                .is_some(),
            "batch-mates copied"
        );
    }
    let done: Vec<_> = received
        .iter()
        .filter(|m| m.message_id != malformed.message_id)
        .collect();
    p.queue.delete(&done).await.unwrap();
    p.queue
        .client()
        .change_message_visibility()
        .queue_url(p.queue.url())
        .receipt_handle(&malformed.receipt_handle)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();

    // It comes back until its last allowed receive, then sits in the DLQ with its error.
    let mut receives = 1;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some((_, response)) = p.deliver_one_batch().await {
            receives += 1;
            let _ = response;
        }
        if p.queue.approximate_depth().await.unwrap() == 0
            && p.dlq.approximate_depth().await.unwrap() == 1
        {
            break;
        }
    }
    assert_eq!(
        receives, MAX_RECEIVES as usize,
        "received maxReceiveCount times"
    );
    assert_eq!(p.queue.approximate_depth().await.unwrap(), 0);
    let letters = ecr_backup_shared::pipeline::redrive::peek(&p.dlq, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(!letters[0].message_id.is_empty());
    let error = letters[0].error.as_deref().unwrap_or_default();
    // Both fields are wrong; which one is named first follows the JSON map's order, which
    // a serde_json feature enabled anywhere in the build can change.
    assert!(
        error.contains("malformed message")
            && (error.contains("invalid digest \"sha256:nope\"")
                || error.contains("invalid repository name \"../../etc\"")),
        "{error}"
    );
    assert_eq!(letters[0].receive_count, Some(MAX_RECEIVES));
    // The DLQ copy has a new id; the first one is kept to trace it back to the logs.
    assert_ne!(letters[0].message_id, malformed.message_id);
    assert_eq!(
        letters[0].original_message_id.as_deref(),
        Some(malformed.message_id.as_str()),
        "the dead-lettered copy names the message id that failed"
    );

    // The operator's redrive (the test server has no StartMessageMoveTask: fallback path).
    let (code, stdout, stderr) = crate::common::run_cli_env(
        &[
            "redrive",
            "--dlq",
            p.dlq.url(),
            "--target",
            p.queue.url(),
            "--json",
        ],
        &[("AWS_ENDPOINT_URL", p.servers.moto.as_str())],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["moved"], 1, "{stdout}");
    assert_eq!(p.dlq.approximate_depth().await.unwrap(), 0);
    let back = p.queue.receive(30, 1).await.unwrap();
    assert_eq!(back.len(), 1);
    assert!(back[0].body.contains("../../etc"), "the same body is back");
    assert!(!back[0]
        .attributes
        .contains_key(ecr_backup_shared::pipeline::queue::ERROR_ATTRIBUTE));
    assert_eq!(
        back[0]
            .attributes
            .get(ecr_backup_shared::pipeline::queue::ORIGINAL_ID_ATTRIBUTE)
            .map(String::as_str),
        Some(malformed.message_id.as_str()),
        "a redrive keeps the first message id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn push_events_obey_the_same_repository_and_tag_selection_as_the_fanout() {
    let p = Pipeline::new("selection").await;
    let kept = p.repo("kept");
    let skipped = p.repo("scratch");
    let a = p.push(&kept, &["v1"], 31, Format::Oci).await;
    let b = p.push(&kept, &["dev-1"], 32, Format::Oci).await;
    let c = p.push(&skipped, &["v1"], 33, Format::Oci).await;
    let filter = FilterSpec {
        repositories: vec![format!("{}/**", p.prefix.trim_end_matches('/'))],
        exclude_repositories: vec![format!("{}/scratch", p.prefix.trim_end_matches('/'))],
        tag: Some("v[0-9]+".into()),
    };
    let worker = p.worker_with_filter(&filter);
    for (repo, image, tag) in [
        (&kept, &a, "v1"),
        (&kept, &b, "dev-1"),
        (&skipped, &c, "v1"),
    ] {
        let outcome = worker
            .run_task(&push_event("PUSH", repo, &image.digest, tag))
            .await
            .unwrap();
        let stored = p
            .store
            .image_record(repo, &image.digest)
            .await
            .unwrap()
            .is_some();
        match tag {
            "v1" if repo == &kept => assert!(stored, "{outcome:?}"),
            _ => {
                assert!(!stored, "{repo}:{tag} should be left out");
                assert!(
                    matches!(
                        outcome,
                        ecr_backup_shared::pipeline::worker::TaskOutcome::Ignored(_)
                    ),
                    "{outcome:?}"
                );
            }
        }
    }
}

/// The CLI and the fan-out plan through one planner; a repository that was listed but is
/// gone by the time it is enumerated (here: one the registry never had) is left out and
/// named, against ECR's API and against a plain registry's tag list alike, and the other
/// repositories are planned as usual.
#[tokio::test(flavor = "multi_thread")]
async fn the_planner_names_a_repository_deleted_mid_run_for_ecr_and_plain_registries() {
    use ecr_backup_shared::backup::Planner;
    use ecr_backup_shared::filter::ImageFilter;
    use futures::StreamExt;

    let p = Pipeline::new("planner-gone").await;
    let kept = p.repo("kept");
    let deleted = p.repo("deleted");
    let image = p.push(&kept, &["v1"], 41, Format::Oci).await;
    // ECR: the repository existed when listed, and was deleted before DescribeImages.
    p.ecr
        .create_repository()
        .repository_name(deleted.as_str())
        .send()
        .await
        .unwrap();
    p.ecr
        .delete_repository()
        .repository_name(deleted.as_str())
        .send()
        .await
        .unwrap();
    // The same registry without ECR's API: enumerated through its tag lists.
    let plain = Source::from_parts("plain".into(), p.servers.auth_client(), None);
    let filter = ImageFilter::default();
    let baseline = ecr_backup_shared::backup::Baseline::default();
    for source in [&p.source, &plain] {
        let planner = Planner::new(source, &p.store, &filter, chrono::Utc::now(), &baseline);
        let planned: Vec<_> = planner
            .each(vec![deleted.clone(), kept.clone()])
            .collect()
            .await;
        let planned: Vec<_> = planned
            .into_iter()
            .map(|r| r.expect("a deleted repository is not a failure"))
            .collect();
        assert!(planned[0].gone, "{} from {}", deleted, source.name());
        assert!(planned[0].work.is_empty());
        assert!(!planned[1].gone);
        assert_eq!(
            planned[1]
                .work
                .iter()
                .map(|w| &w.digest)
                .collect::<Vec<_>>(),
            vec![&image.digest],
            "{}",
            source.name()
        );
        let mut plan = ecr_backup_shared::backup::Plan::new(
            ecr_backup_shared::store::records::Snapshot::new("r".into(), chrono::Utc::now()),
            &baseline,
        );
        for r in planned {
            plan.add(r);
        }
        assert_eq!(plan.gone, vec![deleted.clone()]);
        assert!(!plan.snapshot.repositories.contains_key(&deleted));
    }
}

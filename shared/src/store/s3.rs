//! A store under an S3 prefix.
//!
//! Small blobs go up in one `PutObject`; larger ones as a multipart upload that is
//! completed only after the whole stream hashed to the expected digest, and aborted
//! otherwise, so a blob key never shows unverified bytes. Both use `If-None-Match: *`, so
//! an existing blob is never replaced. S3 does not check OCI digests (and moto checks no
//! checksums at all), which is why the digest is verified here.

mod contact;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{Backend, ByteStream, ObjectInfo, StoreError, WriteOutcome};
use crate::metering::{CountRequests, RequestCounter, RequestCounts};
use crate::oci::digest::Digest;
use crate::stream::VerifyingStream;

pub use contact::ContactError;

/// Size of each multipart part, and the threshold for a single `PutObject`.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one blob uploading at once; bounds memory to about (this + 1) × [`PART_SIZE`].
const PARTS_IN_FLIGHT: usize = 2;

/// `s3://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix, empty or ending in `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<S3Location, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidLocation {
            location: url.into(),
            reason: reason.into(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket name is empty"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == ".." || c == ".") {
            return Err(invalid("the prefix may not contain . or .. segments"));
        }
        Ok(S3Location {
            bucket: bucket.into(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }
}

/// A store in an S3 bucket, below a prefix.
#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    location: S3Location,
    retries: Arc<AtomicU64>,
    requests: Arc<RequestCounter>,
}

/// Leaves the SigV4 hash of the body out of requests sent over HTTPS.
///
/// There the body is protected by TLS and checked by S3 against the CRC32 the SDK sends
/// with it, and a blob's digest was verified before its upload, so hashing every byte
/// once more for the signature (0.41 s of CPU per 640 MB on the benchmark machine, as
/// much as the digest check itself) buys nothing; the AWS CLI leaves it out there too.
/// Over plain HTTP (a local S3-compatible server) the signature is the body's only
/// protection against tampering, so it stays. Decided per request, on its final URI.
#[derive(Debug)]
struct UnsignedPayloadOverHttps;

impl Intercept for UnsignedPayloadOverHttps {
    fn name(&self) -> &'static str {
        "ecr-backup-unsigned-payload-over-https"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        if is_https(context.request().uri()) {
            cfg.interceptor_state()
                .store_put(PayloadSigningOverride::unsigned_payload());
        }
        Ok(())
    }
}

fn is_https(uri: &str) -> bool {
    uri.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// Counts the attempts after the first of every S3 call: the SDK retries throttling
/// (`SlowDown`) and 5xx answers by itself, and reports should show them.
#[derive(Debug)]
struct RetryCounter(Arc<AtomicU64>);

/// Marks a call whose first attempt was made.
#[derive(Debug, Clone)]
struct Attempted;

impl Storable for Attempted {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RetryCounter {
    fn name(&self) -> &'static str {
        "ecr-backup-retry-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        if cfg.load::<Attempted>().is_some() {
            self.0.fetch_add(1, Ordering::Relaxed);
        } else {
            cfg.interceptor_state().store_put(Attempted);
        }
        Ok(())
    }
}

fn s3_error<E>(op: &'static str, key: &str, err: aws_sdk_s3::error::SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StoreError::S3 {
        op,
        key: key.into(),
        message: DisplayErrorContext(&err).to_string(),
    }
}

fn error_code<E: ProvideErrorMetadata>(err: &aws_sdk_s3::error::SdkError<E>) -> Option<&str> {
    err.as_service_error().and_then(|e| e.code())
}

fn status<E>(err: &aws_sdk_s3::error::SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

impl S3Backend {
    /// A backend for `location` using a client built from the standard AWS settings.
    pub fn new(client: Client, location: S3Location) -> Self {
        let retries = Arc::new(AtomicU64::new(0));
        let requests = RequestCounter::shared();
        let config = client
            .config()
            .to_builder()
            .interceptor(RetryCounter(retries.clone()))
            .interceptor(CountRequests::new("S3", requests.clone()))
            .interceptor(UnsignedPayloadOverHttps)
            .build();
        S3Backend {
            client: Client::from_conf(config),
            location,
            retries,
            requests,
        }
    }

    /// Builds an S3 client from the environment (`AWS_ENDPOINT_URL_S3` and friends);
    /// path-style addressing when an endpoint is overridden, as local servers need.
    pub async fn client_from_env() -> Client {
        let config = crate::aws::sdk_config().await;
        let path_style = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            .build();
        Client::from_conf(s3_config)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.location.prefix)
    }

    async fn put_small(&self, key: &str, body: Bytes) -> Result<WriteOutcome, StoreError> {
        let result = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .body(S3Body::from(body))
            .send()
            .await;
        match result {
            Ok(_) => Ok(WriteOutcome::Written),
            Err(e) if status(&e) == Some(412) => Ok(WriteOutcome::AlreadyExists),
            Err(e) => Err(s3_error("PutObject", key, e)),
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        leftover: BytesMut,
        mut rest: VerifyingStream,
    ) -> Result<WriteOutcome, StoreError> {
        // Bytes read so far; `rest` ending without an error means they all matched.
        let mut size = (first.len() + leftover.len()) as u64;
        let full_key = self.full_key(key);
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(&full_key)
            // The SDK sends a CRC32 with every part; declaring it here makes the upload a
            // CRC32 composite one, whose completion lists each part's CRC32 (S3's rule).
            // Undeclared, moto computed a full-object CRC64NVME in Python at completion:
            // 3 s of a 500 MiB layer's 8 s (see docs/performance.md).
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();

        // One part's request, sent when polled; its answer is what completion lists.
        let upload_part = |number: i32, body: Bytes| {
            let request = self
                .client
                .upload_part()
                .bucket(&self.location.bucket)
                .key(&full_key)
                .upload_id(&upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(S3Body::from(body));
            async move {
                request.send().await.map(|out| {
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                        .build()
                })
            }
            .boxed()
        };
        let result = async {
            let mut parts = Vec::new();
            let mut in_flight = FuturesOrdered::new();
            let mut part_number = 1;
            let mut pending = Some(first);
            // `leftover` was hashed already by the caller; only later chunks are fed in.
            let mut buffer = leftover;
            buffer.reserve(PART_SIZE);
            loop {
                if let Some(part) = pending.take() {
                    in_flight.push_back(upload_part(part_number, part));
                    part_number += 1;
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        let done = in_flight.next().await.expect("non-empty");
                        parts.push(done.map_err(|e| s3_error("UploadPart", key, e))?);
                    }
                }
                match rest.next().await {
                    Some(chunk) => {
                        let chunk = chunk.map_err(|e| StoreError::verifying(key, e))?;
                        size += chunk.len() as u64;
                        buffer.extend_from_slice(&chunk);
                        if buffer.len() >= PART_SIZE {
                            pending = Some(buffer.split_to(PART_SIZE).freeze());
                        }
                    }
                    None => break,
                }
            }
            if !buffer.is_empty() {
                in_flight.push_back(upload_part(part_number, buffer.freeze()));
            }
            // `rest` was verified to its end before the last parts finish: a mismatch
            // never completes the upload.
            while let Some(done) = in_flight.next().await {
                parts.push(done.map_err(|e| s3_error("UploadPart", key, e))?);
            }
            let completed = self
                .client
                .complete_multipart_upload()
                .bucket(&self.location.bucket)
                .key(&full_key)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match completed {
                Ok(_) => Ok(WriteOutcome::Written),
                Err(e) if status(&e) == Some(412) => Ok(WriteOutcome::AlreadyExists),
                // A 200 whose body the SDK cannot parse (moto answers with a non-standard
                // XML root): the upload completed if the object is there with its size.
                Err(e) if status(&e) == Some(200) => match self.stat(key).await? {
                    Some(stored) if stored == size => Ok(WriteOutcome::Written),
                    _ => Err(s3_error("CompleteMultipartUpload", key, e)),
                },
                Err(e) => Err(s3_error("CompleteMultipartUpload", key, e)),
            }
        }
        .await;

        if !matches!(result, Ok(WriteOutcome::Written)) {
            // Abort on failure, and after a 412 (the upload was not consumed then either).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.location.bucket)
                .key(&full_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        format!(
            "s3://{}/{}",
            self.location.bucket,
            self.location.prefix.trim_end_matches('/')
        )
        .trim_end_matches('/')
        .to_owned()
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(s3_error("HeadObject", key, e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.open(key).await {
            Ok(stream) => {
                let bytes = stream
                    .try_fold(BytesMut::new(), |mut acc, chunk| async move {
                        acc.extend_from_slice(&chunk);
                        Ok(acc)
                    })
                    .await
                    .map_err(|source| StoreError::Source {
                        key: key.into(),
                        source,
                    })?;
                Ok(Some(bytes.freeze()))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match result {
            Ok(out) => {
                let reader = out.body.into_async_read();
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    reader,
                    256 * 1024,
                )))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(StoreError::NotFound { key: key.into() })
            }
            Err(e) if status(&e) == Some(404) || error_code(&e) == Some("NoSuchKey") => {
                Err(StoreError::NotFound { key: key.into() })
            }
            Err(e) => Err(s3_error("GetObject", key, e)),
        }
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(self.full_key(key))
            .body(S3Body::from(bytes))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", key, e))?;
        Ok(())
    }

    async fn write_verified(
        &self,
        key: &str,
        digest: &Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        // An object of at most one part goes up in one PutObject, whose If-None-Match
        // refuses to replace it: asking first only added a request per object (the copy
        // engine asks before it fetches a blob; records are new). Larger ones are asked
        // about, so that no part moves for a blob already there. (many corpus: 11 HEADs
        // per image before, see docs/performance.md.)
        let one_part = size.is_some_and(|s| s <= PART_SIZE as u64);
        if !one_part && self.stat(key).await?.is_some() {
            return Ok(WriteOutcome::AlreadyExists);
        }
        let mut bytes = VerifyingStream::new(bytes, digest.clone(), size);
        let mut buffer =
            BytesMut::with_capacity(size.map_or(PART_SIZE, |s| (s as usize).min(PART_SIZE)));
        // Read up to one part: a blob that ends before is checked whole, then sent in one request.
        while buffer.len() < PART_SIZE {
            match bytes.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| StoreError::verifying(key, e))?;
                    buffer.extend_from_slice(&chunk);
                }
                // Ended without an error: the whole blob matched.
                None => return self.put_small(key, buffer.freeze()).await,
            }
        }
        let first = buffer.split_to(PART_SIZE).freeze();
        self.put_multipart(key, first, buffer, bytes).await
    }

    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn requests(&self) -> RequestCounts {
        self.requests.snapshot()
    }

    async fn first_contact(&self) -> Result<(), StoreError> {
        contact::first_contact(self).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        // DeleteObjects takes at most 1,000 keys per request.
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|key| {
                    ObjectIdentifier::builder()
                        .key(self.full_key(key))
                        .build()
                        .expect("an object identifier has a key")
                })
                .collect::<Vec<_>>();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .expect("a delete request has objects");
            let first = chunk.first().map(String::as_str).unwrap_or_default();
            let output = self
                .client
                .delete_objects()
                .bucket(&self.location.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_error("DeleteObjects", first, e))?;
            // Per-key failures (AccessDenied under a bucket policy) come back in the body.
            if let Some(error) = output.errors().first() {
                let key = error.key().unwrap_or(first);
                return Err(StoreError::S3 {
                    op: "DeleteObjects",
                    key: key
                        .strip_prefix(self.location.prefix.as_str())
                        .unwrap_or(key)
                        .to_owned(),
                    message: format!(
                        "{}: {} ({} of {} keys of this request not deleted)",
                        error.code().unwrap_or("error"),
                        error.message().unwrap_or_default(),
                        output.errors().len(),
                        chunk.len()
                    ),
                });
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let key = key[self.location.prefix.len()..].to_owned();
                let modified = object
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_else(Utc::now);
                out.push(ObjectInfo {
                    key,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP client that answers every request with an empty 200 and keeps the
    /// `x-amz-content-sha256` header each one was signed with.
    #[derive(Debug, Clone, Default)]
    struct SignatureCapture(Arc<std::sync::Mutex<Vec<Option<String>>>>);

    impl aws_smithy_runtime_api::client::http::HttpConnector for SignatureCapture {
        fn call(
            &self,
            request: aws_sdk_s3::config::http::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            let header = request.headers().get("x-amz-content-sha256");
            self.0.lock().unwrap().push(header.map(str::to_owned));
            let ok = aws_sdk_s3::config::http::HttpResponse::new(
                200.try_into().unwrap(),
                aws_smithy_types::body::SdkBody::empty(),
            );
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(ok))
        }
    }

    impl aws_sdk_s3::config::HttpClient for SignatureCapture {
        fn http_connector(
            &self,
            _settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
            aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
        }
    }

    /// The `x-amz-content-sha256` a blob's `PutObject` to `endpoint` is signed with.
    async fn content_sha256_of_put_to(endpoint: &str) -> String {
        let capture = SignatureCapture::default();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::for_tests())
            .endpoint_url(endpoint)
            .force_path_style(true)
            .http_client(capture.clone())
            .build();
        let backend = S3Backend::new(
            Client::from_conf(config),
            S3Location::parse("s3://bucket/prefix").unwrap(),
        );
        let body = Bytes::from_static(b"{}");
        let digest = Digest::of(&body);
        backend
            .put_small(&format!("blobs/{digest}"), body)
            .await
            .unwrap();
        let sent = capture.0.lock().unwrap();
        assert_eq!(sent.len(), 1);
        sent[0].clone().expect("a signed request")
    }

    #[tokio::test]
    async fn bodies_are_hashed_into_the_signature_only_over_plain_http() {
        assert_eq!(
            content_sha256_of_put_to("https://s3.example.internal").await,
            "UNSIGNED-PAYLOAD"
        );
        assert_eq!(
            content_sha256_of_put_to("http://127.0.0.1:9000").await,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"{}"))
        );
    }

    #[test]
    fn parses_locations() {
        let l = S3Location::parse("s3://bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bucket", "a/b/"));
        let l = S3Location::parse("s3://bucket").unwrap();
        assert_eq!(l.prefix, "");
        assert!(S3Location::parse("s3:///x").is_err());
        assert!(S3Location::parse("s3://b/../x").is_err());
        assert!(S3Location::parse("gs://b").is_err());
    }
}

//! Requests counted by kind, for the cost figures of a run: every attempt an AWS SDK
//! client sends (S3, ECR's API) is one billed request, so an interceptor on the client
//! counts them by operation as they are sent, and logs each retry as it happens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde::Serialize;

/// Requests sent by one client (or written by one backend), counted as they happen.
#[derive(Debug, Default)]
pub struct RequestCounter {
    by_operation: Mutex<BTreeMap<String, u64>>,
    objects_written: AtomicU64,
}

impl RequestCounter {
    /// A new counter, shared by a client and its reports.
    pub fn shared() -> Arc<RequestCounter> {
        Arc::new(RequestCounter::default())
    }

    /// Counts one request (one attempt) of `operation`.
    pub fn count(&self, operation: &str) {
        let mut map = self.by_operation.lock().expect("request counter lock");
        *map.entry(operation.to_owned()).or_default() += 1;
    }

    /// Counts one object created or replaced in a store.
    pub fn object_written(&self) {
        self.objects_written.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            by_operation: self
                .by_operation
                .lock()
                .expect("request counter lock")
                .clone(),
            objects_written: self.objects_written.load(Ordering::Relaxed),
        }
    }
}

/// Counts at one moment; [`RequestCounts::since`] gives what happened in between two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests by operation name (`PutObject`, `DescribeImages`, …).
    pub by_operation: BTreeMap<String, u64>,
    /// Objects created or replaced.
    pub objects_written: u64,
}

impl RequestCounts {
    /// What was counted after `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            by_operation: self
                .by_operation
                .iter()
                .map(|(op, n)| {
                    let before = earlier.by_operation.get(op).copied().unwrap_or(0);
                    (op.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            objects_written: self.objects_written.saturating_sub(earlier.objects_written),
        }
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.by_operation.values().sum()
    }

    /// The S3 requests by the classes S3 bills them in.
    pub fn s3(&self) -> S3Requests {
        let mut out = S3Requests::default();
        for (op, n) in &self.by_operation {
            match s3_class(op) {
                S3Class::Put => out.put += n,
                S3Class::Get => out.get += n,
                S3Class::List => out.list += n,
                S3Class::Head => out.head += n,
                S3Class::Other => out.other += n,
            }
        }
        out
    }
}

/// S3 requests of one run, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct S3Requests {
    /// `PutObject`, the three calls of a multipart upload, `CopyObject`.
    pub put: u64,
    /// `GetObject`.
    pub get: u64,
    /// `ListObjectsV2` and the other listings (billed as PUT-class requests by S3).
    pub list: u64,
    /// `HeadObject`, `HeadBucket`.
    pub head: u64,
    /// Anything else (`AbortMultipartUpload`, which S3 does not bill, among them).
    pub other: u64,
}

enum S3Class {
    Put,
    Get,
    List,
    Head,
    Other,
}

fn s3_class(operation: &str) -> S3Class {
    match operation {
        "PutObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "CopyObject"
        | "UploadPartCopy" => S3Class::Put,
        "GetObject" => S3Class::Get,
        "ListObjectsV2"
        | "ListObjects"
        | "ListMultipartUploads"
        | "ListParts"
        | "ListObjectVersions" => S3Class::List,
        "HeadObject" | "HeadBucket" => S3Class::Head,
        _ => S3Class::Other,
    }
}

/// Operations whose success leaves a new (or replaced) object.
fn writes_an_object(operation: &str) -> bool {
    matches!(
        operation,
        "PutObject" | "CompleteMultipartUpload" | "CopyObject"
    )
}

/// An SDK interceptor that counts every attempt by operation and logs each retry (at
/// info, so `-v` shows it as it happens) with what went wrong with the attempt before.
#[derive(Debug)]
pub struct CountRequests {
    service: &'static str,
    counter: Arc<RequestCounter>,
}

impl CountRequests {
    /// Counts `service`'s requests (`S3`, `ECR`) into `counter`.
    pub fn new(service: &'static str, counter: Arc<RequestCounter>) -> CountRequests {
        CountRequests { service, counter }
    }
}

/// Attempts of the current call so far.
#[derive(Debug, Clone)]
struct Attempts(u32);

impl Storable for Attempts {
    type Storer = StoreReplace<Self>;
}

/// How the last attempt of the current call failed, for the retry's log line.
#[derive(Debug, Clone)]
struct LastFailure(String);

impl Storable for LastFailure {
    type Storer = StoreReplace<Self>;
}

fn operation(cfg: &ConfigBag) -> String {
    cfg.load::<Metadata>()
        .map(|m| m.name().to_owned())
        .unwrap_or_else(|| "request".to_owned())
}

/// The innermost cause's message: "Connection refused (os error 111)" rather than the
/// layers of dispatch errors above it.
pub fn innermost_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "ecr-backup-request-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = operation(cfg);
        let attempt = cfg.load::<Attempts>().map_or(1, |a| a.0 + 1);
        if attempt > 1 {
            let failure = cfg
                .load::<LastFailure>()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            tracing::info!(
                service = self.service,
                operation = %op,
                attempt,
                error = %failure,
                "retrying {} request",
                self.service
            );
        }
        cfg.interceptor_state().store_put(Attempts(attempt));
        self.counter.count(&op);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let status = context.response().map(|r| r.status().as_u16());
        let failed = match (status, context.output_or_error()) {
            (Some(s), _) if s >= 300 => Some(format!("HTTP {s}")),
            (_, Some(Err(e))) => Some(innermost_message(e)),
            _ => None,
        };
        match failed {
            Some(message) => {
                cfg.interceptor_state().store_put(LastFailure(message));
            }
            None => {
                if writes_an_object(&operation(cfg)) {
                    self.counter.object_written();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_requests_are_classed_as_s3_bills_them() {
        let counter = RequestCounter::default();
        for op in [
            "PutObject",
            "UploadPart",
            "UploadPart",
            "GetObject",
            "HeadObject",
            "ListObjectsV2",
            "AbortMultipartUpload",
        ] {
            counter.count(op);
        }
        let before = RequestCounts::default();
        let s3 = counter.snapshot().since(&before).s3();
        assert_eq!(
            s3,
            S3Requests {
                put: 3,
                get: 1,
                list: 1,
                head: 1,
                other: 1
            }
        );
    }

    #[test]
    fn since_subtracts_what_came_before() {
        let counter = RequestCounter::default();
        counter.count("GetObject");
        counter.object_written();
        let before = counter.snapshot();
        counter.count("GetObject");
        counter.count("PutObject");
        counter.object_written();
        let delta = counter.snapshot().since(&before);
        assert_eq!(delta.total(), 2);
        assert_eq!(delta.objects_written, 1);
        assert_eq!(delta.s3().get, 1);
    }
}

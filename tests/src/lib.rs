//! Test support for ecr-backup's integration tests, demo and benchmarks.
//!
//! The integration tests run against real local servers, never mocks: two anonymous
//! registries (Debian's `docker-registry`, CNCF distribution 2.8), a third one with HTTP
//! Basic auth standing in for Amazon ECR's data plane, and a moto server for the AWS APIs.
//! `tests/scripts/setup.sh` installs them, `tests/scripts/start-servers.sh DIR` starts
//! them and writes `DIR/env`, which the tests read through [`servers::TestServers`].
//!
//! - [`servers`]: where the servers are, clients for them, and the registries' access logs
//!   (to count blob GETs);
//! - [`corpus`]: a deterministic set of images (OCI and Docker manifests, an index, a
//!   manifest list, nested names, odd tags, an untagged image, a large layer) pushed
//!   through the project's own registry client;
//! - [`lambda_runtime_api`]: a Lambda Runtime API that runs the real Lambda binaries as
//!   Lambda does, capturing their logs;
//! - [`event_source_mapping`]: an SQS event-source mapping feeding such a function;
//! - [`stores`]: directory and S3 stores, AWS clients configured like the project's, and
//!   backups of a prefix through the library.

pub mod corpus;
pub mod event_source_mapping;
pub mod fault_proxy;
pub mod lambda_runtime_api;
pub mod servers;
pub mod stores;

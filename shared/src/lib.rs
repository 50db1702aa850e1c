//! The engine of ecr-backup: it copies container images, byte-exact and verified, from
//! any OCI registry (Amazon ECR first) into a content-addressed backup store, and back.
//!
//! The folders follow the flow of one image (docs/architecture.md draws it):
//!
//! | module | owns | may use |
//! |---|---|---|
//! | [`oci`] | digests, names, manifests: the vocabulary | — |
//! | [`source`] | every request to a registry or to the ECR API; enumeration | `oci` |
//! | [`store`] | backends (directory, S3), the layout, records, runs and tag views | `oci` |
//! | [`copy`] | the engine that copies one image from a source into a store | `source`, `store` |
//! | [`backup`] | the planner (what the store lacks) and a local run | `copy` |
//! | [`pipeline`] | the Lambdas' logic: messages, queue, fan-out, worker, redrive, metrics | `backup` |
//! | [`wayback`] | inventory, restore, export, verify, trust | `copy`, `source`, `store` |
//!
//! Dependencies run one way, top to bottom of that table; the small modules at the root
//! ([`stream`], [`failure`], [`filter`], [`error`], [`progress`], [`aws`], [`memory`]) are
//! used by all and use only `oci`.
//!
//! The store's format is specified in `docs/format.md`.

#![deny(missing_docs)]

pub mod aws;
pub mod backup;
pub mod copy;
pub mod error;
pub mod failure;
pub mod filter;
pub mod memory;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod source;
pub mod store;
pub mod stream;
pub mod wayback;

pub use oci::digest::Digest;
pub use oci::names::{RepositoryName, Tag};
pub use source::registry::RegistryClient;
pub use store::Store;

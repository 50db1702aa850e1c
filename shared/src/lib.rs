//! The engine of ecr-backup: it copies container images, byte-exact and verified, from
//! any OCI registry (Amazon ECR first) into a content-addressed backup store, and back.
//!
//! The flow of one image:
//!
//! 1. a [`source`] enumerates images: ECR's API ([`ecr`]) or a registry's `_catalog`;
//! 2. the [`copy`] engine fetches the manifest **by digest** through the [`registry`]
//!    client, streams every blob it reaches into the [`store`] (hashed on the way, with
//!    [`digest`]), then writes the manifests, then the image and tag [`records`];
//! 3. a run ends with a snapshot of the registry's state, so restores can go back in time.
//!
//! The store is a directory or an S3 prefix ([`store::Backend`]); its format is specified
//! in `docs/format.md`. Queue [`message`]s carry the same work between the fan-out and
//! worker Lambdas.

#![deny(missing_docs)]

pub mod aws;
pub mod backup;
pub mod config;
pub mod copy;
pub mod digest;
pub mod ecr;
pub mod export;
pub mod fanout;
pub mod filter;
pub mod inventory;
pub mod manifest;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod names;
pub mod progress;
pub mod queue;
pub mod records;
pub mod redrive;
pub mod registry;
pub mod restore;
pub mod runtime_api;
pub mod source;
pub mod store;
pub mod trust;
pub mod verify;
pub mod worker;

pub use digest::Digest;
pub use names::{RepositoryName, Tag};
pub use registry::RegistryClient;
pub use store::Store;

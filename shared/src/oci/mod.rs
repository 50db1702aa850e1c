//! The vocabulary every layer speaks: content [`digest`]s, repository [`names`] and tags,
//! and OCI [`manifest`]s as far as this tool must read them (media types, the blobs and
//! child manifests they reference).
//!
//! Owns: parsing and validation of these values. May use: nothing else in this crate.

pub mod digest;
pub mod manifest;
pub mod names;

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
//! | [`retention`] | forget (keep policies) and prune (mark and sweep under a fence) | `store` |
//!
//! Dependencies run one way, top to bottom of that table; the small modules at the root
//! ([`stream`], [`failure`], [`filter`], [`error`], [`progress`], [`aws`], [`memory`],
//! [`metering`], [`cost`]) are used by all and use only `oci` (and `cost` uses `metering`).
//!
//! The store's format is specified in `docs/format.md`.

#![deny(missing_docs)]

pub mod aws;
pub mod backup;
pub mod copy;
pub mod cost;
pub mod error;
pub mod failure;
pub mod filter;
pub mod memory;
pub mod metering;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod retention;
pub mod source;
pub mod store;
pub mod stream;
pub mod wayback;

pub use oci::digest::Digest;
pub use oci::names::{RepositoryName, Tag};
pub use source::registry::RegistryClient;
pub use store::Store;

/// The table above, checked: a module may name (outside comments) only the modules its
/// row allows, so the layering cannot drift unnoticed.
#[cfg(test)]
mod layering {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Modules at the root that every layer may use.
    const BASE: &[&str] = &[
        "oci", "stream", "failure", "error", "filter", "progress", "aws", "memory", "metering",
        "cost",
    ];

    fn allowed(module: &str) -> Vec<&'static str> {
        let above: &[&str] = match module {
            "oci" => return vec![],
            "stream" | "failure" | "filter" | "error" | "progress" | "aws" | "memory"
            | "metering" => return vec!["oci"],
            "cost" => return vec!["oci", "metering"],
            "source" | "store" => &[],
            "copy" => &["source", "store"],
            "backup" => &["copy", "source", "store"],
            "pipeline" => &["backup", "copy", "source", "store"],
            "wayback" => &["copy", "source", "store"],
            "retention" => &["store"],
            other => panic!("module {other} is not in the table of lib.rs"),
        };
        BASE.iter().chain(above).copied().collect()
    }

    /// Every `crate::X` a file names outside comments.
    fn used(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
        out
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn dependencies_run_one_way() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut breaches = Vec::new();
        for path in all {
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first.as_os_str().to_str().unwrap().trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let allowed = allowed(module);
            for name in used(&std::fs::read_to_string(&path).unwrap()) {
                if name != module && !allowed.contains(&name.as_str()) {
                    breaches.push(format!("{} uses crate::{name}", relative.display()));
                }
            }
        }
        assert!(breaches.is_empty(), "{breaches:#?}");
    }

    /// The check sees a breach (so it cannot pass by reading nothing).
    #[test]
    fn a_use_of_a_higher_layer_is_seen() {
        let text = "use crate::oci::digest::Digest;\n// crate::copy in a comment\nuse crate::pipeline::queue::SqsQueue;";
        let names = used(text);
        assert!(names.contains("pipeline") && names.contains("oci"));
        assert!(!names.contains("copy"));
        assert!(!allowed("store").contains(&"pipeline"));
    }
}

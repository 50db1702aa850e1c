//! The worked example of `docs/format.md`, held to the tool: every file the document shows
//! is written to a directory store, and the real `ecr-backup` binary must read it as the
//! document says it does (`<!-- example-expect: … -->` blocks), find nothing wrong with it,
//! and resolve each tag to the digest the document states at each point in time.
//!
//! The markers, as the document defines them:
//!
//! - `<!-- example-file: KEY -->`, then a fenced block: a file of the store, whose bytes
//!   are the block's lines joined with `\n`, without a newline after the last one;
//! - `<!-- example-keys -->`, then a fenced block: every key of the store, one per line;
//! - `<!-- example-expect: ARGS -->`, then a fenced JSON block: `ecr-backup ARGS` exits 0
//!   and prints JSON holding every field shown (objects may have more fields, arrays have
//!   exactly the elements shown);
//! - `<!-- example-expect-error: ARGS -->`, then a fenced block: `ecr-backup ARGS` exits 2
//!   and prints that text on stderr.
//!
//! In `ARGS`, `STORE` is the store's directory and `OUT` a path that does not exist yet.
//! Only the CLI is run, so the test holds the document to what users see.

use std::collections::BTreeSet;
use std::path::{Component, Path};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::common::run_cli;

/// What the document's example consists of.
#[derive(Debug, Default)]
struct Example {
    /// Key → bytes, in document order.
    files: Vec<(String, Vec<u8>)>,
    /// The listing of every key.
    keys: Option<Vec<String>>,
    /// Commands and what they must print.
    expectations: Vec<Expectation>,
}

#[derive(Debug)]
enum Expectation {
    /// Exit 0 and print JSON that holds `expected`.
    Json { args: String, expected: Value },
    /// Exit 2 and print `text` on stderr.
    Error { args: String, text: String },
}

fn read_document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/format.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The fenced block opening on line `at`: its lines, and the line after its closing fence.
fn block<'a>(lines: &[&'a str], at: usize, marker: &str) -> (Vec<&'a str>, usize) {
    assert!(
        lines.get(at).is_some_and(|l| l.starts_with("```")),
        "docs/format.md line {}: `{marker}` must be followed by a fenced block",
        at
    );
    let mut end = at + 1;
    while lines.get(end).is_some_and(|l| *l != "```") {
        end += 1;
    }
    assert!(
        end < lines.len(),
        "docs/format.md line {}: the block after `{marker}` is not closed",
        at + 1
    );
    (lines[at + 1..end].to_vec(), end + 1)
}

fn parse(document: &str) -> Example {
    let lines: Vec<&str> = document.lines().collect();
    let mut example = Example::default();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        let Some(marker) = line
            .strip_prefix("<!-- example-")
            .and_then(|m| m.strip_suffix(" -->"))
        else {
            i += 1;
            continue;
        };
        let (content, next) = block(&lines, i + 1, line);
        if let Some(key) = marker.strip_prefix("file: ") {
            example
                .files
                .push((key.trim().to_owned(), content.join("\n").into_bytes()));
        } else if marker == "keys" {
            assert!(example.keys.is_none(), "two `example-keys` listings");
            example.keys = Some(
                content
                    .iter()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_owned)
                    .collect(),
            );
        } else if let Some(args) = marker.strip_prefix("expect: ") {
            let text = content.join("\n");
            let expected = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!(
                    "docs/format.md line {}: expected output is not JSON: {e}",
                    i + 1
                )
            });
            example.expectations.push(Expectation::Json {
                args: args.trim().to_owned(),
                expected,
            });
        } else if let Some(args) = marker.strip_prefix("expect-error: ") {
            example.expectations.push(Expectation::Error {
                args: args.trim().to_owned(),
                text: content.join("\n"),
            });
        } else {
            panic!("docs/format.md line {}: unknown marker {line}", i + 1);
        }
        i = next;
    }
    example
}

/// Checks that `actual` holds `expected`: every field of an expected object, with its
/// value; exactly the elements of an expected array; equal scalars.
fn holds(expected: &Value, actual: &Value, at: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let Some(found) = have.get(key) else {
                    return Err(format!("{at}.{key}: missing"));
                };
                holds(value, found, &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => {
            if want.len() != have.len() {
                return Err(format!(
                    "{at}: {} elements, the document shows {}",
                    have.len(),
                    want.len()
                ));
            }
            for (n, (w, h)) in want.iter().zip(have).enumerate() {
                holds(w, h, &format!("{at}[{n}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!(
            "{at}: the tool says {actual}, the document {expected}"
        )),
    }
}

/// The 64 hex digits of the SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The record fields a file's key determines, checked against its body: readers take
/// them from the key only, so the document must keep the two in agreement itself.
fn check_record_against_key(key: &str, bytes: &[u8]) {
    let body: Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{key}: the document's record is not JSON: {e}"));
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    if let Some(id) = key
        .strip_prefix("snapshots/")
        .and_then(|k| k.strip_suffix(".json"))
    {
        assert_eq!(body["version"], 2, "{key}: version");
        assert_eq!(field("id"), id, "{key}: id");
        return;
    }
    assert_eq!(body["version"], 1, "{key}: version");
    let rest = key
        .strip_prefix("repositories/")
        .unwrap_or_else(|| panic!("{key}: not a record key"));
    let (at, kind) = ["/_images/", "/_tags/", "/_deleted/"]
        .into_iter()
        .filter_map(|kind| rest.find(kind).map(|at| (at, kind)))
        .min()
        .unwrap_or_else(|| panic!("{key}: no record kind in the key"));
    assert_eq!(field("repository"), &rest[..at], "{key}: repository");
    let file = &rest[at + kind.len()..];
    let digest_of = |name: &str| {
        let hex = name
            .strip_prefix("sha256-")
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("{key}: bad file name {name}"));
        format!("sha256:{hex}")
    };
    match kind {
        "/_tags/" => {
            let (tag, name) = file.split_once('/').expect("tag/file");
            let (time, digest) = name.split_once('_').expect("time_digest");
            assert_eq!(field("tag"), tag, "{key}: tag");
            assert_eq!(field("digest"), digest_of(digest), "{key}: digest");
            let observed: DateTime<Utc> = field("observedAt")
                .parse()
                .unwrap_or_else(|e| panic!("{key}: observedAt: {e}"));
            assert_eq!(
                observed.format("%Y%m%dT%H%M%S%.6fZ").to_string(),
                time,
                "{key}: the key's time is observedAt truncated to the microsecond"
            );
        }
        _ => assert_eq!(field("digest"), digest_of(file), "{key}: digest"),
    }
}

#[test]
fn the_worked_example_of_the_format_document_reads_as_documented() {
    let example = parse(&read_document());

    // The example is all there, and its listing of keys is the files it shows.
    let keys: Vec<&str> = example.files.iter().map(|(k, _)| k.as_str()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "a key is shown twice: {keys:#?}");
    let listed: BTreeSet<&str> = example
        .keys
        .as_ref()
        .expect("an `example-keys` listing")
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        listed, unique,
        "the listing of keys and the files shown differ"
    );
    for needed in [
        "oci-layout",
        "index.json",
        "blobs/sha256/",
        "/_images/",
        "/_tags/",
        "snapshots/",
        "trees/sha256/",
    ] {
        assert!(
            keys.iter().any(|k| k.contains(needed)),
            "the example shows no {needed} file"
        );
    }
    assert!(
        example.expectations.len() >= 5
            && example
                .expectations
                .iter()
                .any(|e| matches!(e, Expectation::Error { .. })),
        "the example states too little of what the tool shows: {:#?}",
        example.expectations
    );

    // Written out, the files are a directory store; every digest is of the bytes shown.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (key, bytes) in &example.files {
        assert!(
            Path::new(key)
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{key} is not a relative key"
        );
        let path = store.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        if let Some(hex) = key.strip_prefix("blobs/sha256/") {
            assert_eq!(
                sha256_hex(bytes),
                hex,
                "{key}: the bytes shown do not hash to the key"
            );
        } else if let Some(hex) = key.strip_prefix("trees/sha256/") {
            assert_eq!(
                sha256_hex(bytes),
                hex,
                "{key}: the bytes shown do not hash to the key"
            );
            // Byte for byte what a writer writes for that state.
            let tree: ecr_backup_shared::store::records::Tree =
                serde_json::from_slice(bytes).unwrap();
            assert_eq!(
                &ecr_backup_shared::store::records::Tree::of(&tree.clone().into_state()).to_bytes()
                    [..],
                &bytes[..],
                "{key}: not the bytes the tool writes for this state"
            );
        } else if key.starts_with("repositories/") || key.starts_with("snapshots/") {
            check_record_against_key(key, bytes);
        } else {
            serde_json::from_slice::<Value>(bytes)
                .unwrap_or_else(|e| panic!("{key}: the document's file is not JSON: {e}"));
        }
    }

    // The tool reads it as the document says.
    let store_arg = store.to_str().expect("a UTF-8 temporary path");
    for (n, expectation) in example.expectations.iter().enumerate() {
        let (Expectation::Json { args, .. } | Expectation::Error { args, .. }) = expectation;
        let out = dir.path().join(format!("out-{n}"));
        let argv: Vec<&str> = args
            .split_whitespace()
            .map(|a| match a {
                "STORE" => store_arg,
                "OUT" => out.to_str().unwrap(),
                other => other,
            })
            .collect();
        let (code, stdout, stderr) = run_cli(&argv);
        let shown = format!("ecr-backup {args}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        match expectation {
            Expectation::Json { expected, .. } => {
                // The output first: a difference says more than an exit code (verify
                // exits 1 when it finds a problem, and prints it).
                let actual: Value = serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {shown}"));
                if let Err(difference) = holds(expected, &actual, "$") {
                    panic!("docs/format.md and the tool disagree: {difference}\n{shown}");
                }
                assert_eq!(code, 0, "{shown}");
            }
            Expectation::Error { text, .. } => {
                assert_eq!(code, 2, "{shown}");
                let text = text.replace("STORE", store_arg);
                assert!(
                    stderr.contains(&text),
                    "docs/format.md says the command prints {text:?}\n{shown}"
                );
            }
        }
    }
}

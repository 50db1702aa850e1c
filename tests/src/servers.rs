//! The local test servers, as started by `tests/scripts/start-servers.sh DIR`, and their
//! registries' access logs.
//!
//! Integration tests get the servers with [`TestServers::from_env`], which panics when the
//! environment is missing: a test that needs a server never skips silently. Tests share
//! the servers and run in parallel, so each test works under its own repository prefix
//! ([`unique_prefix`]) and filters log lines by it ([`blob_gets`]).
//!
//! # Access log format
//!
//! `docker-registry` 2.8 with `log.accesslog.disabled: false` writes one line per request
//! to its standard output, in Apache's combined log format, for example:
//!
//! ```text
//! 127.0.0.1 - - [27/Nov/2026:05:35:24 +0000] "GET /v2/t1/app/blobs/sha256:e3b0...b855 HTTP/1.1" 200 157 "" "ecr-backup/0.1.0"
//! ```
//!
//! The start script sends that output to `DIR/NAME.log` (the application log goes to
//! `DIR/NAME.err.log`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ecr_backup_shared::source::registry::{
    parse_registry_url, Credentials, RegistryClient, StaticCredentials,
};
use ecr_backup_shared::{Digest, RepositoryName};
use futures::StreamExt;

/// The user and password of the auth registry: what moto's ECR `GetAuthorizationToken`
/// returns for account 123456789012 (base64 of this text).
pub const AUTH_REGISTRY_CREDENTIALS: &str = "AWS:123456789012-auth-token";

/// Where the local test servers are.
#[derive(Debug, Clone)]
pub struct TestServers {
    /// Anonymous source registry, `http://127.0.0.1:PORT` (`ECR_BACKUP_TEST_REGISTRY`).
    pub registry: String,
    /// Its access log (`ECR_BACKUP_TEST_REGISTRY_LOG`).
    pub registry_log: PathBuf,
    /// A second anonymous registry, for restores (`ECR_BACKUP_TEST_TARGET_REGISTRY`).
    pub target_registry: String,
    /// Its access log (`ECR_BACKUP_TEST_TARGET_REGISTRY_LOG`).
    pub target_registry_log: PathBuf,
    /// Registry with HTTP Basic auth, standing in for ECR's data plane
    /// (`ECR_BACKUP_TEST_AUTH_REGISTRY`).
    pub auth_registry: String,
    /// Its access log (`ECR_BACKUP_TEST_AUTH_REGISTRY_LOG`).
    pub auth_registry_log: PathBuf,
    /// `user:password` the auth registry accepts (`ECR_BACKUP_TEST_AUTH_CREDENTIALS`,
    /// default [`AUTH_REGISTRY_CREDENTIALS`]).
    pub auth_credentials: String,
    /// moto server, `http://127.0.0.1:PORT` (`ECR_BACKUP_TEST_MOTO`).
    pub moto: String,
}

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => panic!(
            "{name} is not set: start the test servers with tests/scripts/start-servers.sh DIR \
             and source DIR/env (the README's test command does this)"
        ),
    }
}

impl TestServers {
    /// Reads the servers from the environment written by `start-servers.sh`.
    ///
    /// # Panics
    ///
    /// When a variable is missing, with a message saying how to start the servers.
    pub fn from_env() -> TestServers {
        TestServers {
            registry: required("ECR_BACKUP_TEST_REGISTRY"),
            registry_log: required("ECR_BACKUP_TEST_REGISTRY_LOG").into(),
            target_registry: required("ECR_BACKUP_TEST_TARGET_REGISTRY"),
            target_registry_log: required("ECR_BACKUP_TEST_TARGET_REGISTRY_LOG").into(),
            auth_registry: required("ECR_BACKUP_TEST_AUTH_REGISTRY"),
            auth_registry_log: required("ECR_BACKUP_TEST_AUTH_REGISTRY_LOG").into(),
            auth_credentials: std::env::var("ECR_BACKUP_TEST_AUTH_CREDENTIALS")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| AUTH_REGISTRY_CREDENTIALS.to_owned()),
            moto: required("ECR_BACKUP_TEST_MOTO"),
        }
    }

    /// An anonymous client for the source registry.
    pub fn source_client(&self) -> RegistryClient {
        registry_client(&self.registry, Credentials::Anonymous)
    }

    /// An anonymous client for the target registry.
    pub fn target_client(&self) -> RegistryClient {
        registry_client(&self.target_registry, Credentials::Anonymous)
    }

    /// A client for the auth registry, logged in with the right credentials.
    pub fn auth_client(&self) -> RegistryClient {
        let credentials = Credentials::from_user_password(&self.auth_credentials)
            .expect("ECR_BACKUP_TEST_AUTH_CREDENTIALS must be user:password");
        registry_client(&self.auth_registry, credentials)
    }
}

/// A client for `url` (`http://host:port`) with fixed credentials.
///
/// # Panics
///
/// When `url` is not a registry URL.
pub fn registry_client(url: &str, credentials: Credentials) -> RegistryClient {
    let base = parse_registry_url(url).unwrap_or_else(|e| panic!("bad registry URL {url:?}: {e}"));
    RegistryClient::new(base, Arc::new(StaticCredentials(credentials)))
        .unwrap_or_else(|e| panic!("cannot build a client for {url}: {e}"))
}

/// Reads a whole blob into memory, checking its digest.
pub async fn read_blob(
    client: &RegistryClient,
    repo: &RepositoryName,
    digest: &Digest,
) -> anyhow::Result<Bytes> {
    let mut stream = client.get_blob(repo, digest).await?;
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    let out = out.freeze();
    let actual = crate::corpus::sha256(&out);
    anyhow::ensure!(
        &actual == digest,
        "blob {repo}@{digest} has digest {actual}"
    );
    Ok(out)
}

/// A repository prefix no other test uses: `t{8 random hex digits}/{name}`, with `name`
/// lowercased and anything not allowed in a repository name turned into `-`.
pub fn unique_prefix(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    // Separators may not start or end a component, nor repeat oddly.
    while clean.contains("--") {
        clean = clean.replace("--", "-");
    }
    let clean = clean.trim_matches('-');
    let id: u32 = rand::random();
    if clean.is_empty() {
        format!("t{id:08x}")
    } else {
        format!("t{id:08x}/{clean}")
    }
}

/// One blob GET found in an access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGet {
    /// The repository in the request path.
    pub repository: String,
    /// The blob asked for.
    pub digest: Digest,
    /// The HTTP status answered (200 or 307).
    pub status: u16,
}

/// Complete lines in a log (a line still being written is not counted); 0 if the file
/// does not exist. Take it before an operation and pass it to [`count_blob_gets`] after.
pub fn log_lines(log: &Path) -> usize {
    complete_lines(&read_log(log)).count()
}

/// Blob GETs answered with 200 or 307 in the access log after its first `since_line`
/// lines.
pub fn count_blob_gets(log: &Path, since_line: usize) -> usize {
    blob_gets(log, since_line).len()
}

/// Blob GETs answered with 200 or 307 after the first `since_line` lines of the access
/// log, in order. Filter by [`BlobGet::repository`] to see only a test's own requests.
pub fn blob_gets(log: &Path, since_line: usize) -> Vec<BlobGet> {
    complete_lines(&read_log(log))
        .skip(since_line)
        .filter_map(parse_blob_get)
        .filter(|g| g.status == 200 || g.status == 307)
        .collect()
}

/// Requests after the first `since_line` lines of the access log whose request line
/// contains every one of `needles` (path fragments: `"/referrers/"`, a test's prefix).
pub fn requests_containing(log: &Path, since_line: usize, needles: &[&str]) -> usize {
    complete_lines(&read_log(log))
        .skip(since_line)
        .filter(|line| {
            line.split('"')
                .nth(1)
                .is_some_and(|request| needles.iter().all(|n| request.contains(n)))
        })
        .count()
}

fn read_log(log: &Path) -> String {
    match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read access log {}: {e}", log.display()),
    }
}

fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end_matches(['\n', '\r']))
}

/// Parses `... "GET /v2/<name>/blobs/sha256:<hex> HTTP/1.1" <status> ...`.
fn parse_blob_get(line: &str) -> Option<BlobGet> {
    let request_start = line.find("\"GET ")? + 5;
    let rest = &line[request_start..];
    let request_end = rest.find('"')?;
    let request = &rest[..request_end];
    let path = request.split(' ').next()?;
    let path = path.split('?').next()?;
    let after = rest[request_end + 1..].trim_start();
    let status: u16 = after.split(' ').next()?.parse().ok()?;
    let name_and_blob = path.strip_prefix("/v2/")?;
    let (repository, digest) = name_and_blob.rsplit_once("/blobs/")?;
    let digest: Digest = digest.parse().ok()?;
    if repository.is_empty() {
        return None;
    }
    Some(BlobGet {
        repository: repository.to_owned(),
        digest,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_blob_gets_from_combined_log_lines() {
        let line = format!(
            "127.0.0.1 - - [27/Nov/2026:05:35:24 +0000] \"GET /v2/t1/team/app/blobs/sha256:{HEX} HTTP/1.1\" 200 157 \"\" \"ecr-backup/0.1.0\""
        );
        let g = parse_blob_get(&line).unwrap();
        assert_eq!(g.repository, "t1/team/app");
        assert_eq!(g.digest.hex(), HEX);
        assert_eq!(g.status, 200);
        for other in [
            format!(
                "127.0.0.1 - - [x] \"HEAD /v2/a/blobs/sha256:{HEX} HTTP/1.1\" 200 0 \"\" \"c\""
            ),
            format!(
                "127.0.0.1 - - [x] \"GET /v2/a/manifests/sha256:{HEX} HTTP/1.1\" 200 9 \"\" \"c\""
            ),
            "127.0.0.1 - - [x] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"c\"".to_owned(),
            "127.0.0.1 - - [x] \"PATCH /v2/a/blobs/uploads/u HTTP/1.1\" 202 0 \"\" \"c\""
                .to_owned(),
        ] {
            assert_eq!(parse_blob_get(&other), None, "{other}");
        }
    }

    #[test]
    fn counts_only_complete_successful_lines_after_a_mark() {
        let dir = std::env::temp_dir().join(format!("ebt-log-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("src.log");
        assert_eq!(log_lines(&log), 0);
        let get = |status: u16| {
            format!("127.0.0.1 - - [x] \"GET /v2/a/blobs/sha256:{HEX} HTTP/1.1\" {status} 1 \"\" \"c\"\n")
        };
        std::fs::write(
            &log,
            format!(
                "{}{}{}{}",
                get(200),
                get(404),
                get(307),
                get(200).trim_end()
            ),
        )
        .unwrap();
        assert_eq!(log_lines(&log), 3);
        assert_eq!(count_blob_gets(&log, 0), 2);
        assert_eq!(count_blob_gets(&log, 1), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unique_prefixes_are_valid_repository_names() {
        for name in ["backup_basic", "Restore Test", "--x--", ""] {
            let p = unique_prefix(name);
            format!("{p}/app")
                .parse::<ecr_backup_shared::RepositoryName>()
                .unwrap();
        }
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
    }
}

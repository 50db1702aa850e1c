//! A store in a local directory: the embedded default.
//!
//! Blobs are written to a temporary file under `tmp/` (same file system, so the final
//! rename is atomic), hashed while written, synced, and renamed into `blobs/` only after
//! their digest matched.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::{Backend, ByteStream, ObjectInfo, StoreError, WriteOutcome};
use crate::digest::{Digest, DigestVerifier};

/// Where temporary files live while they are written, relative to the root.
const TMP_DIR: &str = "tmp";

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// A backend rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirBackend { root: root.into() }
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys come from `Layout`, built from validated names; refuse anything else loudly.
        debug_assert!(
            !key.split('/').any(|c| c == ".." || c.is_empty()),
            "bad key {key}"
        );
        self.root.join(key)
    }

    async fn temp_file(&self, key: &str) -> Result<(PathBuf, tokio::fs::File), StoreError> {
        let dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| io("create directory for", TMP_DIR, source))?;
        let name = format!("{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|source| io("create temporary file for", key, source))?;
        Ok((path, file))
    }

    async fn commit(&self, tmp: &Path, key: &str) -> Result<(), StoreError> {
        let target = self.path(key);
        let parent = target.parent().expect("keys have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| io("create directory for", key, source))?;
        tokio::fs::rename(tmp, &target)
            .await
            .map_err(|source| io("rename into place", key, source))?;
        // Make the rename itself durable.
        if let Ok(d) = tokio::fs::File::open(parent).await {
            let _ = d.sync_all().await;
        }
        Ok(())
    }
}

fn io(op: &'static str, key: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        key: key.into(),
        source,
    }
}

#[async_trait]
impl Backend for DirBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io("stat", key, source)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(b) => Ok(Some(b.into())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io("read", key, source)),
        }
    }

    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        let file = match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound { key: key.into() })
            }
            Err(source) => return Err(io("open", key, source)),
        };
        Ok(Box::pin(ReaderStream::with_capacity(file, 256 * 1024)))
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let (tmp, mut file) = self.temp_file(key).await?;
        let result = async {
            file.write_all(&bytes).await?;
            file.sync_all().await
        }
        .await;
        if let Err(source) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io("write", key, source));
        }
        drop(file);
        self.commit(&tmp, key).await
    }

    async fn write_verified(
        &self,
        key: &str,
        digest: &Digest,
        size: Option<u64>,
        mut bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        if self.stat(key).await?.is_some() {
            return Ok(WriteOutcome::AlreadyExists);
        }
        let (tmp, file) = self.temp_file(key).await?;
        let mut file = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
        let mut verifier = DigestVerifier::new(digest.clone(), size);
        let result: Result<(), StoreError> = async {
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk.map_err(|source| StoreError::Source {
                    key: key.into(),
                    source,
                })?;
                verifier
                    .update(&chunk)
                    .map_err(|source| StoreError::Verify {
                        key: key.into(),
                        source,
                    })?;
                file.write_all(&chunk)
                    .await
                    .map_err(|source| io("write", key, source))?;
            }
            file.flush()
                .await
                .map_err(|source| io("write", key, source))?;
            verifier.finish().map_err(|source| StoreError::Verify {
                key: key.into(),
                source,
            })?;
            file.get_ref()
                .sync_all()
                .await
                .map_err(|source| io("sync", key, source))
        }
        .await;
        drop(file);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        // A concurrent writer may have won the race; its bytes are the same by construction.
        if self.stat(key).await?.is_some() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok(WriteOutcome::AlreadyExists);
        }
        self.commit(&tmp, key).await?;
        Ok(WriteOutcome::Written)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .expect("listing task panicked")
    }
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    let start_dir = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    let mut stack = vec![start_dir.to_owned()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(io("list", &rel, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| io("list", &rel, source))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if key == TMP_DIR {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|source| io("stat", &key, source))?;
            if meta.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push(key);
                }
            } else if key.starts_with(prefix) {
                let modified: DateTime<Utc> = meta
                    .modified()
                    .map(DateTime::<Utc>::from)
                    .unwrap_or_else(|_| Utc::now());
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified,
                });
            }
        }
    }
    Ok(out)
}

/// Reads a whole file-backed stream; used by tests and small helpers.
pub async fn collect(stream: ByteStream) -> std::io::Result<Vec<u8>> {
    stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dir_backend_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirBackend::new(dir.path().join("store"));
        super::super::run_conformance_suite(&backend).await;
        // Nothing partial is left behind after the suite's refused writes.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

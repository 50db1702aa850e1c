//! A store in a local directory: the embedded default.
//!
//! Blobs are written to a temporary file under `tmp/` (same file system, so the final
//! rename is atomic), hashed while written, synced, and renamed into `blobs/` only after
//! their digest matched.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::{Backend, ByteStream, ObjectInfo, StoreError, WriteOutcome};
use crate::metering::{RequestCounter, RequestCounts};
use crate::oci::digest::Digest;
use crate::stream::VerifyingStream;

/// Where temporary files live while they are written, relative to the root.
const TMP_DIR: &str = "tmp";

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
    /// Objects written, for the cost figures of a run.
    written: Arc<RequestCounter>,
}

impl DirBackend {
    /// A backend rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirBackend {
            root: root.into(),
            written: RequestCounter::shared(),
        }
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
        let (root, key) = (self.root.clone(), key.to_owned());
        let (path, file) = blocking(move || temp_file(&root, &key)).await?;
        Ok((path, tokio::fs::File::from_std(file)))
    }

    async fn commit(&self, tmp: &Path, key: &str) -> Result<(), StoreError> {
        let (target, tmp, key) = (self.path(key), tmp.to_owned(), key.to_owned());
        blocking(move || commit(&tmp, &target, &key)).await
    }
}

/// Runs file-system calls on the blocking pool, as one hand-off rather than one per call.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Creates a temporary file under `root/tmp/` for `key`.
fn temp_file(root: &Path, key: &str) -> Result<(PathBuf, std::fs::File), StoreError> {
    let dir = root.join(TMP_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| io("create directory for", TMP_DIR, source))?;
    let name = format!("{:016x}", rand::random::<u64>());
    let path = dir.join(name);
    let file = std::fs::File::create(&path)
        .map_err(|source| io("create temporary file for", key, source))?;
    Ok((path, file))
}

/// Renames a synced temporary file to `target`, durably.
fn commit(tmp: &Path, target: &Path, key: &str) -> Result<(), StoreError> {
    let parent = target.parent().expect("keys have a parent");
    std::fs::create_dir_all(parent).map_err(|source| io("create directory for", key, source))?;
    std::fs::rename(tmp, target).map_err(|source| io("rename into place", key, source))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Moves a synced temporary file to `target` only if nothing is there, atomically and
/// durably: `AlreadyExists` when another writer's object is there (left untouched).
fn commit_new(tmp: &Path, target: &Path, key: &str) -> Result<WriteOutcome, StoreError> {
    let parent = target.parent().expect("keys have a parent");
    std::fs::create_dir_all(parent).map_err(|source| io("create directory for", key, source))?;
    match rename_noreplace(tmp, target) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Ok(WriteOutcome::AlreadyExists);
        }
        Err(source) => return Err(io("move into place", key, source)),
    }
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(WriteOutcome::Written)
}

/// `rename` that fails with `AlreadyExists` instead of replacing the target: Linux's
/// `renameat2(RENAME_NOREPLACE)`, or, on file systems (and systems) without it, a hard
/// link (which never replaces) followed by removing the temporary name.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
        };
        let (from_c, to_c) = (c(from)?, c(to)?);
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {}
            _ => return Err(e),
        }
    }
    std::fs::hard_link(from, to)?;
    let _ = std::fs::remove_file(from);
    Ok(())
}

/// Chunks of a blob in flight between the verifying task and the writing thread. Hyper
/// hands over reads of up to about 400 KiB, so this bounds a blob's buffers to about
/// 3 MiB; 8 kept the writer busy where 2 left it waiting (see docs/performance.md).
const WRITE_QUEUE: usize = 8;

/// Bytes written before the kernel is asked to start writing them to disk. Without it
/// the whole blob waited in the page cache for the final sync: 0.31 s after the last byte
/// of a 500 MiB layer, a quarter of the transfer (see docs/performance.md).
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Starts writing `len` bytes at `offset` back to disk without waiting for them, so that
/// the sync after the last byte has little left to do. Only a hint: the sync still decides.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call, which reads no memory of ours;
    // a failure only means the final sync does all the work, as without the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as _,
            len as _,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// What the verifying task sends to the writing thread.
enum Chunk {
    /// The next bytes, already hashed.
    Data(Bytes),
    /// Every byte arrived and matched the digest: sync and rename into place.
    Commit,
}

/// The writing half of [`DirBackend::write_verified`], on a blocking thread: it owns the
/// temporary file from creation to rename, so chunks are written without another copy
/// and the whole write costs one hand-off to the blocking pool, not one per file call.
/// Without a `Commit` (the stream failed or did not verify) it removes the temporary
/// file and returns `None`.
fn write_blocking(
    root: &Path,
    target: &Path,
    key: &str,
    mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<Option<WriteOutcome>, StoreError> {
    let (tmp, mut file) = temp_file(root, key)?;
    let result = (|| {
        let (mut written, mut submitted) = (0u64, 0u64);
        loop {
            match chunks.blocking_recv() {
                Some(Chunk::Data(bytes)) => {
                    file.write_all(&bytes)
                        .map_err(|source| io("write", key, source))?;
                    written += bytes.len() as u64;
                    if written - submitted >= WRITEBACK_STEP {
                        start_writeback(&file, submitted, written - submitted);
                        submitted = written;
                    }
                }
                Some(Chunk::Commit) => break,
                None => return Ok(None),
            }
        }
        file.sync_all().map_err(|source| io("sync", key, source))?;
        // Create-only in one step: a concurrent writer that got there first keeps its
        // object, and this one learns it lost (a check, then a rename, would let the
        // loser replace the winner's file).
        commit_new(&tmp, target, key).map(Some)
    })();
    drop(file);
    if !matches!(result, Ok(Some(WriteOutcome::Written))) {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
        self.commit(&tmp, key).await?;
        self.written.object_written();
        Ok(())
    }

    async fn write_verified(
        &self,
        key: &str,
        digest: &Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        if self.stat(key).await?.is_some() {
            return Ok(WriteOutcome::AlreadyExists);
        }
        let (sender, chunks) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let writer = {
            let (root, target, key) = (self.root.clone(), self.path(key), key.to_owned());
            tokio::task::spawn_blocking(move || write_blocking(&root, &target, &key, chunks))
        };
        let mut bytes = VerifyingStream::new(bytes, digest.clone(), size);
        let result: Result<(), StoreError> = async {
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk.map_err(|e| StoreError::verifying(key, e))?;
                if sender.send(Chunk::Data(chunk)).await.is_err() {
                    // The writer failed; its error is returned below.
                    return Ok(());
                }
            }
            // The stream ended without an error: every byte matched.
            let _ = sender.send(Chunk::Commit).await;
            Ok(())
        }
        .await;
        drop(sender);
        // Wait for the writer even after a failure here: it removes its temporary file.
        let written = match writer.await {
            Ok(written) => written,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        result?;
        let outcome = written?.ok_or_else(|| {
            io(
                "write",
                key,
                std::io::Error::other("the writer stopped before the end of the blob"),
            )
        })?;
        if outcome == WriteOutcome::Written {
            self.written.object_written();
        }
        Ok(outcome)
    }

    fn requests(&self) -> RequestCounts {
        self.written.snapshot()
    }

    async fn remove_leftovers(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        let root = self.root.clone();
        blocking(move || remove_idle_temporaries(&root, idle)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let root = self.root.clone();
        let keys = keys.to_vec();
        blocking(move || {
            for key in &keys {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("delete", key, e)),
                }
                // Empty directories are left by nothing else; tidy them up to the root
                // (a directory a concurrent writer just filled is not empty and stays).
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if d == root || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .expect("listing task panicked")
    }
}

/// Removes files under `root/tmp/` not modified for `idle`. A write in progress touches
/// its file with every chunk, and a stalled download fails within its read timeout (and
/// then removes its own file), so an idle file belongs to a process that was killed.
fn remove_idle_temporaries(root: &Path, idle: std::time::Duration) -> Result<u64, StoreError> {
    let dir = root.join(TMP_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io("list", TMP_DIR, source)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|source| io("list", TMP_DIR, source))?;
        let idle_for = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        // Unknown age (a clock set back, a file gone): left alone.
        if idle_for.is_none_or(|d| d < idle) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            // Another process tidied it first.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                let name = format!("{TMP_DIR}/{}", entry.file_name().to_string_lossy());
                return Err(io("remove", &name, source));
            }
        }
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[tokio::test]
    async fn only_idle_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirBackend::new(dir.path().join("store"));
        assert_eq!(
            backend
                .remove_leftovers(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "no tmp/ yet"
        );
        let tmp = dir.path().join("store/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let old = std::fs::File::create(tmp.join("killed")).unwrap();
        old.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
            .unwrap();
        std::fs::write(tmp.join("in-progress"), b"partial").unwrap();
        std::fs::create_dir_all(dir.path().join("store/blobs/sha256")).unwrap();
        let blob = dir.path().join("store/blobs/sha256/old");
        std::fs::File::create(&blob)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
            .unwrap();

        let removed = backend
            .remove_leftovers(Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert!(!tmp.join("killed").exists());
        assert!(
            tmp.join("in-progress").exists(),
            "a recent file may be in use"
        );
        assert!(blob.exists(), "only tmp/ is tidied");
    }
}

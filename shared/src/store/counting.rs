//! [`CountingBackend`]: a decorator that counts the requests a store receives, by kind
//! and by the top-level prefix of their key, so that a benchmark or a test can show what a
//! command asked of the store (and that an unchanged run asks almost nothing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, ByteStream, ObjectInfo, StoreError, WriteOutcome};
use crate::oci::digest::Digest;

/// Keys one S3 `ListObjectsV2` request returns at most.
pub const LIST_PAGE_KEYS: u64 = 1000;

/// Requests of one kind to one prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `stat`: an S3 `HeadObject`.
    pub heads: u64,
    /// `read` and `open`: an S3 `GetObject`.
    pub gets: u64,
    /// `write` and `write_verified`: an S3 `PutObject` (or a multipart upload).
    pub puts: u64,
    /// `list` calls.
    pub lists: u64,
    /// Keys those listings returned.
    pub listed_keys: u64,
    /// The `ListObjectsV2` pages those listings cost on S3 (at least one per call).
    pub list_pages: u64,
    /// Keys deleted (`delete`: S3 `DeleteObjects`, up to 1,000 keys per request).
    pub deletes: u64,
}

impl Counts {
    /// Every request, listing pages counted as S3 counts them.
    pub fn requests(&self) -> u64 {
        self.heads + self.gets + self.puts + self.list_pages
    }

    fn add(&mut self, other: &Counts) {
        self.heads += other.heads;
        self.gets += other.gets;
        self.puts += other.puts;
        self.lists += other.lists;
        self.listed_keys += other.listed_keys;
        self.list_pages += other.list_pages;
        self.deletes += other.deletes;
    }
}

/// Wraps a backend and counts what is asked of it.
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    counts: Mutex<BTreeMap<String, Counts>>,
    reads: Mutex<Vec<String>>,
}

impl CountingBackend {
    /// Counts the requests to `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Arc<CountingBackend> {
        Arc::new(CountingBackend {
            inner,
            counts: Mutex::new(BTreeMap::new()),
            reads: Mutex::new(Vec::new()),
        })
    }

    /// The counts since the last call, by the key's first component (`repositories`,
    /// `snapshots`, `trees`, `blobs`, `index.json`, …), and forgets them.
    pub fn take(&self) -> BTreeMap<String, Counts> {
        std::mem::take(&mut self.counts.lock().expect("counts lock"))
    }

    /// The counts since the last call, all prefixes together, and forgets them.
    pub fn take_total(&self) -> Counts {
        let mut total = Counts::default();
        for c in self.take().values() {
            total.add(c);
        }
        total
    }

    /// The keys read (`read` or `open`) since the last call, in order, and forgets them.
    pub fn take_reads(&self) -> Vec<String> {
        std::mem::take(&mut self.reads.lock().expect("reads lock"))
    }

    fn note_read(&self, key: &str) {
        self.count(key, |c| c.gets += 1);
        self.reads.lock().expect("reads lock").push(key.to_owned());
    }

    fn count(&self, key: &str, f: impl FnOnce(&mut Counts)) {
        let top = key.split('/').next().unwrap_or(key).to_owned();
        f(self
            .counts
            .lock()
            .expect("counts lock")
            .entry(top)
            .or_default());
    }
}

#[async_trait]
impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.count(key, |c| c.heads += 1);
        self.inner.stat(key).await
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.note_read(key);
        self.inner.read(key).await
    }

    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.note_read(key);
        self.inner.open(key).await
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.count(key, |c| c.puts += 1);
        self.inner.write(key, bytes).await
    }

    async fn write_verified(
        &self,
        key: &str,
        digest: &Digest,
        size: Option<u64>,
        bytes: ByteStream,
    ) -> Result<WriteOutcome, StoreError> {
        self.count(key, |c| c.puts += 1);
        self.inner.write_verified(key, digest, size, bytes).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let listed = self.inner.list(prefix).await?;
        let keys = listed.len() as u64;
        self.count(prefix, |c| {
            c.lists += 1;
            c.listed_keys += keys;
            c.list_pages += keys.div_ceil(LIST_PAGE_KEYS).max(1);
        });
        Ok(listed)
    }

    async fn remove_leftovers(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        self.inner.remove_leftovers(idle).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            self.count(key, |c| c.deletes += 1);
        }
        self.inner.delete(keys).await
    }

    fn retries(&self) -> u64 {
        self.inner.retries()
    }
}

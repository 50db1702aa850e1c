//! Writing an export's files: into a directory or a tar beside the output path, blobs
//! streamed from the store and verified on the way, then renamed into place when whole.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use super::select::Entry;
use super::{ExportError, ExportFormat, ExportOptions};
use crate::oci::digest::Digest;
use crate::store::Store;
use crate::stream::{VerifiedStream, VerifyFailure};

/// Buffer between the tar builder (or a layout's file) and the disk.
const WRITE_BUFFER: usize = 1 << 20;

/// One file of the output: a blob from the store, or small bytes made here.
#[derive(Debug, Clone)]
pub(super) struct OutFile {
    /// Its path inside the output, `/`-separated.
    pub(super) path: String,
    /// Its size.
    pub(super) size: u64,
    /// The blob it holds, if it is one.
    pub(super) blob: Option<Digest>,
    /// Its bytes, when they are already in memory.
    pub(super) bytes: Option<Bytes>,
}

impl OutFile {
    /// A file made here (`index.json`, `manifest.json`, …).
    pub(super) fn small(path: impl Into<String>, bytes: Vec<u8>) -> OutFile {
        OutFile {
            path: path.into(),
            size: bytes.len() as u64,
            blob: None,
            bytes: Some(bytes.into()),
        }
    }

    /// The blob `entry`, written at `path`.
    pub(super) fn blob(path: String, entry: Entry) -> OutFile {
        OutFile {
            path,
            size: entry.size,
            blob: Some(entry.digest),
            bytes: entry.bytes,
        }
    }

    /// The directories above it, outermost first, each ending in `/`.
    fn parents(&self) -> impl Iterator<Item = &str> {
        self.path
            .match_indices('/')
            .map(|(end, _)| &self.path[..=end])
    }
}

/// Refuses an output path that is taken (an empty directory is fine for `oci-layout`).
pub(super) fn check_output(output: &Path, format: ExportFormat) -> Result<(), ExportError> {
    match std::fs::symlink_metadata(output) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExportError::write(output, source)),
        Ok(m) if m.is_dir() && format == ExportFormat::OciLayout => {
            let empty = std::fs::read_dir(output)
                .map_err(|source| ExportError::write(output, source))?
                .next()
                .is_none();
            if empty {
                Ok(())
            } else {
                Err(ExportError::OutputExists {
                    path: output.into(),
                })
            }
        }
        Ok(_) => Err(ExportError::OutputExists {
            path: output.into(),
        }),
    }
}

/// Writes the files to a sibling of the output, then renames it into place.
pub(super) async fn write_output(
    store: &Store,
    image: &str,
    options: &ExportOptions,
    files: Vec<OutFile>,
) -> Result<(), ExportError> {
    let output = options.output.clone();
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let partial = output.with_file_name(format!(
        ".{file_name}.partial-{:08x}",
        rand::random::<u32>()
    ));
    let is_dir = options.format == ExportFormat::OciLayout;
    let store = store.clone();
    let handle = tokio::runtime::Handle::current();
    let task_partial = partial.clone();
    let task_image = image.to_owned();
    // The tar crate writes synchronously: the whole write runs on a blocking thread and
    // pulls each blob's stream from the runtime.
    let result = tokio::task::spawn_blocking(move || {
        let write_err = |source| ExportError::write(&task_partial, source);
        let mut sink = Sink::create(&task_partial, is_dir).map_err(write_err)?;
        write_files(
            &mut sink,
            &store,
            &handle,
            &task_image,
            &task_partial,
            files,
        )?;
        sink.finish().map_err(write_err)
    })
    .await
    .expect("export task panicked");
    let result = result.and_then(|()| {
        std::fs::rename(&partial, &output).map_err(|source| ExportError::write(&output, source))
    });
    if result.is_err() {
        let _ = if is_dir {
            std::fs::remove_dir_all(&partial)
        } else {
            std::fs::remove_file(&partial)
        };
    }
    result
}

/// Writes every file, in order, with the directories above it, into `sink` (at `partial`).
fn write_files(
    sink: &mut Sink,
    store: &Store,
    handle: &tokio::runtime::Handle,
    image: &str,
    partial: &Path,
    files: Vec<OutFile>,
) -> Result<(), ExportError> {
    let write_err = |source| ExportError::write(partial, source);
    let mut dirs = BTreeSet::new();
    for file in files {
        for parent in file.parents() {
            if dirs.insert(parent.to_owned()) {
                sink.dir(parent).map_err(write_err)?;
            }
        }
        if let Some(bytes) = &file.bytes {
            sink.file(&file.path, file.size, &mut &bytes[..])
                .map_err(write_err)?;
            continue;
        }
        let digest = file.blob.clone().expect("a file has bytes or a blob");
        let stream = handle
            .block_on(store.open_blob(&digest))
            .map_err(|source| ExportError::store(image, source))?;
        let (verified, failure) = VerifiedStream::new(stream, digest.clone(), Some(file.size));
        let mut reader = BlockingReader {
            handle,
            stream: verified,
            chunk: Bytes::new(),
        };
        if let Err(source) = sink.file(&file.path, file.size, &mut reader) {
            return Err(corrupt_or(failure, image, &digest, || write_err(source)));
        }
    }
    Ok(())
}

/// The mismatch the stream found, if it found one; else `other` (the write failed).
fn corrupt_or(
    failure: VerifyFailure,
    image: &str,
    blob: &Digest,
    other: impl FnOnce() -> ExportError,
) -> ExportError {
    match failure.lock().expect("failure lock").take() {
        Some(source) => ExportError::corrupt(image, blob, source),
        None => other(),
    }
}

/// Reads an async byte stream from a blocking thread.
struct BlockingReader<'a> {
    handle: &'a tokio::runtime::Handle,
    stream: VerifiedStream,
    chunk: Bytes,
}

impl Read for BlockingReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(chunk) => self.chunk = chunk?,
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Where exported files go: a directory or a tar.
enum Sink {
    Dir(PathBuf),
    Tar(tar::Builder<BufWriter<std::fs::File>>),
}

impl Sink {
    /// A directory at `path` (made as files arrive), or a new tar file there.
    fn create(path: &Path, is_dir: bool) -> std::io::Result<Sink> {
        if is_dir {
            return Ok(Sink::Dir(path.into()));
        }
        let file = std::fs::File::create(path)?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(WRITE_BUFFER, file));
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(Sink::Tar(builder))
    }

    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        match self {
            Sink::Dir(root) => std::fs::create_dir_all(root.join(path)),
            Sink::Tar(builder) => {
                let mut header = header(tar::EntryType::Directory, 0, 0o755);
                builder.append_data(&mut header, path, std::io::empty())
            }
        }
    }

    /// Writes exactly `size` bytes from `reader`, which fails on a digest mismatch.
    fn file(&mut self, path: &str, size: u64, reader: &mut dyn Read) -> std::io::Result<()> {
        match self {
            Sink::Dir(root) => {
                std::fs::create_dir_all(&*root)?;
                let mut file =
                    BufWriter::with_capacity(WRITE_BUFFER, std::fs::File::create(root.join(path))?);
                let copied = std::io::copy(reader, &mut file)?;
                if copied != size {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{path}: {copied} bytes, expected {size}"),
                    ));
                }
                file.flush()
            }
            Sink::Tar(builder) => {
                let mut header = header(tar::EntryType::Regular, size, 0o644);
                builder.append_data(&mut header, path, reader)
            }
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Dir(_) => Ok(()),
            Sink::Tar(builder) => {
                let writer = builder.into_inner()?;
                let file = writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()
            }
        }
    }
}

/// A tar entry's header; no owner and time 0, so the same image gives the same bytes.
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_directories_above_a_file() {
        let file = OutFile::small("blobs/sha256/ab", Vec::new());
        assert_eq!(
            file.parents().collect::<Vec<_>>(),
            ["blobs/", "blobs/sha256/"]
        );
        assert_eq!(
            OutFile::small("index.json", Vec::new()).parents().count(),
            0
        );
    }
}

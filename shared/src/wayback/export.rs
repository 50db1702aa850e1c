//! Export: one image from a store into files other tools read: an OCI image layout (a
//! directory, or a tar of one) or an archive `docker load` accepts.
//!
//! Blobs stream from the store into the output and are verified on the way; a mismatch
//! fails the export. The output is written beside its final path and renamed into place
//! only when whole, so a failed export leaves nothing that looks usable.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::oci::digest::{Digest, DigestError};
use crate::oci::manifest::{self, ManifestError, OCI_INDEX};
use crate::oci::names::{RepositoryName, Tag};
use crate::store::{Layout, Store, StoreError};
use crate::wayback::inventory::{self, InventoryError, PointInTime};
use crate::wayback::restore::{VerifiedStream, VerifyFailure};

/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// The platform a `docker-archive` gets when an index offers it and none was asked for.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";
/// The annotation naming an image in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Why an export failed; names the image and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The image is not `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
    #[error("invalid image {text:?}: expected REPOSITORY:TAG or REPOSITORY@sha256:DIGEST")]
    InvalidReference {
        /// What was given.
        text: String,
    },
    /// Reading the store, or resolving `--as-of`/`--snapshot`, failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// No such tag or image in the store (at that point in time).
    #[error("{image} is not in {store} ({point})")]
    UnknownImage {
        /// The image asked for.
        image: String,
        /// The store.
        store: String,
        /// The point in time looked at.
        point: String,
    },
    /// Reading the store failed.
    #[error("exporting {image}: {source}")]
    Store {
        /// The image.
        image: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// A blob in the store does not match its digest.
    #[error("exporting {image}: blob {blob} is corrupt in the store: {source}")]
    Corrupt {
        /// The image.
        image: String,
        /// The corrupt blob.
        blob: Digest,
        /// The mismatch.
        #[source]
        source: DigestError,
    },
    /// A manifest could not be understood.
    #[error("exporting {image}: {source}")]
    Manifest {
        /// The image.
        image: String,
        /// The parser's complaint.
        #[source]
        source: ManifestError,
    },
    /// The platform asked for is not in the image.
    #[error("{image} has no platform {wanted}; it has: {}", available.join(", "))]
    NoSuchPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// The image has several platforms and none was chosen.
    #[error("{image} has several platforms ({}): choose one with --platform", available.join(", "))]
    AmbiguousPlatform {
        /// The image.
        image: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// The format cannot hold this kind of image.
    #[error("{image} cannot be exported as {format}: {reason}")]
    Unsupported {
        /// The image.
        image: String,
        /// The format.
        format: ExportFormat,
        /// Why.
        reason: String,
    },
    /// The output path is taken.
    #[error("{path} already exists; refusing to overwrite it")]
    OutputExists {
        /// The path.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> Self {
        ExportError::Inventory(InventoryError::Store(e))
    }
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// An OCI image layout directory.
    OciLayout,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// A tar in `docker save` format (`manifest.json`, config, layers), one platform.
    DockerArchive,
}

impl ExportFormat {
    /// Every format's name, as typed on the command line.
    pub const NAMES: [&'static str; 3] = ["oci-layout", "oci-archive", "docker-archive"];
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oci-layout" => Ok(ExportFormat::OciLayout),
            "oci-archive" => Ok(ExportFormat::OciArchive),
            "docker-archive" => Ok(ExportFormat::DockerArchive),
            _ => Err(format!(
                "unknown format {s:?}: expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExportFormat::OciLayout => "oci-layout",
            ExportFormat::OciArchive => "oci-archive",
            ExportFormat::DockerArchive => "docker-archive",
        })
    }
}

/// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReference {
    /// A tag, resolved through the store's tag view.
    Tag(RepositoryName, Tag),
    /// An image by digest.
    Digest(RepositoryName, Digest),
}

impl ImageReference {
    /// The repository.
    pub fn repository(&self) -> &RepositoryName {
        match self {
            ImageReference::Tag(r, _) | ImageReference::Digest(r, _) => r,
        }
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ExportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ExportError::InvalidReference { text: text.into() };
        if let Some((repo, digest)) = text.split_once('@') {
            return Ok(ImageReference::Digest(
                repo.parse().map_err(|_| invalid())?,
                digest.parse().map_err(|_| invalid())?,
            ));
        }
        let (repo, tag) = text.rsplit_once(':').ok_or_else(invalid)?;
        Ok(ImageReference::Tag(
            repo.parse().map_err(|_| invalid())?,
            tag.parse().map_err(|_| invalid())?,
        ))
    }
}

impl std::fmt::Display for ImageReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageReference::Tag(r, t) => write!(f, "{r}:{t}"),
            ImageReference::Digest(r, d) => write!(f, "{r}@{d}"),
        }
    }
}

/// Settings of one export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The output format.
    pub format: ExportFormat,
    /// Where to write (must not exist; an empty directory is accepted for `oci-layout`).
    pub output: PathBuf,
    /// `os/arch[/variant]`: export only that platform of a multi-platform image. Required
    /// for `docker-archive` when the image has several and no `linux/amd64`.
    pub platform: Option<String>,
    /// Which state of the store resolves a tag.
    pub point: PointInTime,
    /// The name given to the image inside the output: the OCI ref name annotation
    /// (default: the tag) or the docker archive's `RepoTags` entry (default
    /// `REPOSITORY:TAG`).
    pub ref_name: Option<String>,
}

/// What an export wrote (also its `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The image asked for.
    pub image: String,
    /// The digest exported (a platform's manifest when one was picked).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The platform picked, if any.
    pub platform: Option<String>,
    /// The format written.
    pub format: ExportFormat,
    /// Where.
    pub output: PathBuf,
    /// The name the image carries inside the output, if any.
    pub ref_name: Option<String>,
    /// Files written from blobs (manifests, configs, layers).
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Wall time, in seconds.
    pub elapsed_seconds: f64,
}

/// One blob to write, with its bytes when they are already in memory.
#[derive(Debug, Clone)]
struct Entry {
    digest: Digest,
    size: u64,
    bytes: Option<Bytes>,
}

/// A manifest picked for export, with its bytes.
#[derive(Debug, Clone)]
struct Picked {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
    platform: Option<String>,
}

/// Exports one image of `store`.
pub async fn export(
    store: &Store,
    image: &ImageReference,
    options: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let name = image.to_string();
    store.ensure_exists().await?;
    check_output(&options.output, options.format)?;

    let digest = resolve(store, image, &options.point).await?;
    let mut picked = read_manifest(store, &name, &digest, None).await?;
    let want_one = options.format == ExportFormat::DockerArchive || options.platform.is_some();
    if want_one {
        picked = pick_platform(store, &name, picked, options.platform.as_deref()).await?;
    }
    let ref_name = match (&options.ref_name, image, options.format) {
        (Some(r), _, _) => Some(r.clone()),
        (None, ImageReference::Tag(_, t), ExportFormat::OciLayout | ExportFormat::OciArchive) => {
            Some(t.to_string())
        }
        (None, ImageReference::Tag(r, t), ExportFormat::DockerArchive) => Some(format!("{r}:{t}")),
        (None, ImageReference::Digest(..), _) => None,
    };

    let files = match options.format {
        ExportFormat::OciLayout | ExportFormat::OciArchive => {
            oci_files(store, &name, &picked, ref_name.as_deref()).await?
        }
        ExportFormat::DockerArchive => {
            docker_files(store, &name, &picked, ref_name.as_deref()).await?
        }
    };
    let blobs = files.iter().filter(|f| f.blob.is_some()).count() as u64;
    let bytes = files
        .iter()
        .filter(|f| f.blob.is_some())
        .map(|f| f.size)
        .sum();
    write_output(store, &name, options, files).await?;
    Ok(ExportReport {
        image: name,
        digest: picked.digest,
        media_type: picked.media_type,
        platform: picked.platform,
        format: options.format,
        output: options.output.clone(),
        ref_name,
        blobs,
        bytes,
        elapsed_seconds: started.elapsed().as_millis() as f64 / 1000.0,
    })
}

fn check_output(output: &Path, format: ExportFormat) -> Result<(), ExportError> {
    match std::fs::symlink_metadata(output) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExportError::Write {
            path: output.into(),
            source,
        }),
        Ok(m) if m.is_dir() && format == ExportFormat::OciLayout => {
            let empty = std::fs::read_dir(output)
                .map_err(|source| ExportError::Write {
                    path: output.into(),
                    source,
                })?
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

/// The digest the reference names, checked to be backed up.
async fn resolve(
    store: &Store,
    image: &ImageReference,
    point: &PointInTime,
) -> Result<Digest, ExportError> {
    let repo = image.repository();
    let catalog = store.catalog(Some(repo)).await?;
    let unknown = || ExportError::UnknownImage {
        image: image.to_string(),
        store: store.location(),
        point: point.to_string(),
    };
    let digest = match image {
        ImageReference::Digest(_, d) => d.clone(),
        ImageReference::Tag(_, tag) => {
            let view = inventory::view_at(store, &catalog, point).await?;
            view.tags
                .get(&(repo.clone(), tag.clone()))
                .cloned()
                .ok_or_else(unknown)?
        }
    };
    // Only images whose record exists are whole in the store.
    if !catalog
        .get(repo)
        .is_some_and(|c| c.images.contains_key(&digest))
    {
        return Err(unknown());
    }
    Ok(digest)
}

async fn read_manifest(
    store: &Store,
    image: &str,
    digest: &Digest,
    platform: Option<String>,
) -> Result<Picked, ExportError> {
    let bytes = match store.read_blob(digest).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(ExportError::Store {
                image: image.into(),
                source: StoreError::NotFound {
                    key: Layout::blob(digest),
                },
            })
        }
        Err(StoreError::Verify { source, .. }) => {
            return Err(ExportError::Corrupt {
                image: image.into(),
                blob: digest.clone(),
                source,
            })
        }
        Err(source) => {
            return Err(ExportError::Store {
                image: image.into(),
                source,
            })
        }
    };
    let parsed = manifest::parse(digest, &bytes, None).map_err(|source| ExportError::Manifest {
        image: image.into(),
        source,
    })?;
    Ok(Picked {
        digest: digest.clone(),
        media_type: parsed.media_type,
        bytes,
        platform,
    })
}

/// True if `have` (`os/arch[/variant]`) satisfies `wanted`; a variant is compared only
/// when asked for.
fn platform_matches(wanted: &str, have: &str) -> bool {
    let w: Vec<&str> = wanted.split('/').collect();
    let h: Vec<&str> = have.split('/').collect();
    w.len() >= 2
        && h.len() >= 2
        && w[0] == h[0]
        && w[1] == h[1]
        && (w.len() < 3 || h.get(2) == w.get(2))
}

/// Descends from an index to the one manifest of the wanted platform.
async fn pick_platform(
    store: &Store,
    image: &str,
    mut picked: Picked,
    wanted: Option<&str>,
) -> Result<Picked, ExportError> {
    for _ in 0..MAX_INDEX_DEPTH {
        let parsed = manifest::parse(&picked.digest, &picked.bytes, Some(&picked.media_type))
            .map_err(|source| ExportError::Manifest {
                image: image.into(),
                source,
            })?;
        if !parsed.is_index() {
            return Ok(picked);
        }
        // Attestations sit in indexes as unknown/unknown; they are not platforms.
        let children: Vec<_> = parsed
            .manifests
            .iter()
            .filter(|m| m.platform.as_deref() != Some("unknown/unknown"))
            .collect();
        let available: Vec<String> = children
            .iter()
            .map(|m| m.platform.clone().unwrap_or_else(|| "(unnamed)".into()))
            .collect();
        let matching = |w: &str| -> Vec<_> {
            children
                .iter()
                .filter(|m| {
                    m.platform
                        .as_deref()
                        .is_some_and(|p| platform_matches(w, p))
                })
                .collect()
        };
        let chosen = match wanted {
            Some(w) => match matching(w).as_slice() {
                [one] => **one,
                [] => {
                    return Err(ExportError::NoSuchPlatform {
                        image: image.into(),
                        wanted: w.into(),
                        available,
                    })
                }
                _ => {
                    return Err(ExportError::AmbiguousPlatform {
                        image: image.into(),
                        available,
                    })
                }
            },
            None => match (matching(DEFAULT_PLATFORM).as_slice(), children.as_slice()) {
                ([one], _) => **one,
                (_, [one]) => *one,
                _ => {
                    return Err(ExportError::AmbiguousPlatform {
                        image: image.into(),
                        available,
                    })
                }
            },
        };
        picked = read_manifest(store, image, &chosen.digest, chosen.platform.clone()).await?;
    }
    Err(ExportError::Unsupported {
        image: image.into(),
        format: ExportFormat::DockerArchive,
        reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH}"),
    })
}

/// Every manifest and blob `root` reaches, once each, manifests with their bytes.
async fn reach(store: &Store, image: &str, root: &Picked) -> Result<Vec<Entry>, ExportError> {
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root.clone(), 0usize)];
    while let Some((m, depth)) = stack.pop() {
        if !seen.insert(m.digest.clone()) {
            continue;
        }
        let parsed =
            manifest::parse(&m.digest, &m.bytes, Some(&m.media_type)).map_err(|source| {
                ExportError::Manifest {
                    image: image.into(),
                    source,
                }
            })?;
        entries.push(Entry {
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            bytes: Some(m.bytes.clone()),
        });
        for child in &parsed.manifests {
            if depth + 1 > MAX_INDEX_DEPTH {
                return Err(ExportError::Unsupported {
                    image: image.into(),
                    format: ExportFormat::OciLayout,
                    reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH}"),
                });
            }
            let child = read_manifest(store, image, &child.digest, child.platform.clone()).await?;
            stack.push((child, depth + 1));
        }
        for blob in &parsed.blobs {
            if seen.insert(blob.digest.clone()) {
                let size = blob_size(store, image, &blob.digest, blob.size).await?;
                entries.push(Entry {
                    digest: blob.digest.clone(),
                    size,
                    bytes: None,
                });
            }
        }
    }
    Ok(entries)
}

/// The size a descriptor states, else the stored size; fails early when the blob is missing.
async fn blob_size(
    store: &Store,
    image: &str,
    digest: &Digest,
    declared: Option<u64>,
) -> Result<u64, ExportError> {
    let stored = store
        .blob_size(digest)
        .await
        .map_err(|source| ExportError::Store {
            image: image.into(),
            source,
        })?
        .ok_or_else(|| ExportError::Store {
            image: image.into(),
            source: StoreError::NotFound {
                key: Layout::blob(digest),
            },
        })?;
    Ok(declared.unwrap_or(stored))
}

/// One file of the output: a blob from the store, or small bytes made here.
#[derive(Debug, Clone)]
struct OutFile {
    path: String,
    size: u64,
    blob: Option<Digest>,
    bytes: Option<Bytes>,
}

impl OutFile {
    fn small(path: impl Into<String>, bytes: Vec<u8>) -> OutFile {
        OutFile {
            path: path.into(),
            size: bytes.len() as u64,
            blob: None,
            bytes: Some(bytes.into()),
        }
    }

    fn blob(path: String, entry: Entry) -> OutFile {
        OutFile {
            path,
            size: entry.size,
            blob: Some(entry.digest),
            bytes: entry.bytes,
        }
    }
}

async fn oci_files(
    store: &Store,
    image: &str,
    root: &Picked,
    ref_name: Option<&str>,
) -> Result<Vec<OutFile>, ExportError> {
    let mut files = vec![OutFile::small(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    for entry in reach(store, image, root).await? {
        files.push(OutFile::blob(
            format!("blobs/sha256/{}", entry.digest.hex()),
            entry,
        ));
    }
    let mut descriptor = serde_json::json!({
        "mediaType": root.media_type,
        "digest": root.digest.to_string(),
        "size": root.bytes.len(),
    });
    if let Some(name) = ref_name {
        descriptor["annotations"] = serde_json::json!({ REF_NAME_ANNOTATION: name });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor],
    });
    // index.json last: a layout is usable only once it is written.
    files.push(OutFile::small(
        "index.json",
        serde_json::to_vec_pretty(&index).expect("index serializes"),
    ));
    Ok(files)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    config: Option<ManifestDescriptor>,
    #[serde(default)]
    layers: Vec<ManifestDescriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDescriptor {
    media_type: Option<String>,
    digest: Digest,
    size: Option<u64>,
}

/// The file name of a layer in a docker archive; `docker load` detects the compression.
fn layer_file(digest: &Digest, media_type: Option<&str>) -> String {
    let media_type = media_type.unwrap_or_default();
    let extension = if media_type.ends_with("gzip") {
        "tar.gz"
    } else if media_type.ends_with("zstd") {
        "tar.zst"
    } else {
        "tar"
    };
    format!("{}.{extension}", digest.hex())
}

async fn docker_files(
    store: &Store,
    image: &str,
    picked: &Picked,
    repo_tag: Option<&str>,
) -> Result<Vec<OutFile>, ExportError> {
    let unsupported = |reason: &str| ExportError::Unsupported {
        image: image.into(),
        format: ExportFormat::DockerArchive,
        reason: reason.into(),
    };
    let parsed: ImageManifest = serde_json::from_slice(&picked.bytes)
        .map_err(|_| unsupported("its manifest has no config and layers"))?;
    let config = parsed
        .config
        .ok_or_else(|| unsupported("docker archives need a schema 2 or OCI image manifest"))?;
    let config_size = blob_size(store, image, &config.digest, config.size).await?;
    let config_file = format!("{}.json", config.digest.hex());

    let mut files = Vec::new();
    let mut layer_files = Vec::new();
    let mut written = std::collections::HashSet::new();
    for layer in &parsed.layers {
        let path = layer_file(&layer.digest, layer.media_type.as_deref());
        if written.insert(layer.digest.clone()) {
            let size = blob_size(store, image, &layer.digest, layer.size).await?;
            files.push(OutFile::blob(
                path.clone(),
                Entry {
                    digest: layer.digest.clone(),
                    size,
                    bytes: None,
                },
            ));
        }
        layer_files.push(path);
    }
    files.push(OutFile::blob(
        config_file.clone(),
        Entry {
            digest: config.digest.clone(),
            size: config_size,
            bytes: None,
        },
    ));
    let manifest = serde_json::json!([{
        "Config": config_file,
        "RepoTags": repo_tag.map(|t| vec![t.to_owned()]).unwrap_or_default(),
        "Layers": layer_files,
    }]);
    files.push(OutFile::small(
        "manifest.json",
        serde_json::to_vec(&manifest).expect("manifest serializes"),
    ));
    Ok(files)
}

/// Writes the files to a sibling of the output, then renames it into place.
async fn write_output(
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
        let mut sink = if is_dir {
            Sink::Dir(task_partial.clone())
        } else {
            let file =
                std::fs::File::create(&task_partial).map_err(|source| ExportError::Write {
                    path: task_partial.clone(),
                    source,
                })?;
            let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
            builder.mode(tar::HeaderMode::Deterministic);
            Sink::Tar(builder)
        };
        write_files(
            &mut sink,
            &store,
            &handle,
            &task_image,
            &task_partial,
            files,
        )?;
        sink.finish().map_err(|source| ExportError::Write {
            path: task_partial.clone(),
            source,
        })
    })
    .await
    .expect("export task panicked");
    let result = result.and_then(|()| {
        std::fs::rename(&partial, &output).map_err(|source| ExportError::Write {
            path: output.clone(),
            source,
        })
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

fn write_files(
    sink: &mut Sink,
    store: &Store,
    handle: &tokio::runtime::Handle,
    image: &str,
    partial: &Path,
    files: Vec<OutFile>,
) -> Result<(), ExportError> {
    let write_err = |source| ExportError::Write {
        path: partial.into(),
        source,
    };
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let mut parent = String::new();
        for part in file
            .path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .iter()
            .rev()
        {
            parent.push_str(part);
            parent.push('/');
            if dirs.insert(parent.clone()) {
                sink.dir(&parent).map_err(write_err)?;
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
            .map_err(|source| ExportError::Store {
                image: image.into(),
                source,
            })?;
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

fn corrupt_or(
    failure: VerifyFailure,
    image: &str,
    blob: &Digest,
    other: impl FnOnce() -> ExportError,
) -> ExportError {
    match failure.lock().expect("failure lock").take() {
        Some(source) => ExportError::Corrupt {
            image: image.into(),
            blob: blob.clone(),
            source,
        },
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
    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        match self {
            Sink::Dir(root) => std::fs::create_dir_all(root.join(path)),
            Sink::Tar(builder) => {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                header.set_mtime(0);
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
                    BufWriter::with_capacity(1 << 20, std::fs::File::create(root.join(path))?);
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
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                header.set_mode(0o644);
                header.set_mtime(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let r: ImageReference = "team/app:v1.0".parse().unwrap();
        assert_eq!(
            r,
            ImageReference::Tag("team/app".parse().unwrap(), "v1.0".parse().unwrap())
        );
        let d = Digest::of(b"x");
        let r: ImageReference = format!("team/app@{d}").parse().unwrap();
        assert_eq!(r, ImageReference::Digest("team/app".parse().unwrap(), d));
        for bad in ["team/app", "Team:x", "app:", "app@sha256:12", ":v1"] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_platforms() {
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(platform_matches("linux/arm64/v8", "linux/arm64/v8"));
        assert!(!platform_matches("linux/arm64/v7", "linux/arm64/v8"));
        assert!(!platform_matches("linux/amd64", "linux/arm64"));
        assert!(!platform_matches("linux", "linux/amd64"));
    }

    #[test]
    fn names_layer_files_by_compression() {
        let d = Digest::of(b"x");
        assert!(
            layer_file(&d, Some("application/vnd.oci.image.layer.v1.tar+gzip"))
                .ends_with(".tar.gz")
        );
        assert!(layer_file(
            &d,
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
        )
        .ends_with(".tar.gz"));
        assert!(layer_file(&d, Some("application/vnd.oci.image.layer.v1.tar")).ends_with(".tar"));
    }
}

//! Export: one image from a store into files other tools read: an OCI image layout (a
//! directory, or a tar of one) or an archive `docker load` accepts.
//!
//! Owns: choosing what an export holds (`select`: the reference resolved, a platform
//! picked, every blob reached), the file list of each format (`oci_archive`,
//! `docker_archive`) and writing those files out (`sink`). May use: `crate::oci`,
//! `crate::store`, `crate::wayback::inventory` (tags as of a point in time) and the root
//! modules (`crate::stream` verifies the bytes read); never the registry.
//!
//! Blobs stream from the store into the output and are verified on the way; a mismatch
//! fails the export. The output is written beside its final path and renamed into place
//! only when whole, so a failed export leaves nothing that looks usable.

mod docker_archive;
mod oci_archive;
mod select;
mod sink;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::oci::digest::{Digest, DigestError};
use crate::oci::manifest::ManifestError;
use crate::oci::names::{RepositoryName, Tag};
use crate::store::{Store, StoreError};
use crate::wayback::inventory::{InventoryError, PointInTime};

/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// The platform a `docker-archive` gets when an index offers it and none was asked for.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";
/// The annotation naming an image in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Why an export failed; names the image and what failed.
///
/// Each `Display` says only its own step and object; the cause is its `source()`, so
/// [`crate::error::error_chain`] prints it once.
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
    #[error("exporting {image}")]
    Store {
        /// The image.
        image: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// A blob in the store does not match its digest.
    #[error("exporting {image}: blob {blob} is corrupt in the store")]
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
    #[error("exporting {image}")]
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
    #[error("writing {path}")]
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

impl ExportError {
    /// Reading the store for `image` failed.
    fn store(image: &str, source: StoreError) -> Self {
        ExportError::Store {
            image: image.into(),
            source,
        }
    }

    /// The store holds `blob` of `image`, but its bytes do not match its digest.
    fn corrupt(image: &str, blob: &Digest, source: DigestError) -> Self {
        ExportError::Corrupt {
            image: image.into(),
            blob: blob.clone(),
            source,
        }
    }

    /// Writing `path` failed.
    fn write(path: &Path, source: std::io::Error) -> Self {
        ExportError::Write {
            path: path.into(),
            source,
        }
    }

    /// `image` nests indexes deeper than [`MAX_INDEX_DEPTH`].
    fn too_deep(image: &str, format: ExportFormat) -> Self {
        ExportError::Unsupported {
            image: image.into(),
            format,
            reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH}"),
        }
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
    /// Every format, in the order of [`ExportFormat::NAMES`].
    const ALL: [ExportFormat; 3] = [
        ExportFormat::OciLayout,
        ExportFormat::OciArchive,
        ExportFormat::DockerArchive,
    ];

    /// Every format's name, as typed on the command line.
    pub const NAMES: [&'static str; 3] = [
        Self::ALL[0].name(),
        Self::ALL[1].name(),
        Self::ALL[2].name(),
    ];

    /// The name typed on the command line (also its serialized form).
    const fn name(self) -> &'static str {
        match self {
            ExportFormat::OciLayout => "oci-layout",
            ExportFormat::OciArchive => "oci-archive",
            ExportFormat::DockerArchive => "docker-archive",
        }
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown format {s:?}: expected one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

/// Exports one image of `store`.
pub async fn export(
    store: &Store,
    image: &ImageReference,
    options: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let name = image.to_string();
    store.ensure_exists().await?;
    sink::check_output(&options.output, options.format)?;

    let digest = select::resolve(store, image, &options.point).await?;
    let mut picked = select::read_manifest(store, &name, &digest, None).await?;
    let want_one = options.format == ExportFormat::DockerArchive || options.platform.is_some();
    if want_one {
        picked = select::pick_platform(store, &name, picked, options.platform.as_deref()).await?;
    }
    let ref_name = options
        .ref_name
        .clone()
        .or_else(|| default_ref_name(image, options.format));

    let files = match options.format {
        ExportFormat::OciLayout | ExportFormat::OciArchive => {
            oci_archive::files(store, &name, &picked, ref_name.as_deref()).await?
        }
        ExportFormat::DockerArchive => {
            docker_archive::files(store, &name, &picked, ref_name.as_deref()).await?
        }
    };
    let (blobs, bytes) = files
        .iter()
        .filter(|f| f.blob.is_some())
        .fold((0, 0), |(n, total), f| (n + 1, total + f.size));
    sink::write_output(store, &name, options, files).await?;
    Ok(ExportReport {
        image: name,
        digest: picked.digest,
        media_type: picked.parsed.media_type,
        platform: picked.platform,
        format: options.format,
        output: options.output.clone(),
        ref_name,
        blobs,
        bytes,
        elapsed_seconds: started.elapsed().as_millis() as f64 / 1000.0,
    })
}

/// The name an image carries inside the output when none was given: the tag in an OCI
/// layout, `REPOSITORY:TAG` in a docker archive; none for an image asked for by digest.
fn default_ref_name(image: &ImageReference, format: ExportFormat) -> Option<String> {
    match (image, format) {
        (ImageReference::Tag(_, t), ExportFormat::OciLayout | ExportFormat::OciArchive) => {
            Some(t.to_string())
        }
        (ImageReference::Tag(r, t), ExportFormat::DockerArchive) => Some(format!("{r}:{t}")),
        (ImageReference::Digest(..), _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_chain;

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
    fn format_names_round_trip() {
        assert_eq!(
            ExportFormat::NAMES,
            ["oci-layout", "oci-archive", "docker-archive"]
        );
        for name in ExportFormat::NAMES {
            let format: ExportFormat = name.parse().unwrap();
            assert_eq!(format.to_string(), name);
            assert_eq!(serde_json::to_value(format).unwrap(), name);
        }
        let err = "oci".parse::<ExportFormat>().unwrap_err();
        assert!(
            err.contains("oci-layout, oci-archive, docker-archive"),
            "{err}"
        );
    }

    #[test]
    fn names_the_image_inside_the_output_by_default() {
        let tag: ImageReference = "team/app:v1".parse().unwrap();
        assert_eq!(
            default_ref_name(&tag, ExportFormat::OciArchive).as_deref(),
            Some("v1")
        );
        assert_eq!(
            default_ref_name(&tag, ExportFormat::DockerArchive).as_deref(),
            Some("team/app:v1")
        );
        let digest = ImageReference::Digest("team/app".parse().unwrap(), Digest::of(b"x"));
        assert_eq!(default_ref_name(&digest, ExportFormat::OciLayout), None);
    }

    #[test]
    fn errors_print_each_cause_once() {
        let blob = Digest::of(b"x");
        let e = ExportError::store(
            "team/app:v1",
            StoreError::NotFound {
                key: crate::store::Layout::blob(&blob),
            },
        );
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(e.to_string(), "exporting team/app:v1");
        assert_eq!(error_chain(&e), format!("exporting team/app:v1: {cause}"));

        let e = ExportError::write(
            Path::new("/out/app.tar"),
            std::io::Error::other("disk full"),
        );
        assert_eq!(error_chain(&e), "writing /out/app.tar: disk full");

        let mismatch = DigestError::SizeMismatch {
            digest: blob.clone(),
            expected: 2,
            actual: 1,
        };
        let cause = mismatch.to_string();
        let e = ExportError::corrupt("team/app:v1", &blob, mismatch);
        assert!(!e.to_string().contains(&cause), "{e}");
        assert_eq!(
            error_chain(&e),
            format!("exporting team/app:v1: blob {blob} is corrupt in the store: {cause}")
        );
    }
}

//! The files of a docker archive (`docker save` format, one platform): each layer once,
//! the config, and `manifest.json` listing them with the image's `RepoTags`.

use std::collections::HashSet;

use super::select::{self, Picked};
use super::sink::OutFile;
use super::{ExportError, ExportFormat};
use crate::oci::digest::Digest;
use crate::store::Store;

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

/// The files of an archive of the image manifest `picked`, tagged `repo_tag` if given.
pub(super) async fn files(
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
    let config_entry = select::blob_entry(store, image, &config.digest, config.size).await?;
    let config_file = format!("{}.json", config.digest.hex());

    let mut files = Vec::new();
    let mut layer_files = Vec::new();
    let mut written = HashSet::new();
    for layer in &parsed.layers {
        let path = layer_file(&layer.digest, layer.media_type.as_deref());
        if written.insert(layer.digest.clone()) {
            let entry = select::blob_entry(store, image, &layer.digest, layer.size).await?;
            files.push(OutFile::blob(path.clone(), entry));
        }
        layer_files.push(path);
    }
    files.push(OutFile::blob(config_file.clone(), config_entry));
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

#[cfg(test)]
mod tests {
    use super::*;

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

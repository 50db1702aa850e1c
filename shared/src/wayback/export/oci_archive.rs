//! The files of an OCI image layout (`oci-layout` as a directory, `oci-archive` as a tar):
//! `oci-layout`, every blob under `blobs/sha256/`, and `index.json` naming the image.

use super::select::{self, Picked};
use super::sink::OutFile;
use super::{ExportError, REF_NAME_ANNOTATION};
use crate::oci::manifest::OCI_INDEX;
use crate::store::Store;

/// The files of a layout holding `root` and all it reaches, named `ref_name` if given.
pub(super) async fn files(
    store: &Store,
    image: &str,
    root: &Picked,
    ref_name: Option<&str>,
) -> Result<Vec<OutFile>, ExportError> {
    let mut files = vec![OutFile::small(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    for entry in select::reach(store, image, root).await? {
        files.push(OutFile::blob(
            format!("blobs/sha256/{}", entry.digest.hex()),
            entry,
        ));
    }
    // index.json last: a layout is usable only once it is written.
    files.push(OutFile::small(
        "index.json",
        serde_json::to_vec_pretty(&index(root, ref_name)).expect("index serializes"),
    ));
    Ok(files)
}

/// The layout's `index.json`: one descriptor, of `root`, annotated with its name.
fn index(root: &Picked, ref_name: Option<&str>) -> serde_json::Value {
    let mut descriptor = serde_json::json!({
        "mediaType": root.parsed.media_type,
        "digest": root.digest.to_string(),
        "size": root.bytes.len(),
    });
    if let Some(name) = ref_name {
        descriptor["annotations"] = serde_json::json!({ REF_NAME_ANNOTATION: name });
    }
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor],
    })
}

//! Manifest media types and a tolerant parser that finds what a manifest references.
//!
//! Manifests are stored as the exact bytes received, so parsing is only used to find the
//! blobs and child manifests an image reaches. `oci-spec`'s strict types would refuse
//! Docker schema 1, artifact manifests and unknown fields that a backup must carry as they
//! are, so this parser reads only the descriptor fields and ignores everything else.

use serde::Deserialize;

use crate::oci::digest::{Digest, DigestError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1, signed.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1, unsigned.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// OCI artifact manifest (draft, still found in some registries).
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// Every manifest media type, as sent in `Accept` so that no registry converts a manifest.
pub const ALL_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
    OCI_ARTIFACT_MANIFEST,
];

/// Largest manifest accepted, as in the distribution spec's recommendation and ECR's limit.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why manifest bytes could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not JSON of any manifest shape.
    #[error("manifest {digest} is not valid JSON")]
    NotJson {
        /// The manifest's digest.
        digest: Digest,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {digest} is {size} bytes, over the 4 MiB limit")]
    TooLarge {
        /// The manifest's digest.
        digest: Digest,
        /// Its size.
        size: usize,
    },
    /// A descriptor inside carries an unusable digest.
    #[error("manifest {digest} references a bad digest")]
    BadReference {
        /// The manifest's digest.
        digest: Digest,
        /// What was wrong with the referenced digest.
        #[source]
        source: DigestError,
    },
    /// Neither a manifest nor an index by its fields or media type.
    #[error("manifest {digest} has unknown media type {media_type:?} and no layers or manifests")]
    UnknownType {
        /// The manifest's digest.
        digest: Digest,
        /// The media type found, if any.
        media_type: Option<String>,
    },
}

/// A reference from a manifest to a blob or another manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes, when the manifest states one (schema 1 does not).
    pub size: Option<u64>,
    /// Platform of a child manifest in an index, as `os/arch[/variant]`.
    pub platform: Option<String>,
}

/// What a parsed manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// Media type, from the bytes or from the response header.
    pub media_type: String,
    /// Child manifests (for an index or manifest list).
    pub manifests: Vec<Descriptor>,
    /// Config and layers (for an image manifest).
    pub blobs: Vec<Descriptor>,
    /// The subject this manifest refers to (signatures, SBOMs).
    pub subject: Option<Descriptor>,
}

impl ParsedManifest {
    /// True for an index or manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: Option<u64>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    schema_version: Option<u32>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    blobs: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    subject: Option<RawDescriptor>,
    #[serde(default)]
    fs_layers: Vec<RawFsLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFsLayer {
    blob_sum: String,
}

/// Parses manifest bytes (already verified against `digest`); `header_type` is the
/// `Content-Type` the registry sent, used when the bytes carry no `mediaType`.
pub fn parse(
    digest: &Digest,
    bytes: &[u8],
    header_type: Option<&str>,
) -> Result<ParsedManifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            digest: digest.clone(),
            size: bytes.len(),
        });
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::NotJson {
            digest: digest.clone(),
            source,
        })?;
    let descriptor = |r: RawDescriptor| -> Result<Descriptor, ManifestError> {
        Ok(Descriptor {
            media_type: r.media_type,
            digest: r
                .digest
                .parse()
                .map_err(|source| ManifestError::BadReference {
                    digest: digest.clone(),
                    source,
                })?,
            size: r.size,
            platform: r.platform.map(|p| {
                let mut s = format!(
                    "{}/{}",
                    p.os.unwrap_or_default(),
                    p.architecture.unwrap_or_default()
                );
                if let Some(v) = p.variant {
                    s.push('/');
                    s.push_str(&v);
                }
                s
            }),
        })
    };

    let media_type = raw
        .media_type
        .clone()
        .or_else(|| header_type.map(str::to_owned).filter(|t| !t.is_empty()))
        .or_else(|| {
            // OCI allows mediaType to be absent; infer it from the shape.
            if !raw.manifests.is_empty() {
                Some(OCI_INDEX.to_owned())
            } else if raw.config.is_some() {
                Some(OCI_MANIFEST.to_owned())
            } else if raw.schema_version == Some(1) {
                Some(DOCKER_SCHEMA1_SIGNED.to_owned())
            } else {
                None
            }
        });
    let Some(media_type) = media_type else {
        return Err(ManifestError::UnknownType {
            digest: digest.clone(),
            media_type: None,
        });
    };

    let mut blobs = Vec::new();
    if let Some(c) = raw.config {
        blobs.push(descriptor(c)?);
    }
    for l in raw.layers.into_iter().chain(raw.blobs) {
        blobs.push(descriptor(l)?);
    }
    for l in raw.fs_layers {
        blobs.push(Descriptor {
            media_type: None,
            digest: l
                .blob_sum
                .parse()
                .map_err(|source| ManifestError::BadReference {
                    digest: digest.clone(),
                    source,
                })?,
            size: None,
            platform: None,
        });
    }
    let manifests = raw
        .manifests
        .into_iter()
        .map(descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    let subject = raw.subject.map(descriptor).transpose()?;

    let known = ALL_MANIFEST_TYPES.contains(&media_type.as_str());
    if !known && blobs.is_empty() && manifests.is_empty() {
        return Err(ManifestError::UnknownType {
            digest: digest.clone(),
            media_type: Some(media_type),
        });
    }
    // Schema 1 lists a layer once per history entry; dedup keeps the copy plan small.
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|d| seen.insert(d.digest.clone()));
    Ok(ParsedManifest {
        media_type,
        manifests,
        blobs,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[{{"mediaType":"y","digest":"{}","size":3}}],"subject":{{"digest":"{}","size":1}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let p = parse(&Digest::of(m.as_bytes()), m.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.blobs[1].size, Some(3));
        assert_eq!(p.subject.as_ref().unwrap().digest.to_string(), d('c'));
        assert!(!p.is_index());
    }

    #[test]
    fn parses_index_with_platforms_and_infers_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":9,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d('a')
        );
        let p = parse(&Digest::of(m.as_bytes()), m.as_bytes(), None).unwrap();
        assert!(p.is_index());
        assert_eq!(p.manifests[0].platform.as_deref(), Some("linux/arm64/v8"));
    }

    #[test]
    fn refuses_non_json_huge_and_bad_references() {
        let dg = Digest::of(b"x");
        assert!(matches!(
            parse(&dg, b"not json", None),
            Err(ManifestError::NotJson { .. })
        ));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            parse(&dg, &big, None),
            Err(ManifestError::TooLarge { .. })
        ));
        let m = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:../x","size":1},"layers":[]}"#;
        assert!(matches!(
            parse(&dg, m.as_bytes(), None),
            Err(ManifestError::BadReference { .. })
        ));
        assert!(matches!(
            parse(&dg, b"{}", None),
            Err(ManifestError::UnknownType { .. })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A digest as a manifest might carry it: valid, or anything printable.
        fn any_digest() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-f0-9]{64}".prop_map(|h| format!("sha256:{h}")),
                "[ -~]{0,80}",
                Just("sha256:../../etc/passwd".to_owned()),
            ]
        }

        fn any_type() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                Just(Some(OCI_MANIFEST.to_owned())),
                Just(Some(OCI_INDEX.to_owned())),
                Just(Some(DOCKER_SCHEMA1.to_owned())),
                "[ -~]{0,40}".prop_map(Some),
            ]
        }

        proptest! {
            #[test]
            fn parse_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse(&Digest::of(&bytes), &bytes, None);
            }

            #[test]
            fn parse_never_panics_on_any_text(text in "\\PC{0,600}") {
                let _ = parse(&Digest::of(text.as_bytes()), text.as_bytes(), Some(OCI_MANIFEST));
            }

            /// Near-manifests: every field a manifest can have, valid or not. Whatever
            /// parses references only digests it was given, valid ones, each blob once.
            #[test]
            fn what_parses_references_only_valid_given_digests(
                media_type in any_type(),
                header in any_type(),
                schema in proptest::option::of(0u32..4),
                config in proptest::option::of(any_digest()),
                layers in proptest::collection::vec(any_digest(), 0..5),
                children in proptest::collection::vec(any_digest(), 0..4),
                fs_layers in proptest::collection::vec(any_digest(), 0..3),
                size in proptest::option::of(any::<u64>()),
            ) {
                let descriptor = |d: &String| serde_json::json!({"mediaType": "x", "digest": d, "size": size});
                let mut value = serde_json::json!({
                    "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
                    "manifests": children.iter().map(|d| serde_json::json!({"digest": d, "size": size,
                        "platform": {"os": "linux", "architecture": "arm64"}})).collect::<Vec<_>>(),
                    "fsLayers": fs_layers.iter().map(|d| serde_json::json!({"blobSum": d})).collect::<Vec<_>>(),
                });
                if let Some(t) = &media_type {
                    value["mediaType"] = t.clone().into();
                }
                if let Some(v) = schema {
                    value["schemaVersion"] = v.into();
                }
                if let Some(c) = &config {
                    value["config"] = descriptor(c);
                }
                let bytes = serde_json::to_vec(&value).unwrap();
                if let Ok(parsed) = parse(&Digest::of(&bytes), &bytes, header.as_deref()) {
                    let given: Vec<&String> = config.iter().chain(&layers).chain(&children).chain(&fs_layers).collect();
                    for d in parsed.blobs.iter().chain(&parsed.manifests) {
                        let text = d.digest.to_string();
                        prop_assert!(given.contains(&&text), "{text} was not in the manifest");
                        prop_assert_eq!(text.parse::<Digest>().ok(), Some(d.digest.clone()));
                    }
                    let unique: std::collections::HashSet<_> = parsed.blobs.iter().map(|b| &b.digest).collect();
                    prop_assert_eq!(unique.len(), parsed.blobs.len());
                    prop_assert_eq!(parsed.manifests.len(), children.len());
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(8))]

            #[test]
            fn parse_refuses_anything_over_4_mib(extra in 1usize..4096) {
                let bytes = vec![b' '; MAX_MANIFEST_BYTES + extra];
                let refused = matches!(
                    parse(&Digest::of(b"x"), &bytes, None),
                    Err(ManifestError::TooLarge { .. })
                );
                prop_assert!(refused);
            }
        }
    }
}

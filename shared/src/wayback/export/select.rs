//! What an export holds: the digest a reference names, the manifest of the platform asked
//! for, and every manifest and blob it reaches, each checked to be in the store.

use std::collections::HashSet;

use bytes::Bytes;

use super::{ExportError, ExportFormat, ImageReference, DEFAULT_PLATFORM, MAX_INDEX_DEPTH};
use crate::oci::digest::Digest;
use crate::oci::manifest::{self, ParsedManifest};
use crate::store::{Layout, Store, StoreError};
use crate::wayback::inventory::{self, PointInTime};

/// One blob to write, with its bytes when they are already in memory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The blob.
    pub(super) digest: Digest,
    /// Its size.
    pub(super) size: u64,
    /// Its bytes, for manifests (read to be parsed).
    pub(super) bytes: Option<Bytes>,
}

/// A manifest picked for export, with its bytes.
#[derive(Debug, Clone)]
pub(super) struct Picked {
    /// Its digest.
    pub(super) digest: Digest,
    /// Its bytes, as stored.
    pub(super) bytes: Bytes,
    /// What it references (and its media type).
    pub(super) parsed: ParsedManifest,
    /// The platform its index named it by, if it was picked from one.
    pub(super) platform: Option<String>,
}

/// The digest the reference names, checked to be backed up.
pub(super) async fn resolve(
    store: &Store,
    image: &ImageReference,
    point: &PointInTime,
) -> Result<Digest, ExportError> {
    let repo = image.repository();
    let listing = store.listing(Some(repo)).await?;
    let unknown = || ExportError::UnknownImage {
        image: image.to_string(),
        store: store.location(),
        point: point.to_string(),
    };
    let digest = match image {
        ImageReference::Digest(_, d) => d.clone(),
        ImageReference::Tag(_, tag) => {
            let view = inventory::view_at(store, &listing, point).await?;
            view.tags
                .get(&(repo.clone(), tag.clone()))
                .cloned()
                .ok_or_else(unknown)?
        }
    };
    // Only images whose record exists are whole in the store.
    if !listing
        .get(repo)
        .is_some_and(|c| c.images.contains_key(&digest))
    {
        return Err(unknown());
    }
    Ok(digest)
}

/// Reads and parses the manifest `digest`; `platform` is what its index called it.
pub(super) async fn read_manifest(
    store: &Store,
    image: &str,
    digest: &Digest,
    platform: Option<String>,
) -> Result<Picked, ExportError> {
    let bytes = match store.read_blob(digest).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(missing(image, digest)),
        Err(StoreError::Verify { source, .. }) => {
            return Err(ExportError::corrupt(image, digest, source))
        }
        Err(source) => return Err(ExportError::store(image, source)),
    };
    let parsed = manifest::parse(digest, &bytes, None).map_err(|source| ExportError::Manifest {
        image: image.into(),
        source,
    })?;
    Ok(Picked {
        digest: digest.clone(),
        bytes,
        parsed,
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
pub(super) async fn pick_platform(
    store: &Store,
    image: &str,
    mut picked: Picked,
    wanted: Option<&str>,
) -> Result<Picked, ExportError> {
    for _ in 0..MAX_INDEX_DEPTH {
        if !picked.parsed.is_index() {
            return Ok(picked);
        }
        // Attestations sit in indexes as unknown/unknown; they are not platforms.
        let children: Vec<_> = picked
            .parsed
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
        let ambiguous = || ExportError::AmbiguousPlatform {
            image: image.into(),
            available: available.clone(),
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
                _ => return Err(ambiguous()),
            },
            None => match (matching(DEFAULT_PLATFORM).as_slice(), children.as_slice()) {
                ([one], _) => **one,
                (_, [one]) => *one,
                _ => return Err(ambiguous()),
            },
        };
        let (digest, platform) = (chosen.digest.clone(), chosen.platform.clone());
        picked = read_manifest(store, image, &digest, platform).await?;
    }
    Err(ExportError::too_deep(image, ExportFormat::DockerArchive))
}

/// Every manifest and blob `root` reaches, once each, manifests with their bytes.
pub(super) async fn reach(
    store: &Store,
    image: &str,
    root: &Picked,
) -> Result<Vec<Entry>, ExportError> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root.clone(), 0usize)];
    while let Some((m, depth)) = stack.pop() {
        if !seen.insert(m.digest.clone()) {
            continue;
        }
        entries.push(Entry {
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            bytes: Some(m.bytes.clone()),
        });
        for child in &m.parsed.manifests {
            if depth + 1 > MAX_INDEX_DEPTH {
                return Err(ExportError::too_deep(image, ExportFormat::OciLayout));
            }
            let child = read_manifest(store, image, &child.digest, child.platform.clone()).await?;
            stack.push((child, depth + 1));
        }
        for blob in &m.parsed.blobs {
            if seen.insert(blob.digest.clone()) {
                entries.push(blob_entry(store, image, &blob.digest, blob.size).await?);
            }
        }
    }
    Ok(entries)
}

/// A blob read from the store as it is written: the size a descriptor states, else the
/// stored size; fails early when the blob is missing.
pub(super) async fn blob_entry(
    store: &Store,
    image: &str,
    digest: &Digest,
    declared: Option<u64>,
) -> Result<Entry, ExportError> {
    let stored = store
        .blob_size(digest)
        .await
        .map_err(|source| ExportError::store(image, source))?
        .ok_or_else(|| missing(image, digest))?;
    Ok(Entry {
        digest: digest.clone(),
        size: declared.unwrap_or(stored),
        bytes: None,
    })
}

/// The error for a blob the image needs and the store lacks.
fn missing(image: &str, digest: &Digest) -> ExportError {
    ExportError::store(
        image,
        StoreError::NotFound {
            key: Layout::blob(digest),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_platforms() {
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(platform_matches("linux/arm64/v8", "linux/arm64/v8"));
        assert!(!platform_matches("linux/arm64/v7", "linux/arm64/v8"));
        assert!(!platform_matches("linux/amd64", "linux/arm64"));
        assert!(!platform_matches("linux", "linux/amd64"));
    }
}

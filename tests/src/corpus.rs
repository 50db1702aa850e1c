//! A deterministic corpus of container images, pushed into a registry through the
//! project's own client.
//!
//! Everything is derived from a seed: the same seed gives the same blobs and manifest
//! digests, whatever the repository prefix. Layers are real gzip-compressed tars (stored
//! without compression, so large ones are quick to make), configs are real image configs
//! whose `rootfs.diff_ids` are the sha256 of the uncompressed tars.
//!
//! [`push_corpus`] pushes, under `PREFIX/`:
//!
//! | repository          | content                                                        |
//! |---------------------|----------------------------------------------------------------|
//! | `app`               | OCI manifests: tags `v1.0` + `latest` on one image, `release-2`, `build_3`, a 128-character tag, and an untagged image (pushed by digest only) |
//! | `team/app/api`      | Docker v2 schema 2 manifests: tags `1.0.0`, `latest`           |
//! | `multi`             | an OCI index of linux/amd64 + linux/arm64 OCI manifests, tag `v1` |
//! | `dockerlist`        | a Docker manifest list of two Docker v2 manifests, tag `v1`    |
//! | `big`               | one OCI image with a layer of `big_layer_mib` MiB, tag `v1` (skipped when 0) |
//!
//! Every image starts with the same two base layers, so blobs are shared across
//! repositories. The smaller building blocks ([`random_layer`], [`push_image`],
//! [`push_index`]) are public for benchmarks that need other shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ecr_backup_shared::oci::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use ecr_backup_shared::store::stream_of;
use ecr_backup_shared::{Digest, RegistryClient, RepositoryName, Tag};
use serde::Serialize;

/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Manifest flavour of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest (and OCI index for multi-platform images).
    Oci,
    /// Docker v2 schema 2 manifest (and Docker manifest list).
    Docker,
}

impl Format {
    /// Media type of an image manifest of this format.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    /// Media type of a multi-platform index of this format.
    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }

    fn layer_type(self, gzip: bool) -> &'static str {
        match (self, gzip) {
            (Format::Oci, true) => OCI_LAYER_GZIP,
            (Format::Oci, false) => OCI_LAYER_TAR,
            (Format::Docker, true) => DOCKER_LAYER_GZIP,
            (Format::Docker, false) => DOCKER_LAYER_TAR,
        }
    }
}

/// The platform of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// CPU architecture, as in Go (`amd64`, `arm64`).
    pub architecture: &'static str,
    /// Operating system.
    pub os: &'static str,
    /// CPU variant (`v8`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<&'static str>,
}

impl Platform {
    /// linux/amd64.
    pub const LINUX_AMD64: Platform = Platform {
        architecture: "amd64",
        os: "linux",
        variant: None,
    };
    /// linux/arm64/v8.
    pub const LINUX_ARM64: Platform = Platform {
        architecture: "arm64",
        os: "linux",
        variant: Some("v8"),
    };
}

/// One manifest pushed: an image, an index or a manifest list.
#[derive(Debug, Clone)]
pub struct CorpusImage {
    /// Where it was pushed.
    pub repository: RepositoryName,
    /// Digest of its manifest.
    pub digest: Digest,
    /// Its tags; empty for an image pushed by digest only.
    pub tags: Vec<Tag>,
    /// Media type of its manifest.
    pub media_type: String,
    /// The exact manifest bytes pushed.
    pub manifest_bytes: Bytes,
    /// Child manifests, for an index or manifest list (in order).
    pub children: Vec<Digest>,
    /// Every blob the manifest reaches, to its size: config and layers, and for an index
    /// the child manifests and their blobs. The manifest itself is not included.
    pub blobs: BTreeMap<Digest, u64>,
    /// The layer blobs among [`CorpusImage::blobs`].
    pub layers: BTreeSet<Digest>,
}

/// What [`push_corpus`] pushed.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Every top-level manifest pushed, tagged or not (child manifests of an index are in
    /// [`CorpusImage::children`]).
    pub images: Vec<CorpusImage>,
    /// Every unique blob, to its size: layers, configs, manifests and child manifests.
    pub unique_blobs: BTreeMap<Digest, u64>,
    /// Total size of the unique layer blobs.
    pub unique_layer_bytes: u64,
}

impl Corpus {
    /// Every tag, to the digest it points at.
    pub fn tags(&self) -> BTreeMap<(RepositoryName, Tag), Digest> {
        self.images
            .iter()
            .flat_map(|i| {
                i.tags
                    .iter()
                    .map(|t| ((i.repository.clone(), t.clone()), i.digest.clone()))
            })
            .collect()
    }

    /// Every repository pushed to.
    pub fn repositories(&self) -> BTreeSet<RepositoryName> {
        self.images.iter().map(|i| i.repository.clone()).collect()
    }

    /// The image a tag points at.
    pub fn image(&self, repository: &str, tag: &str) -> Option<&CorpusImage> {
        self.images.iter().find(|i| {
            i.repository.as_str() == repository && i.tags.iter().any(|t| t.as_str() == tag)
        })
    }

    /// Images pushed without a tag.
    pub fn untagged(&self) -> impl Iterator<Item = &CorpusImage> {
        self.images.iter().filter(|i| i.tags.is_empty())
    }

    /// Total size of every unique blob (manifests included).
    pub fn unique_bytes(&self) -> u64 {
        self.unique_blobs.values().sum()
    }

    fn from_images(images: Vec<CorpusImage>) -> Corpus {
        let mut unique_blobs = BTreeMap::new();
        let mut layers = BTreeSet::new();
        for image in &images {
            unique_blobs.insert(image.digest.clone(), image.manifest_bytes.len() as u64);
            unique_blobs.extend(image.blobs.iter().map(|(d, s)| (d.clone(), *s)));
            layers.extend(image.layers.iter().cloned());
        }
        let unique_layer_bytes = layers.iter().map(|d| unique_blobs[d]).sum();
        Corpus {
            images,
            unique_blobs,
            unique_layer_bytes,
        }
    }
}

/// How [`push_corpus`] builds the corpus.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// Repository prefix, such as `t1a2b` or `t1a2b/` (see
    /// [`crate::servers::unique_prefix`]); empty for none.
    pub prefix: String,
    /// Size of the layer of `PREFIX/big`, in MiB; 0 = no `big` repository.
    pub big_layer_mib: u64,
    /// Seed of every blob's content.
    pub seed: u64,
}

impl CorpusOptions {
    /// The options with a prefix and defaults: a 64 MiB big layer, seed 1.
    pub fn new(prefix: impl Into<String>) -> CorpusOptions {
        CorpusOptions {
            prefix: prefix.into(),
            big_layer_mib: 64,
            seed: 1,
        }
    }
}

/// The 128-character tag of `PREFIX/app`.
pub fn long_tag() -> Tag {
    let mut s = String::from("long_");
    while s.len() < 128 {
        s.push_str("0123456789abcdef-");
    }
    s.truncate(128);
    s.parse().expect("a valid 128-character tag")
}

/// `prefix/name`, for a prefix with or without a trailing `/`.
pub fn repository(prefix: &str, name: &str) -> Result<RepositoryName> {
    let prefix = prefix.trim_end_matches('/');
    let full = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    };
    full.parse()
        .with_context(|| format!("repository name {full:?}"))
}

fn tags(names: &[&str]) -> Vec<Tag> {
    names
        .iter()
        .map(|t| t.parse().expect("a valid tag"))
        .collect()
}

/// Mixes a seed with a stream number, so every blob gets its own content.
fn sub_seed(seed: u64, stream: u64) -> u64 {
    SplitMix64(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)).next_u64()
}

/// Pushes the whole corpus (see the module docs) into `client`'s registry.
pub async fn push_corpus(client: &RegistryClient, options: &CorpusOptions) -> Result<Corpus> {
    let p = options.prefix.as_str();
    let seed = options.seed;
    let (base0, base1) = (
        random_layer(sub_seed(seed, 1), 512 * KIB),
        random_layer(sub_seed(seed, 2), MIB),
    );
    let own = |n: u64| random_layer(sub_seed(seed, 100 + n), 16 * KIB + n * KIB);
    let with_base = |extra: Bytes| vec![base0.clone(), base1.clone(), extra];

    // The big layer is made on a blocking thread while the rest is pushed.
    let big_layer = (options.big_layer_mib > 0).then(|| {
        let (s, size) = (sub_seed(seed, 999), options.big_layer_mib * MIB);
        tokio::task::spawn_blocking(move || random_layer(s, size))
    });

    let app = repository(p, "app")?;
    let api = repository(p, "team/app/api")?;
    let multi = repository(p, "multi")?;
    let dockerlist = repository(p, "dockerlist")?;

    let app_images = async {
        let mut out = Vec::new();
        for (n, t) in [
            (1, tags(&["v1.0", "latest"])),
            (2, tags(&["release-2"])),
            (3, tags(&["build_3"])),
            (4, vec![long_tag()]),
            (5, vec![]),
        ] {
            out.push(push_image(client, &app, &t, &with_base(own(n)), Format::Oci).await?);
        }
        anyhow::Ok(out)
    };
    let api_images = async {
        let a = push_image(
            client,
            &api,
            &tags(&["1.0.0"]),
            &with_base(own(10)),
            Format::Docker,
        )
        .await?;
        let b = push_image(
            client,
            &api,
            &tags(&["latest"]),
            &with_base(own(11)),
            Format::Docker,
        )
        .await?;
        anyhow::Ok(vec![a, b])
    };
    let index_of = |repo: &RepositoryName, format: Format, first: u64| {
        let repo = repo.clone();
        let (l0, l1) = (with_base(own(first)), with_base(own(first + 1)));
        async move {
            let amd =
                push_image_for(client, &repo, &[], &l0, format, Platform::LINUX_AMD64).await?;
            let arm =
                push_image_for(client, &repo, &[], &l1, format, Platform::LINUX_ARM64).await?;
            let index = push_index(
                client,
                &repo,
                &tags(&["v1"]),
                &[(Platform::LINUX_AMD64, amd), (Platform::LINUX_ARM64, arm)],
                format,
            )
            .await?;
            anyhow::Ok(vec![index])
        }
    };
    let (app_images, api_images, multi_images, list_images) = tokio::try_join!(
        app_images,
        api_images,
        index_of(&multi, Format::Oci, 20),
        index_of(&dockerlist, Format::Docker, 30),
    )?;

    let mut images: Vec<CorpusImage> = [app_images, api_images, multi_images, list_images].concat();
    if let Some(big_layer) = big_layer {
        let big_layer = big_layer.await.context("making the big layer")?;
        let big = repository(p, "big")?;
        images.push(
            push_image(
                client,
                &big,
                &tags(&["v1"]),
                &with_base(big_layer),
                Format::Oci,
            )
            .await?,
        );
    }
    Ok(Corpus::from_images(images))
}

/// Pushes a one-layer OCI image of `layer_size` random bytes (a fresh seed), tagged `tag`.
pub async fn push_small_image(
    client: &RegistryClient,
    repo: &RepositoryName,
    tag: &str,
    layer_size: u64,
) -> Result<CorpusImage> {
    let tag: Tag = tag.parse()?;
    let layer = random_layer(rand::random(), layer_size);
    push_image(client, repo, &[tag], &[layer], Format::Oci).await
}

/// Pushes a linux/amd64 image made of `layers` (each a gzip-compressed or plain tar)
/// under every tag in `tags`, or by digest only when `tags` is empty. The config is
/// derived from the layers and the platform, so the same layers give the same digest.
pub async fn push_image(
    client: &RegistryClient,
    repo: &RepositoryName,
    tags: &[Tag],
    layers: &[Bytes],
    format: Format,
) -> Result<CorpusImage> {
    push_image_for(client, repo, tags, layers, format, Platform::LINUX_AMD64).await
}

/// [`push_image`] for a given platform.
pub async fn push_image_for(
    client: &RegistryClient,
    repo: &RepositoryName,
    tags: &[Tag],
    layers: &[Bytes],
    format: Format,
    platform: Platform,
) -> Result<CorpusImage> {
    // diff_ids mean reading every layer through gunzip: keep that off the async threads.
    let mut diff_ids = Vec::with_capacity(layers.len());
    for layer in layers {
        let layer = layer.clone();
        diff_ids.push(tokio::task::spawn_blocking(move || diff_id(&layer)).await??);
    }
    let config = image_config(&diff_ids, platform);
    let mut blobs = BTreeMap::new();
    let mut layer_digests = BTreeSet::new();
    let mut layer_descriptors = Vec::new();
    for layer in layers {
        let digest = push_blob_once(client, repo, layer.clone()).await?;
        layer_descriptors.push(Descriptor {
            media_type: format.layer_type(is_gzip(layer)).to_owned(),
            digest: digest.to_string(),
            size: layer.len() as u64,
            platform: None,
        });
        blobs.insert(digest.clone(), layer.len() as u64);
        layer_digests.insert(digest);
    }
    let config_digest = push_blob_once(client, repo, config.clone()).await?;
    blobs.insert(config_digest.clone(), config.len() as u64);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: format.manifest_type(),
        config: Descriptor {
            media_type: format.config_type().to_owned(),
            digest: config_digest.to_string(),
            size: config.len() as u64,
            platform: None,
        },
        layers: layer_descriptors,
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
    let digest = put_manifest(client, repo, tags, format.manifest_type(), bytes.clone()).await?;
    Ok(CorpusImage {
        repository: repo.clone(),
        digest,
        tags: tags.to_vec(),
        media_type: format.manifest_type().to_owned(),
        manifest_bytes: bytes,
        children: Vec::new(),
        blobs,
        layers: layer_digests,
    })
}

/// Pushes an OCI index or Docker manifest list of `children` (already pushed to `repo`,
/// usually by digest only) under `tags`, or by digest when `tags` is empty.
pub async fn push_index(
    client: &RegistryClient,
    repo: &RepositoryName,
    tags: &[Tag],
    children: &[(Platform, CorpusImage)],
    format: Format,
) -> Result<CorpusImage> {
    let mut blobs = BTreeMap::new();
    let mut layers = BTreeSet::new();
    let mut manifests = Vec::new();
    for (platform, child) in children {
        if &child.repository != repo {
            bail!(
                "child {} is in {}, not in {repo}",
                child.digest,
                child.repository
            );
        }
        manifests.push(Descriptor {
            media_type: child.media_type.clone(),
            digest: child.digest.to_string(),
            size: child.manifest_bytes.len() as u64,
            platform: Some(*platform),
        });
        blobs.insert(child.digest.clone(), child.manifest_bytes.len() as u64);
        blobs.extend(child.blobs.iter().map(|(d, s)| (d.clone(), *s)));
        layers.extend(child.layers.iter().cloned());
    }
    let index = ImageIndex {
        schema_version: 2,
        media_type: format.index_type(),
        manifests,
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&index)?);
    let digest = put_manifest(client, repo, tags, format.index_type(), bytes.clone()).await?;
    Ok(CorpusImage {
        repository: repo.clone(),
        digest,
        tags: tags.to_vec(),
        media_type: format.index_type().to_owned(),
        manifest_bytes: bytes,
        children: children.iter().map(|(_, c)| c.digest.clone()).collect(),
        blobs,
        layers,
    })
}

/// Pushes a blob unless the repository has it. Hashes once (with [`sha256`]) and
/// retries transient failures.
async fn push_blob_once(
    client: &RegistryClient,
    repo: &RepositoryName,
    bytes: Bytes,
) -> Result<Digest> {
    let digest = sha256(&bytes);
    if client
        .blob_exists(repo, &digest)
        .await
        .with_context(|| format!("checking {repo}@{digest}"))?
    {
        return Ok(digest);
    }
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        let size = bytes.len() as u64;
        match client
            .push_blob(repo, &digest, size, stream_of(bytes.clone()))
            .await
        {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < 5 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e).with_context(|| format!("pushing blob {digest} to {repo}")),
        }
    }
    Ok(digest)
}

async fn put_manifest(
    client: &RegistryClient,
    repo: &RepositoryName,
    tags: &[Tag],
    media_type: &str,
    bytes: Bytes,
) -> Result<Digest> {
    let digest = sha256(&bytes);
    let references: Vec<String> = if tags.is_empty() {
        vec![digest.to_string()]
    } else {
        tags.iter().map(|t| t.to_string()).collect()
    };
    for reference in references {
        let pushed = client
            .put_manifest(repo, &reference, media_type, bytes.clone())
            .await
            .with_context(|| format!("pushing manifest {repo}:{reference}"))?;
        if pushed != digest {
            bail!("pushed manifest {pushed}, expected {digest}");
        }
    }
    Ok(digest)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'static str,
    os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    created: &'static str,
    config: ContainerConfig,
    rootfs: RootFs<'a>,
    history: Vec<History>,
}

#[derive(Serialize)]
struct ContainerConfig {
    #[serde(rename = "Env")]
    env: Vec<&'static str>,
    #[serde(rename = "Cmd")]
    cmd: Vec<&'static str>,
    #[serde(rename = "Labels")]
    labels: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: &'a [String],
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

const CREATED: &str = "2024-01-01T00:00:00Z";

/// A real image config (JSON) for layers with these diff_ids.
pub fn image_config(diff_ids: &[Digest], platform: Platform) -> Bytes {
    let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        variant: platform.variant,
        created: CREATED,
        config: ContainerConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            cmd: vec!["/bin/sh"],
            labels: BTreeMap::from([("org.opencontainers.image.vendor", "ecr-backup tests")]),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: &diff_ids,
        },
        history: (0..diff_ids.len())
            .map(|i| History {
                created: CREATED,
                created_by: format!("ADD layer-{i} /"),
            })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&config).expect("config serializes"))
}

/// The sha256 digest of `bytes`, computed with `ring`, whose assembly runs at full speed
/// in unoptimized test builds too (the `sha2` crate is about 25 times slower there).
pub fn sha256(bytes: &[u8]) -> Digest {
    digest_of(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn digest_of(d: ring::digest::Digest) -> Digest {
    format!("sha256:{}", hex::encode(d.as_ref()))
        .parse()
        .expect("sha256 hex is a valid digest")
}

fn is_gzip(layer: &[u8]) -> bool {
    layer.starts_with(&[0x1f, 0x8b])
}

/// The diff_id of a layer: the sha256 of the uncompressed tar (of the bytes themselves
/// when they are not gzip).
pub fn diff_id(layer: &[u8]) -> Result<Digest> {
    if !is_gzip(layer) {
        return Ok(sha256(layer));
    }
    let mut decoder = flate2::read::GzDecoder::new(layer);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = decoder.read(&mut buf).context("gunzipping a layer")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(digest_of(hasher.finish()))
}

/// A gzip-compressed tar holding one file of `size` pseudo-random bytes derived from
/// `seed`: the same arguments give the same bytes. The gzip stream is made of stored
/// (uncompressed) deflate blocks, so the blob is a little larger than `size` and quick to
/// make even in unoptimized builds.
pub fn random_layer(seed: u64, size: u64) -> Bytes {
    assert!(size < 8 << 30, "layers of 8 GiB or more are not supported");
    let tar_len = 512 + size.div_ceil(512) * 512 + 1024;
    let blocks = tar_len.div_ceil(STORED_BLOCK as u64).max(1);
    let capacity = usize::try_from(10 + tar_len + 5 * blocks + 8).expect("layer fits in memory");
    let mut gz = StoredGzip::new(capacity);
    gz.write(&tar_header(&format!("data/{seed:016x}.bin"), size));
    let mut rng = SplitMix64(seed);
    let mut chunk = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut chunk[..n]);
        gz.write(&chunk[..n]);
        left -= n as u64;
    }
    let padding = (512 - (size % 512) as usize) % 512;
    gz.write(&vec![0u8; padding + 1024]);
    Bytes::from(gz.finish())
}

/// Largest stored deflate block.
const STORED_BLOCK: usize = 65_535;

/// A gzip stream (RFC 1952) of stored deflate blocks (RFC 1951, BTYPE 00), written by
/// hand: `flate2` at level 0 is about 20 times slower in unoptimized builds.
struct StoredGzip {
    out: Vec<u8>,
    pending: Vec<u8>,
    crc: flate2::Crc,
}

impl StoredGzip {
    fn new(capacity: usize) -> StoredGzip {
        let mut out = Vec::with_capacity(capacity);
        // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        StoredGzip {
            out,
            pending: Vec::with_capacity(STORED_BLOCK),
            crc: flate2::Crc::new(),
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        self.crc.update(data);
        while !data.is_empty() {
            let n = (STORED_BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == STORED_BLOCK && !data.is_empty() {
                self.block(false);
            }
        }
    }

    fn block(&mut self, last: bool) {
        let len = self.pending.len() as u16;
        self.out.push(u8::from(last));
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&(!len).to_le_bytes());
        self.out.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    fn finish(mut self) -> Vec<u8> {
        self.block(true);
        let (crc, size) = (self.crc.sum(), self.crc.amount());
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(&size.to_le_bytes());
        self.out
    }
}

/// A ustar header for a regular file.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut h = [0u8; 512];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"14544400200\0"); // 2024-01-01T00:00:00Z
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    put(148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// SplitMix64: tiny, fast even in debug builds, and stable across versions (unlike the
/// `rand` crate's generators, whose streams may change).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let n = rest.len();
        rest.copy_from_slice(&self.next_u64().to_le_bytes()[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untar_one(layer: &[u8]) -> (String, Vec<u8>) {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer)
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(tar.len() % 512, 0);
        let h = &tar[..512];
        let name = String::from_utf8(h[..100].split(|&b| b == 0).next().unwrap().to_vec()).unwrap();
        let size =
            u64::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap() as usize;
        // Checksum as a tar reader computes it.
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        assert_eq!(sum, stored);
        assert!(tar[512 + size..].iter().all(|&b| b == 0));
        assert!(tar.len() >= 512 + size + 1024);
        (name, tar[512..512 + size].to_vec())
    }

    #[test]
    fn layers_are_deterministic_tar_gz() {
        let a = random_layer(7, 1000);
        assert_eq!(a, random_layer(7, 1000));
        assert_ne!(a, random_layer(8, 1000));
        let (name, data) = untar_one(&a);
        assert_eq!(name, format!("data/{:016x}.bin", 7));
        assert_eq!(data.len(), 1000);
        let (_, empty) = untar_one(&random_layer(1, 0));
        assert!(empty.is_empty());
        let (_, data) = untar_one(&random_layer(2, 200_000));
        assert_eq!(data.len(), 200_000);
    }

    #[test]
    fn stored_gzip_round_trips_at_block_boundaries() {
        for (size, split) in [
            (0, 0),
            (1, 0),
            (STORED_BLOCK, 7),
            (2 * STORED_BLOCK, STORED_BLOCK),
            (2 * STORED_BLOCK + 1, 1),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut gz = StoredGzip::new(0);
            gz.write(&data[..split]);
            gz.write(&data[split..]);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz.finish()[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "size {size}");
        }
    }

    #[test]
    fn diff_id_is_sha256_of_the_tar() {
        let layer = random_layer(3, 5000);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(diff_id(&layer).unwrap(), Digest::of(&tar));
        assert_eq!(sha256(&layer), Digest::of(&layer));
        assert_eq!(diff_id(&tar).unwrap(), Digest::of(&tar));
    }

    #[test]
    fn config_is_json_with_diff_ids() {
        let d = Digest::of(b"x");
        let c: serde_json::Value = serde_json::from_slice(&image_config(
            std::slice::from_ref(&d),
            Platform::LINUX_ARM64,
        ))
        .unwrap();
        assert_eq!(c["architecture"], "arm64");
        assert_eq!(c["os"], "linux");
        assert_eq!(c["variant"], "v8");
        assert_eq!(c["rootfs"]["diff_ids"][0], d.to_string());
    }

    #[test]
    fn names_and_tags() {
        assert_eq!(long_tag().as_str().len(), 128);
        assert_eq!(
            repository("t1/", "team/app/api").unwrap().as_str(),
            "t1/team/app/api"
        );
        assert_eq!(repository("", "app").unwrap().as_str(), "app");
    }
}

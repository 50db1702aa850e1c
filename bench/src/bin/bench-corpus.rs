//! Pushes the benchmark corpora into a registry, deterministically (same seed, same
//! digests), and prints what it pushed as one JSON object per corpus on stdout.
//!
//! - `big`: one OCI image, tag `big:v1`, with gzip layers of 10, 100 and 500 MiB of
//!   incompressible data;
//! - `many`: 200 images in 20 repositories (`many/r00` … `many/r19`) × 10 tags (`t0` …
//!   `t9`); every image has the same two base layers (2 MiB and 1 MiB) and one top layer
//!   of its own, 100 KiB to 2 MiB;
//! - `multi`: one OCI index `multi:v1` of a linux/amd64 and a linux/arm64 image (layers of
//!   4 and 16 MiB each).
//!
//! Usage: `bench-corpus REGISTRY_URL [big] [many] [multi]` (all three by default).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ecr_backup_shared::source::registry::Credentials;
use ecr_backup_shared::{RegistryClient, Tag};
use ecr_backup_tests::corpus::{
    push_image, push_image_for, push_index, random_layer, repository, CorpusImage, Format, Platform,
};
use ecr_backup_tests::servers::registry_client;
use futures::{StreamExt, TryStreamExt};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Seed of every blob's content.
const SEED: u64 = 0x00EC_B0AC;
/// Images pushed at once while building `many`.
const PUSH_CONCURRENCY: usize = 8;

/// SplitMix64 finaliser: a well-mixed 64-bit value for a stream number.
fn mix(stream: u64) -> u64 {
    let mut z =
        (SEED ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A layer of `size` incompressible bytes, made off the async threads.
async fn layer(stream: u64, size: u64) -> Result<Bytes> {
    Ok(tokio::task::spawn_blocking(move || random_layer(mix(stream), size)).await?)
}

fn tag(t: &str) -> Tag {
    t.parse().expect("a valid tag")
}

/// What one corpus holds, for the benchmark's table.
#[derive(Default)]
struct Summary {
    images: usize,
    repositories: Vec<String>,
    /// Every unique blob (manifests included) to its size.
    unique: BTreeMap<String, u64>,
    /// Sum over images of everything each image reaches (manifest included).
    referenced_bytes: u64,
}

impl Summary {
    fn add(&mut self, image: &CorpusImage) {
        self.images += 1;
        let repo = image.repository.to_string();
        if !self.repositories.contains(&repo) {
            self.repositories.push(repo);
        }
        let manifest = image.manifest_bytes.len() as u64;
        self.unique.insert(image.digest.to_string(), manifest);
        // An index's child manifests are among its `blobs`, with their sizes.
        for (d, s) in &image.blobs {
            self.unique.insert(d.to_string(), *s);
        }
        self.referenced_bytes += manifest + image.blobs.values().sum::<u64>();
    }

    fn json(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "corpus": name,
            "images": self.images,
            "repositories": self.repositories.len(),
            "unique_blobs": self.unique.len(),
            "unique_bytes": self.unique.values().sum::<u64>(),
            "referenced_bytes": self.referenced_bytes,
        })
    }
}

async fn push_big(client: &RegistryClient) -> Result<Summary> {
    let repo = repository("", "big")?;
    let mut layers = Vec::new();
    for (n, mib) in [(1, 10), (2, 100), (3, 500)] {
        layers.push(layer(n, mib * MIB).await?);
    }
    let image = push_image(client, &repo, &[tag("v1")], &layers, Format::Oci).await?;
    let mut s = Summary::default();
    s.add(&image);
    Ok(s)
}

async fn push_many(client: &RegistryClient) -> Result<Summary> {
    let base0 = layer(10, 2 * MIB).await?;
    let base1 = layer(11, MIB).await?;
    let mut jobs = Vec::new();
    for r in 0..20u64 {
        for t in 0..10u64 {
            jobs.push((r, t));
        }
    }
    let images: Vec<CorpusImage> = futures::stream::iter(jobs)
        .map(|(r, t)| {
            let (base0, base1) = (base0.clone(), base1.clone());
            async move {
                let n = 1000 + r * 10 + t;
                // 100 KiB to 2 MiB, spread evenly by the seed.
                let size = 100 * KIB + mix(n) % (2 * MIB - 100 * KIB + 1);
                let top = layer(n, size).await?;
                let repo = repository("", &format!("many/r{r:02}"))?;
                push_image(
                    client,
                    &repo,
                    &[tag(&format!("t{t}"))],
                    &[base0, base1, top],
                    Format::Oci,
                )
                .await
                .with_context(|| format!("pushing {repo}:t{t}"))
            }
        })
        .buffer_unordered(PUSH_CONCURRENCY)
        .try_collect()
        .await?;
    let mut s = Summary::default();
    let mut images = images;
    images.sort_by(|a, b| a.repository.cmp(&b.repository).then(a.tags.cmp(&b.tags)));
    for image in &images {
        s.add(image);
    }
    Ok(s)
}

async fn push_multi(client: &RegistryClient) -> Result<Summary> {
    let repo = repository("", "multi")?;
    let mut children = Vec::new();
    for (i, platform) in [Platform::LINUX_AMD64, Platform::LINUX_ARM64]
        .into_iter()
        .enumerate()
    {
        let i = i as u64;
        let layers = [
            layer(20 + 2 * i, 4 * MIB).await?,
            layer(21 + 2 * i, 16 * MIB).await?,
        ];
        let image = push_image_for(client, &repo, &[], &layers, Format::Oci, platform).await?;
        children.push((platform, image));
    }
    let index = push_index(client, &repo, &[tag("v1")], &children, Format::Oci).await?;
    let mut s = Summary::default();
    s.add(&index);
    Ok(s)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let registry = match args.next() {
        Some(a) if a != "-h" && a != "--help" => a,
        _ => {
            eprintln!("usage: bench-corpus REGISTRY_URL [big] [many] [multi]");
            std::process::exit(2);
        }
    };
    let mut which: Vec<String> = args.collect();
    if which.is_empty() {
        which = vec!["big".into(), "many".into(), "multi".into()];
    }
    let client = registry_client(&registry, Credentials::Anonymous);
    for name in which {
        let summary = match name.as_str() {
            "big" => push_big(&client).await?,
            "many" => push_many(&client).await?,
            "multi" => push_multi(&client).await?,
            other => bail!("unknown corpus {other:?}: expected big, many or multi"),
        };
        println!("{}", summary.json(&name));
    }
    Ok(())
}

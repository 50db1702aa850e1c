//! What a store's history costs: generates a store of N images with D daily runs of
//! history in the documented format, then measures one command against it in this process
//! (wall time, peak RSS, and every store request by kind and prefix, counted by
//! `store::CountingBackend`), so that `bench/scale` can compare a store holding one run with
//! one holding a year of them.
//!
//! The registry is synthetic: `scale/rNNNN` repositories of T tags each; every day a
//! fixed, pseudo-random share of tags moves to a new image (its manifest blob, image
//! record and tag record are written, and the repository's new tree). Image records,
//! tag records, trees, snapshot parts and `index.json` are built with the library's own
//! types, keys and serializers (`Layout`, `records`, `Tree`), written straight to files
//! without the directory backend's fsync so that a million files take minutes, not hours.
//!
//! Usage:
//!   bench-scale generate STORE IMAGES RUNS [TAGS_PER_REPO] [MOVES_PER_MILLE]
//!   bench-scale measure PHASE STORE IMAGES RUNS [TAGS_PER_REPO] [MOVES_PER_MILLE]
//! PHASE is one of: nochange (the store side of a no-change daily run: plan against the
//! latest run, write the snapshot, update index.json), ls, ls-repo, snapshots,
//! restore-plan (the tag view of one repository as of the middle of the history), verify
//! (without --read-data). Prints one JSON object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, TimeZone, Utc};
use ecr_backup_shared::backup::{selected_state, Baseline, Plan, Planner};
use ecr_backup_shared::filter::ImageFilter;
use ecr_backup_shared::progress::NoProgress;
use ecr_backup_shared::source::registry::{Credentials, StaticCredentials};
use ecr_backup_shared::source::{Source, SourceImage};
use ecr_backup_shared::store::records::{
    ImageRecord, RepositoryEntry, SnapshotPart, TagRecord, Tree, TreeRef, RECORD_VERSION,
    SNAPSHOT_VERSION,
};
use ecr_backup_shared::store::tag_view::update_index;
use ecr_backup_shared::store::{CountingBackend, DirBackend, IndexRef, Layout, Run, Store};
use ecr_backup_shared::wayback::inventory::{self, PointInTime};
use ecr_backup_shared::wayback::verify::{verify, VerifyOptions};
use ecr_backup_shared::{Digest, RegistryClient, RepositoryName, Tag};

const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const SOURCE: &str = "scale.example";

/// The synthetic registry's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    images: u64,
    runs: u64,
    tags_per_repo: u64,
    moves_per_mille: u64,
}

impl Shape {
    fn repositories(&self) -> u64 {
        self.images.div_ceil(self.tags_per_repo)
    }

    fn tags_of(&self, r: u64) -> u64 {
        let last = self.repositories() - 1;
        if r < last {
            self.tags_per_repo
        } else {
            self.images - last * self.tags_per_repo
        }
    }

    /// True when tag `t` of repository `r` moves to a new image on day `day` (>= 1).
    fn moves(&self, r: u64, t: u64, day: u64) -> bool {
        mix(r, t, day) % 1000 < self.moves_per_mille
    }

    /// Run `day`'s time: daily at 05:30 UTC.
    fn day_time(&self, day: u64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 5, 30, 0).unwrap()
            + Duration::days(day as i64)
            + Duration::milliseconds(412)
    }
}

/// A fixed pseudo-random 64-bit value of three numbers (splitmix64).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(c.wrapping_mul(0x94d0_49bb_1331_11eb))
        .wrapping_add(0x2545_f491_4f6c_dd1d);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn repo_name(r: u64) -> RepositoryName {
    format!("scale/r{r:05}").parse().expect("a valid name")
}

fn tag_name(t: u64) -> Tag {
    format!("t{t:03}").parse().expect("a valid tag")
}

/// The manifest of version `v` of tag `t` of repository `r` (tiny, and unique).
fn manifest(r: u64, t: u64, v: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE}","layers":[],"annotations":{{"scale":"{r}-{t}-{v}"}}}}"#
    )
    .into_bytes()
}

/// Writes a file, creating its directories (no fsync: a generator, not a writer).
fn put(root: &Path, key: &str, bytes: &[u8]) -> Result<()> {
    let path = root.join(key);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("records serialize")
}

/// The source's images of repository `r` on `day`: each tag on its current version.
fn source_images(shape: &Shape, r: u64, versions: &[u64]) -> Vec<SourceImage> {
    let repo = repo_name(r);
    (0..shape.tags_of(r))
        .map(|t| SourceImage {
            repository: repo.clone(),
            digest: Digest::of(&manifest(r, t, versions[t as usize])),
            tags: vec![tag_name(t)],
            media_type: Some(MEDIA_TYPE.into()),
            archived: false,
        })
        .collect()
}

/// Current versions of every tag after `runs` days.
fn final_versions(shape: &Shape) -> Vec<Vec<u64>> {
    (0..shape.repositories())
        .map(|r| {
            (0..shape.tags_of(r))
                .map(|t| (1..shape.runs).filter(|&d| shape.moves(r, t, d)).count() as u64)
                .collect()
        })
        .collect()
}

fn generate(root: &Path, shape: &Shape) -> Result<serde_json::Value> {
    let started = Instant::now();
    if root.exists() {
        bail!("{} exists: generate into a new directory", root.display());
    }
    put(root, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut versions: Vec<Vec<u64>> = (0..shape.repositories())
        .map(|r| vec![0; shape.tags_of(r) as usize])
        .collect();
    let mut trees: BTreeMap<u64, TreeRef> = BTreeMap::new();
    let (mut files, mut tag_records) = (1u64, 0u64);
    let mut index = Vec::new();
    for day in 0..shape.runs {
        let at = shape.day_time(day);
        let mut entries = BTreeMap::new();
        for r in 0..shape.repositories() {
            let repo = repo_name(r);
            let mut changed = day == 0;
            for t in 0..shape.tags_of(r) {
                if day > 0 && shape.moves(r, t, day) {
                    versions[r as usize][t as usize] += 1;
                } else if day > 0 {
                    continue;
                }
                changed = true;
                let bytes = manifest(r, t, versions[r as usize][t as usize]);
                let digest = Digest::of(&bytes);
                put(root, &Layout::blob(&digest), &bytes)?;
                let record = ImageRecord {
                    version: RECORD_VERSION,
                    repository: repo.clone(),
                    digest: digest.clone(),
                    media_type: MEDIA_TYPE.into(),
                    size: bytes.len() as u64,
                    tags: vec![tag_name(t)],
                    manifests: Vec::new(),
                    blobs: Vec::new(),
                    subject: None,
                    source: SOURCE.into(),
                    backed_up_at: at,
                };
                put(root, &Layout::image(&repo, &digest), &json(&record))?;
                let tag = TagRecord {
                    version: RECORD_VERSION,
                    repository: repo.clone(),
                    tag: tag_name(t),
                    digest: digest.clone(),
                    observed_at: at,
                };
                put(
                    root,
                    &Layout::tag(&repo, &tag.tag, &digest, at),
                    &json(&tag),
                )?;
                files += 3;
                tag_records += 1;
            }
            if changed {
                let state = selected_state(
                    &ImageFilter::default(),
                    &source_images(shape, r, &versions[r as usize]),
                );
                let tree = Tree::of(&state);
                let bytes = tree.to_bytes();
                let digest = Digest::of(&bytes);
                put(root, &Layout::tree(&digest), &bytes)?;
                files += 1;
                trees.insert(
                    r,
                    TreeRef {
                        tree: digest,
                        images: tree.images.len() as u64,
                        tags: tree.tags.len() as u64,
                        pending: 0,
                    },
                );
            }
            entries.insert(repo, RepositoryEntry::Tree(trees[&r].clone()));
        }
        let id = format!("{}-{:06x}", at.format("%Y%m%dT%H%M%SZ"), day);
        let part = SnapshotPart {
            version: SNAPSHOT_VERSION,
            id: id.clone(),
            source: SOURCE.into(),
            observed_at: at,
            run: None,
            part: 0,
            last: true,
            parts: Some(1),
            repositories: entries,
        };
        put(root, &Layout::snapshot(&id), &json(&part))?;
        files += 1;
    }
    for r in 0..shape.repositories() {
        for t in 0..shape.tags_of(r) {
            let bytes = manifest(r, t, versions[r as usize][t as usize]);
            index.push(IndexRef {
                repository: repo_name(r),
                tag: tag_name(t),
                digest: Digest::of(&bytes),
                media_type: MEDIA_TYPE.into(),
                size: bytes.len() as u64,
            });
        }
    }
    let store = Store::new(Arc::new(DirBackend::new(root.to_path_buf())));
    tokio::runtime::Runtime::new()?.block_on(store.write_index(&index))?;
    Ok(serde_json::json!({
        "generated": root.display().to_string(),
        "images": shape.images,
        "repositories": shape.repositories(),
        "runs": shape.runs,
        "tag_records": tag_records,
        "files": files + 1,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

async fn measure(phase: &str, root: &Path, shape: &Shape) -> Result<serde_json::Value> {
    let counting = CountingBackend::new(Arc::new(DirBackend::new(root.to_path_buf())));
    let store = Store::new(counting.clone());
    let started = Instant::now();
    let detail = match phase {
        "nochange" => {
            let versions = final_versions(shape);
            let registry = RegistryClient::new(
                "http://127.0.0.1:9".parse()?,
                Arc::new(StaticCredentials(Credentials::Anonymous)),
            )?;
            let source = Source::from_parts(SOURCE.into(), registry, None);
            let filter = ImageFilter::default();
            let observed_at = shape.day_time(shape.runs);
            let baseline = Baseline::load(&store).await?;
            let planner = Planner::new(&source, &store, &filter, observed_at, &baseline);
            let mut snapshot =
                ecr_backup_shared::store::records::Snapshot::new(SOURCE.into(), observed_at);
            snapshot.id = format!("{}-ffffff", observed_at.format("%Y%m%dT%H%M%SZ"));
            let mut plan = Plan::new(snapshot, &baseline);
            for r in 0..shape.repositories() {
                let images = source_images(shape, r, &versions[r as usize]);
                plan.add(planner.compare_images(repo_name(r), images).await?);
            }
            let work = plan.work.len();
            let (_, part) = store.put_snapshot(&plan.snapshot, &plan.context).await?;
            let run = Run::from_parts(&plan.snapshot.id, vec![part]).expect("one part");
            let index = update_index(&store, &run, baseline.run(), &Default::default()).await?;
            serde_json::json!({
                "work": work, "unchanged": plan.unchanged, "index_written": index.written,
            })
        }
        "ls" => {
            let repos = inventory::repositories(&store).await?;
            serde_json::json!({ "repositories": repos.len() })
        }
        "ls-repo" => {
            let detail_ =
                inventory::repository(&store, &repo_name(shape.repositories() / 2)).await?;
            serde_json::json!({ "tags": detail_.tags.len() })
        }
        "snapshots" => {
            let runs = inventory::snapshots(&store).await?;
            serde_json::json!({ "runs": runs.len() })
        }
        "restore-plan" => {
            let repo = repo_name(shape.repositories() / 2);
            let listing = store.listing(Some(&repo)).await?;
            let at = shape.day_time(shape.runs / 2) + Duration::hours(1);
            let view = inventory::view_at(&store, &listing, &PointInTime::AsOf(at)).await?;
            let tags = view.tags.keys().filter(|(r, _)| r == &repo).count();
            serde_json::json!({ "tags": tags })
        }
        "verify" => {
            let report = verify(&store, &VerifyOptions::default(), Arc::new(NoProgress)).await?;
            let mut detail = serde_json::to_value(&report)?;
            if let Some(o) = detail.as_object_mut() {
                o.retain(|k, _| k.ends_with("_checked"));
            }
            detail
        }
        other => bail!("unknown phase {other:?}"),
    };
    let wall = started.elapsed().as_secs_f64();
    let counts = counting.take();
    let requests: u64 = counts.values().map(|c| c.requests()).sum();
    let by_prefix: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(k, c)| {
            (
                k.clone(),
                serde_json::json!({
                    "HEAD": c.heads, "GET": c.gets, "PUT": c.puts,
                    "LIST": c.list_pages, "listed_keys": c.listed_keys,
                }),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "phase": phase,
        "images": shape.images,
        "runs": shape.runs,
        "seconds": wall,
        "peak_rss_mib": peak_rss_mib(),
        "requests": requests,
        "by_prefix": by_prefix,
        "detail": detail,
    }))
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| (kib / 1024.0 * 10.0).round() / 10.0)
}

fn shape_from(args: &[String]) -> Result<Shape> {
    let number = |i: usize, default: Option<u64>| -> Result<u64> {
        match args.get(i) {
            Some(a) => a
                .parse()
                .with_context(|| format!("argument {a:?} is not a number")),
            None => default.context("missing argument"),
        }
    };
    let shape = Shape {
        images: number(0, None)?,
        runs: number(1, None)?,
        tags_per_repo: number(2, Some(50))?,
        moves_per_mille: number(3, Some(2))?,
    };
    if shape.images == 0 || shape.runs == 0 || shape.tags_per_repo == 0 {
        bail!("IMAGES, RUNS and TAGS_PER_REPO must be at least 1");
    }
    Ok(shape)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("generate") if args.len() >= 4 => {
            generate(&PathBuf::from(&args[1]), &shape_from(&args[2..])?)?
        }
        Some("measure") if args.len() >= 5 => {
            let shape = shape_from(&args[3..])?;
            tokio::runtime::Runtime::new()?.block_on(measure(
                &args[1],
                &PathBuf::from(&args[2]),
                &shape,
            ))?
        }
        _ => bail!(
            "usage: bench-scale generate STORE IMAGES RUNS [TAGS_PER_REPO] [MOVES_PER_MILLE]\n       \
             bench-scale measure PHASE STORE IMAGES RUNS [TAGS_PER_REPO] [MOVES_PER_MILLE]"
        ),
    };
    println!("{out}");
    Ok(())
}

//! `prune`: mark what the kept runs and the recent tag records reach, then sweep the
//! rest, in the reverse order of writes (`docs/format.md`, "Deletion and retention").
//!
//! Marking reads every snapshot part, every tree they name and every image record, and
//! stops at the first one it cannot read: a record it cannot read might be the one that
//! keeps an object, so nothing is deleted then. Sweeping deletes only keys it parsed
//! (a key of a kind it does not know is never touched) and never an object written
//! within the grace period.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use globset::GlobSet;
use serde::Serialize;

use super::RetentionError;
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::store::records::{latest_instant, ImageRecord, RepositoryEntry};
use crate::store::{Layout, ObjectInfo, PartId, PruneFence, Run, Store};

/// Records and trees read at once while marking.
const READ_CONCURRENCY: usize = 32;
/// Keys deleted per request (S3's DeleteObjects limit).
const DELETE_BATCH: usize = 1000;

/// How a prune decides.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Objects written this recently are never deleted.
    pub grace: Duration,
    /// Images that ever had a tag matching one of these (in any repository) are kept,
    /// with those tag records, whatever the runs.
    pub keep_tags: Option<GlobSet>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: DEFAULT_GRACE,
            keep_tags: None,
        }
    }
}

/// The default grace period: far longer than the longest copy (a worker's 15 minutes,
/// plus redeliveries of its message), so a blob uploaded by a copy still in flight is
/// never taken even by a writer that holds no lease.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// One kind of object a prune deletes, in the order it deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Tag records observed before the oldest kept run.
    TagRecords,
    /// Deletion records of images whose image record goes.
    DeletionRecords,
    /// Image records no kept run, recent tag record or kept subject reaches.
    ImageRecords,
    /// Settings records superseded before the oldest kept run.
    SettingsRecords,
    /// Trees no remaining snapshot part names.
    Trees,
    /// Blobs no remaining image record or settings record names.
    Blobs,
}

impl Kind {
    /// Every kind, in the order of deletion.
    pub const ALL: [Kind; 6] = [
        Kind::TagRecords,
        Kind::DeletionRecords,
        Kind::ImageRecords,
        Kind::SettingsRecords,
        Kind::Trees,
        Kind::Blobs,
    ];
}

/// Objects and bytes of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Objects.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What a prune found: what it keeps and what it deletes (or would, with `--dry-run`).
#[derive(Debug, Clone, Default)]
pub struct PrunePlan {
    /// Keys to delete, by kind.
    pub delete: BTreeMap<Kind, Vec<ObjectInfo>>,
    /// What stays, by kind.
    pub kept: BTreeMap<Kind, Tally>,
    /// Objects that would go but were written within the grace period.
    pub in_grace: u64,
    /// The `takenAt` of the oldest complete run: tag records observed before it go.
    pub oldest_run: Option<DateTime<Utc>>,
    /// Snapshot parts (of every run, complete or not) whose trees were kept.
    pub parts: u64,
}

impl PrunePlan {
    /// Objects and bytes to delete, by kind.
    pub fn deleted(&self) -> BTreeMap<Kind, Tally> {
        self.delete
            .iter()
            .map(|(kind, objects)| {
                (
                    *kind,
                    Tally {
                        objects: objects.len() as u64,
                        bytes: objects.iter().map(|o| o.size).sum(),
                    },
                )
            })
            .collect()
    }
}

/// Everything the marking lists, once.
struct Objects {
    snapshots: Vec<ObjectInfo>,
    trees: Vec<ObjectInfo>,
    blobs: Vec<ObjectInfo>,
    records: Vec<ObjectInfo>,
    registry_settings: Vec<ObjectInfo>,
}

async fn list_all(store: &Store) -> Result<Objects, RetentionError> {
    use crate::store::layout_prefixes as p;
    let backend = store.backend();
    let (snapshots, trees, blobs, records, registry_settings) = futures::try_join!(
        backend.list(p::SNAPSHOTS),
        backend.list(p::TREES),
        backend.list(p::BLOBS),
        backend.list(p::REPOSITORIES),
        backend.list(p::REGISTRY_SETTINGS),
    )?;
    Ok(Objects {
        snapshots,
        trees,
        blobs,
        records,
        registry_settings,
    })
}

/// A parsed record key under `repositories/`.
enum RecordKey {
    Image(RepositoryName, Digest),
    Tag(RepositoryName, String, DateTime<Utc>, Digest),
    Deletion(RepositoryName, Digest),
    Settings(String, DateTime<Utc>, Digest),
}

fn parse_record(key: &str) -> Option<RecordKey> {
    let (repo, kind, rest) = Layout::split_record_key(key)?;
    match kind {
        "_images" => Some(RecordKey::Image(repo, Layout::digest_from_file_name(rest)?)),
        "_deleted" => Some(RecordKey::Deletion(
            repo,
            Layout::digest_from_file_name(rest)?,
        )),
        "_tags" => {
            let (tag, file) = rest.split_once('/')?;
            let tag: crate::oci::names::Tag = tag.parse().ok()?;
            let (observed, digest) = Layout::parse_tag_file_name(file)?;
            Some(RecordKey::Tag(repo, tag.to_string(), observed, digest))
        }
        "_settings" => settings_key(key),
        _ => None,
    }
}

/// A settings record's subject prefix, time and document, from its key.
fn settings_key(key: &str) -> Option<RecordKey> {
    let (prefix, name) = key.rsplit_once('/')?;
    let (observed, digest) = Layout::parse_tag_file_name(name)?;
    Some(RecordKey::Settings(prefix.to_owned(), observed, digest))
}

/// Marks and plans a prune of `store` as it is now, as if the snapshot parts in
/// `forgotten` were already gone (`forget --dry-run`). Deletes nothing.
pub async fn plan(
    store: &Store,
    options: &PruneOptions,
    forgotten: &HashSet<String>,
) -> Result<PrunePlan, RetentionError> {
    let now = Utc::now();
    let grace_start =
        now - chrono::Duration::from_std(options.grace).unwrap_or(chrono::Duration::MAX);
    let in_grace = |o: &ObjectInfo| o.modified > grace_start;
    let objects = list_all(store).await?;
    let mut plan = PrunePlan::default();

    // Roots: every snapshot part left, of any run (an incomplete run may be a fan-out
    // still writing its parts; forget removes abandoned ones).
    let part_ids: Vec<PartId> = objects
        .snapshots
        .iter()
        .filter(|o| !forgotten.contains(&o.key))
        .filter_map(|o| {
            let id = o
                .key
                .strip_prefix(crate::store::layout_prefixes::SNAPSHOTS)?;
            PartId::parse(id.strip_suffix(".json")?)
        })
        .collect();
    plan.parts = part_ids.len() as u64;
    let parts = futures::stream::iter(part_ids)
        .map(|id| async move {
            let key = Layout::snapshot(&id.id());
            match store.snapshot_part(&id.id()).await {
                Ok(Some(part)) => Ok(part),
                Ok(None) => Err(RetentionError::Vanished { key }),
                Err(source) => Err(RetentionError::Unreadable { key, source }),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let mut by_run: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for part in &parts {
        by_run
            .entry(part.run_id().to_owned())
            .or_default()
            .push(part.clone());
    }
    plan.oldest_run = by_run
        .iter()
        .filter_map(|(id, parts)| Run::from_parts(id, parts.clone()))
        .filter(Run::is_complete)
        .map(|run| run.observed_at)
        .min();

    // Trees named, and the images they hold.
    let mut reachable: HashSet<(RepositoryName, Digest)> = HashSet::new();
    let mut named_trees: BTreeSet<Digest> = BTreeSet::new();
    let mut tree_repos: HashMap<Digest, BTreeSet<RepositoryName>> = HashMap::new();
    for part in &parts {
        for (repo, entry) in &part.repositories {
            match entry {
                RepositoryEntry::Tree(t) => {
                    named_trees.insert(t.tree.clone());
                    tree_repos
                        .entry(t.tree.clone())
                        .or_default()
                        .insert(repo.clone());
                }
                RepositoryEntry::Inline(state) => {
                    for image in &state.images {
                        reachable.insert((repo.clone(), image.clone()));
                    }
                }
            }
        }
    }
    let trees = futures::stream::iter(named_trees.iter().cloned())
        .map(|digest| async move {
            store
                .tree(&digest)
                .await
                .map(|tree| (digest.clone(), tree))
                .map_err(|source| RetentionError::Unreadable {
                    key: Layout::tree(&digest),
                    source,
                })
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    for (digest, tree) in trees {
        for repo in &tree_repos[&digest] {
            for image in &tree.images {
                reachable.insert((repo.clone(), image.clone()));
            }
        }
    }

    // Records, from their keys.
    let mut image_keys: Vec<(RepositoryName, Digest, ObjectInfo)> = Vec::new();
    let mut tag_records: Vec<(RepositoryName, String, DateTime<Utc>, Digest, ObjectInfo)> =
        Vec::new();
    let mut deletion_records: Vec<(RepositoryName, Digest, ObjectInfo)> = Vec::new();
    let mut settings: BTreeMap<String, Vec<(DateTime<Utc>, Digest, ObjectInfo)>> = BTreeMap::new();
    for object in objects.records {
        match parse_record(&object.key) {
            Some(RecordKey::Image(repo, digest)) => image_keys.push((repo, digest, object)),
            Some(RecordKey::Tag(repo, tag, at, digest)) => {
                tag_records.push((repo, tag, at, digest, object))
            }
            Some(RecordKey::Deletion(repo, digest)) => {
                deletion_records.push((repo, digest, object))
            }
            Some(RecordKey::Settings(prefix, at, digest)) => settings
                .entry(prefix)
                .or_default()
                .push((at, digest, object)),
            None => {} // not a key this version knows: never deleted
        }
    }
    for object in objects.registry_settings {
        if let Some(RecordKey::Settings(prefix, at, digest)) = settings_key(&object.key) {
            settings
                .entry(prefix)
                .or_default()
                .push((at, digest, object));
        }
    }

    // Tag records: those a reader may still apply (observed at or after the oldest kept
    // run, or every one when there is no complete run), those of kept tags, and recent
    // ones stay, and reach their images.
    let keeps_tag = |tag: &str| options.keep_tags.as_ref().is_some_and(|g| g.is_match(tag));
    let mut doomed_tags = Vec::new();
    for (repo, tag, at, digest, object) in tag_records {
        let current = plan
            .oldest_run
            .is_none_or(|oldest| latest_instant(at) >= oldest);
        if current || keeps_tag(&tag) || in_grace(&object) {
            if !current && !keeps_tag(&tag) {
                plan.in_grace += 1;
            }
            reachable.insert((repo, digest));
            tally(&mut plan.kept, Kind::TagRecords, &object);
        } else {
            doomed_tags.push(object);
        }
    }

    // Every image record is read: a referrer is kept when its subject is, and a record
    // that cannot be read stops the prune.
    let records: Vec<(ImageRecord, ObjectInfo)> = futures::stream::iter(image_keys)
        .map(|(repo, digest, object)| async move {
            match store.image_record(&repo, &digest).await {
                Ok(Some(record)) => Ok((record, object)),
                Ok(None) => Err(RetentionError::Vanished { key: object.key }),
                Err(source) => Err(RetentionError::Unreadable {
                    key: object.key,
                    source,
                }),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    for (record, object) in &records {
        if in_grace(object)
            && !reachable.contains(&(record.repository.clone(), record.digest.clone()))
        {
            plan.in_grace += 1;
            reachable.insert((record.repository.clone(), record.digest.clone()));
        }
    }
    // Referrers of referrers: repeat until nothing is added.
    loop {
        let mut added = false;
        for (record, _) in &records {
            let key = (record.repository.clone(), record.digest.clone());
            if reachable.contains(&key) {
                continue;
            }
            if let Some(subject) = &record.subject {
                if reachable.contains(&(record.repository.clone(), subject.clone())) {
                    reachable.insert(key);
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }

    let mut needed_blobs: HashSet<Digest> = HashSet::new();
    let mut doomed_images: HashSet<(RepositoryName, Digest)> = HashSet::new();
    let mut doomed_image_objects = Vec::new();
    for (record, object) in records {
        let key = (record.repository.clone(), record.digest.clone());
        if reachable.contains(&key) {
            needed_blobs.insert(record.digest.clone());
            needed_blobs.extend(record.manifests.iter().map(|m| m.digest.clone()));
            needed_blobs.extend(record.blobs.iter().map(|b| b.digest.clone()));
            tally(&mut plan.kept, Kind::ImageRecords, &object);
        } else {
            doomed_images.insert(key);
            doomed_image_objects.push(object);
        }
    }

    let mut doomed_deletions = Vec::new();
    for (repo, digest, object) in deletion_records {
        if doomed_images.contains(&(repo, digest)) && !in_grace(&object) {
            doomed_deletions.push(object);
        } else {
            tally(&mut plan.kept, Kind::DeletionRecords, &object);
        }
    }

    // Settings: per subject, every record observed at or after the oldest kept run, and
    // the one in force at that time; their documents are blobs.
    let mut doomed_settings = Vec::new();
    for (_, mut entries) in settings {
        entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let in_force = plan
            .oldest_run
            .map(|oldest| entries.iter().rposition(|(at, _, _)| *at <= oldest));
        for (i, (at, digest, object)) in entries.into_iter().enumerate() {
            let keep = match (plan.oldest_run, in_force) {
                (None, _) => true,
                (Some(oldest), Some(Some(force))) => i >= force || at >= oldest,
                (Some(oldest), _) => at >= oldest,
            };
            if keep || in_grace(&object) {
                needed_blobs.insert(digest);
                tally(&mut plan.kept, Kind::SettingsRecords, &object);
            } else {
                doomed_settings.push(object);
            }
        }
    }

    let mut doomed_trees = Vec::new();
    for object in objects.trees {
        let digest = object
            .key
            .strip_prefix(crate::store::layout_prefixes::TREES)
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
        match digest {
            Some(d) if !named_trees.contains(&d) && !in_grace(&object) => doomed_trees.push(object),
            Some(_) => tally(&mut plan.kept, Kind::Trees, &object),
            None => {}
        }
    }
    let mut doomed_blobs = Vec::new();
    for object in objects.blobs {
        let digest = object
            .key
            .strip_prefix(crate::store::layout_prefixes::BLOBS)
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
        match digest {
            Some(d) if !needed_blobs.contains(&d) => {
                if in_grace(&object) {
                    plan.in_grace += 1;
                    tally(&mut plan.kept, Kind::Blobs, &object);
                } else {
                    doomed_blobs.push(object);
                }
            }
            Some(_) => tally(&mut plan.kept, Kind::Blobs, &object),
            None => {}
        }
    }

    plan.delete.insert(Kind::TagRecords, doomed_tags);
    plan.delete.insert(Kind::DeletionRecords, doomed_deletions);
    plan.delete.insert(Kind::ImageRecords, doomed_image_objects);
    plan.delete.insert(Kind::SettingsRecords, doomed_settings);
    plan.delete.insert(Kind::Trees, doomed_trees);
    plan.delete.insert(Kind::Blobs, doomed_blobs);
    Ok(plan)
}

fn tally(kept: &mut BTreeMap<Kind, Tally>, kind: Kind, object: &ObjectInfo) {
    let t = kept.entry(kind).or_default();
    t.objects += 1;
    t.bytes += object.size;
}

/// Deletes what `plan` names, kind by kind in the order of [`Kind::ALL`] (the reverse
/// of the order of writes, so that a prune stopped at any point leaves no record naming
/// a missing object), checking before every batch that the fence still holds.
pub async fn sweep(
    store: &Store,
    fence: &PruneFence,
    plan: &PrunePlan,
) -> Result<BTreeMap<Kind, Tally>, RetentionError> {
    let mut deleted: BTreeMap<Kind, Tally> = BTreeMap::new();
    for kind in Kind::ALL {
        let Some(objects) = plan.delete.get(&kind) else {
            continue;
        };
        for batch in objects.chunks(DELETE_BATCH) {
            fence.check()?;
            let keys: Vec<String> = batch.iter().map(|o| o.key.clone()).collect();
            store.backend().delete(&keys).await?;
            let t = deleted.entry(kind).or_default();
            t.objects += batch.len() as u64;
            t.bytes += batch.iter().map(|o| o.size).sum::<u64>();
        }
    }
    Ok(deleted)
}

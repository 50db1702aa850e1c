//! Backup runs: what one run of the fan-out (or of `ecr-backup backup`) recorded about the
//! source registry, as every reader must see it.
//!
//! A run is stored as one or more snapshot **parts** (`snapshots/<run>.json`,
//! `<run>.1.json`, …; see `docs/format.md`). This module is the only place that knows how
//! parts make a run: how an id is spelled and parsed, when a run is complete, how its parts
//! merge, and how "the latest run at or before T" is found. Restore, export, verify, `ls`
//! and the backup itself all go through it, so they agree on what a snapshot is.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::layout::{self, Layout};
use super::{stream_of, ObjectInfo, Store, StoreError, WriteOutcome};
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::store::records::{
    latest_instant, RepositoryEntry, Snapshot, SnapshotPart, SnapshotRepository, Tree, TreeRef,
    SNAPSHOT_VERSION,
};

/// Snapshot parts read at once when a listing needs many of them.
const READ_CONCURRENCY: usize = 16;

/// The id of one snapshot part: a run id (`YYYYMMDDTHHMMSSZ-<6 hex>`), then `.<n>` for
/// parts after the first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartId {
    /// The run the part belongs to.
    pub run: String,
    /// Its number (0 for the first part, whose id is the run id itself).
    pub part: u32,
}

impl PartId {
    /// Parses a part id; `None` for anything that is not one (so stray files are ignored).
    pub fn parse(id: &str) -> Option<PartId> {
        let (run, part) = match id.split_once('.') {
            Some((run, n)) => {
                // Part numbers are written without leading zeros; refuse other spellings so
                // that one part has one id.
                if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
                    return None;
                }
                (run, n.parse::<u32>().ok().filter(|&p| p > 0)?)
            }
            None => (id, 0),
        };
        let (second, suffix) = run.split_once('-')?;
        let well_formed = second.len() == 16
            && second.ends_with('Z')
            && chrono::NaiveDateTime::parse_from_str(second, "%Y%m%dT%H%M%SZ").is_ok()
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then(|| PartId {
            run: run.to_owned(),
            part,
        })
    }

    /// The `YYYYMMDDTHHMMSSZ` the run started in: ids sort by it.
    pub fn second(&self) -> &str {
        &self.run[..16]
    }

    /// The part's id as stored (`<run>` or `<run>.<n>`).
    pub fn id(&self) -> String {
        part_id(&self.run, self.part)
    }
}

/// The snapshot id of part `part` of run `run`.
pub fn part_id(run: &str, part: u32) -> String {
    if part == 0 {
        run.to_owned()
    } else {
        format!("{run}.{part}")
    }
}

/// One run as read from the store: its parts, and whether they are all there.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run id (also the id of its first part).
    pub id: String,
    /// The registry it enumerated.
    pub source: String,
    /// When enumeration started; every part describes the registry as of this time.
    pub observed_at: DateTime<Utc>,
    /// The parts found, by number (headers and tree references; see
    /// [`Store::resolve_run`] for the state itself).
    pub parts: BTreeMap<u32, SnapshotPart>,
    /// How many parts the run has, when its last part was found.
    pub part_count: Option<u32>,
}

impl Run {
    /// Builds a run from the parts found for it (or just written); `None` when there are
    /// none.
    pub fn from_parts(id: &str, parts: Vec<SnapshotPart>) -> Option<Run> {
        let parts: BTreeMap<u32, SnapshotPart> = parts.into_iter().map(|p| (p.part, p)).collect();
        let first = parts.values().next()?;
        let part_count = parts
            .values()
            .find(|p| p.last)
            .map(|last| last.parts.unwrap_or(last.part + 1));
        Some(Run {
            id: id.to_owned(),
            source: first.source.clone(),
            observed_at: parts.values().map(|p| p.observed_at).min()?,
            part_count,
            parts,
        })
    }

    /// True when the last part exists and so does every part before it. Only complete runs
    /// describe the whole registry; a fan-out that died halfway leaves an incomplete one.
    pub fn is_complete(&self) -> bool {
        self.part_count
            .is_some_and(|n| (0..n).all(|p| self.parts.contains_key(&p)))
    }

    /// Part numbers that should exist but were not found (unknown past the highest part
    /// found while the last part is missing).
    pub fn missing_parts(&self) -> Vec<u32> {
        let upto = self
            .part_count
            .unwrap_or_else(|| self.parts.keys().max().map_or(0, |m| m + 1));
        (0..upto).filter(|p| !self.parts.contains_key(p)).collect()
    }

    /// Every repository of every part, with where its state is (no tree is read).
    pub fn entries(&self) -> BTreeMap<&RepositoryName, &RepositoryEntry> {
        self.parts
            .values()
            .flat_map(|p| p.repositories.iter())
            .collect()
    }

    /// Images across the run's repositories, from the parts alone.
    pub fn image_count(&self) -> u64 {
        self.parts.values().map(SnapshotPart::image_count).sum()
    }

    /// Tags across the run's repositories, from the parts alone.
    pub fn tag_count(&self) -> u64 {
        self.parts
            .values()
            .flat_map(|p| p.repositories.values())
            .map(RepositoryEntry::tag_count)
            .sum()
    }

    /// The run's header as one empty snapshot with the run's id: the repositories are
    /// filled in by [`Store::resolve_run`].
    fn header(&self) -> Snapshot {
        let mut merged = self
            .parts
            .values()
            .next()
            .expect("a run has a part")
            .header();
        merged.id = self.id.clone();
        merged.run = None;
        merged.part = 0;
        merged.last = self.is_complete();
        merged.parts = self.part_count;
        merged.observed_at = self.observed_at;
        merged
    }
}

/// What a writer knows when it stores a snapshot part, so that an unchanged repository
/// costs no write: the trees the store already holds (those of the previous run), and
/// per repository how many images it did not find complete in the store.
#[derive(Debug, Clone, Default)]
pub struct PartContext {
    /// Trees known to be in the store already; they are not written again.
    pub existing_trees: HashSet<Digest>,
    /// Repository → images of its state not known to be complete in the store.
    pub pending: BTreeMap<RepositoryName, u64>,
}

/// True when a tag record observed at `observed` is newer than a run taken at `observed_at`,
/// and so is applied on top of the run's snapshot.
///
/// The rule of `docs/format.md` ("Tags as of time T"): times are compared by
/// [`latest_instant`], so an ECR event of the run's own whole second counts as newer. A
/// record of that second which the run's listing already saw names the digest the
/// snapshot names, so reading it as newer costs nothing.
pub fn observed_after_run(observed: DateTime<Utc>, observed_at: DateTime<Utc>) -> bool {
    latest_instant(observed) >= observed_at
}

/// A run's id, or why a snapshot id given by a user does not name one.
fn run_of(id: &str) -> Option<String> {
    PartId::parse(id).map(|p| p.run)
}

impl Store {
    /// Ids of every snapshot part, parsed, oldest first; files that are not parts are
    /// ignored.
    pub async fn part_ids(&self) -> Result<Vec<PartId>, StoreError> {
        let mut ids: Vec<PartId> = self
            .backend()
            .list(layout::SNAPSHOTS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| {
                let id = o
                    .key
                    .strip_prefix(layout::SNAPSHOTS_PREFIX)?
                    .strip_suffix(".json")?;
                PartId::parse(id)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads the run `id` names (a run id, or the id of any of its parts), whole or not;
    /// `None` when the store has no part of it.
    pub async fn run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        let Some(run) = run_of(id) else {
            return Ok(None);
        };
        let parts = self
            .part_objects(&run)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        self.read_run(&run, parts).await
    }

    /// The stored objects of run `run`'s parts, each with its part id (their write times
    /// are what `restore --trusted-before` checks).
    pub async fn part_objects(&self, run: &str) -> Result<Vec<(PartId, ObjectInfo)>, StoreError> {
        Ok(self
            .backend()
            .list(&Layout::snapshot_prefix(run))
            .await?
            .into_iter()
            .filter_map(|o| {
                let id = o
                    .key
                    .strip_prefix(layout::SNAPSHOTS_PREFIX)?
                    .strip_suffix(".json")?;
                let part = PartId::parse(id).filter(|p| p.run == run)?;
                Some((part, o))
            })
            .collect())
    }

    async fn read_run(&self, run: &str, parts: Vec<PartId>) -> Result<Option<Run>, StoreError> {
        let snapshots: Vec<SnapshotPart> = futures::stream::iter(parts)
            .map(|p| async move { self.snapshot_part(&p.id()).await })
            .buffered(READ_CONCURRENCY)
            .try_filter_map(|s| async move { Ok(s) })
            .try_collect()
            .await?;
        Ok(Run::from_parts(run, snapshots))
    }

    /// Snapshot part ids, oldest first (the keys only: no part is read).
    pub async fn snapshot_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.part_ids().await?.iter().map(PartId::id).collect())
    }

    /// Reads one snapshot part as stored (header and tree references); `None` if there
    /// is no such id.
    pub async fn snapshot_part(&self, id: &str) -> Result<Option<SnapshotPart>, StoreError> {
        if id.contains('/') || id.contains("..") {
            return Ok(None);
        }
        self.read_json(&Layout::snapshot(id)).await
    }

    /// Reads one snapshot part with every repository's state; `None` if there is no
    /// such id.
    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(part) = self.snapshot_part(id).await? else {
            return Ok(None);
        };
        let mut snapshot = part.header();
        snapshot.repositories = self.resolve_entries(part.repositories.iter()).await?;
        Ok(Some(snapshot))
    }

    /// The whole run as one snapshot: every part's repositories with their state (each
    /// distinct tree read once).
    pub async fn resolve_run(&self, run: &Run) -> Result<Snapshot, StoreError> {
        let mut snapshot = run.header();
        snapshot.repositories = self.resolve_entries(run.entries().into_iter()).await?;
        Ok(snapshot)
    }

    /// The state of one repository of a run, reading at most one tree; `None` when the
    /// run does not name the repository.
    pub async fn run_repository(
        &self,
        run: &Run,
        repo: &RepositoryName,
    ) -> Result<Option<SnapshotRepository>, StoreError> {
        match run.entries().get(repo) {
            None => Ok(None),
            Some(RepositoryEntry::Inline(state)) => Ok(Some(state.clone())),
            Some(RepositoryEntry::Tree(t)) => Ok(Some(self.tree(&t.tree).await?.into_state())),
        }
    }

    async fn resolve_entries<'a>(
        &self,
        entries: impl Iterator<Item = (&'a RepositoryName, &'a RepositoryEntry)>,
    ) -> Result<BTreeMap<RepositoryName, SnapshotRepository>, StoreError> {
        let mut resolved = BTreeMap::new();
        let mut wanted: Vec<(RepositoryName, Digest)> = Vec::new();
        for (repo, entry) in entries {
            match entry {
                RepositoryEntry::Inline(state) => {
                    resolved.insert(repo.clone(), state.clone());
                }
                RepositoryEntry::Tree(t) => wanted.push((repo.clone(), t.tree.clone())),
            }
        }
        let distinct: HashSet<&Digest> = wanted.iter().map(|(_, d)| d).collect();
        let trees: HashMap<Digest, Tree> = futures::stream::iter(distinct)
            .map(|d| async move { Ok::<_, StoreError>((d.clone(), self.tree(d).await?)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (repo, digest) in wanted {
            resolved.insert(repo, trees[&digest].clone().into_state());
        }
        Ok(resolved)
    }

    /// Reads a tree and checks it against its digest. A part naming a tree the store
    /// lacks is an error: parts are written after their trees.
    pub async fn tree(&self, digest: &Digest) -> Result<Tree, StoreError> {
        let key = Layout::tree(digest);
        let bytes = self
            .backend()
            .read(&key)
            .await?
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        digest.verify(&bytes).map_err(|source| StoreError::Verify {
            key: key.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptRecord { key, source })
    }

    /// Writes one part of a run's snapshot, once: first the trees of its repositories
    /// that `context` does not know to be stored (create-only, content-addressed), then
    /// the part naming them. The same part already written with the same bytes is
    /// success (`AlreadyExists`); with other bytes it is [`StoreError::Conflict`]:
    /// another invocation did this part differently (a duplicate continuation message),
    /// and this one must not go on as if it had.
    ///
    /// Returns the part as stored, so that a writer need not read it back.
    pub async fn put_snapshot(
        &self,
        snapshot: &Snapshot,
        context: &PartContext,
    ) -> Result<(WriteOutcome, SnapshotPart), StoreError> {
        self.gate.check(&Layout::snapshot(&snapshot.id))?;
        let mut repositories = BTreeMap::new();
        let mut new_trees: BTreeMap<Digest, Bytes> = BTreeMap::new();
        for (repo, state) in &snapshot.repositories {
            let tree = Tree::of(state);
            let bytes = tree.to_bytes();
            let digest = Digest::of(&bytes);
            if !context.existing_trees.contains(&digest) {
                new_trees.insert(digest.clone(), bytes);
            }
            repositories.insert(
                repo.clone(),
                RepositoryEntry::Tree(TreeRef {
                    tree: digest,
                    images: tree.images.len() as u64,
                    tags: tree.tags.len() as u64,
                    pending: context.pending.get(repo).copied().unwrap_or(0),
                }),
            );
        }
        futures::stream::iter(new_trees)
            .map(|(digest, bytes)| async move {
                let size = bytes.len() as u64;
                self.backend()
                    .write_verified(
                        &Layout::tree(&digest),
                        &digest,
                        Some(size),
                        stream_of(bytes),
                    )
                    .await
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let part = SnapshotPart {
            version: SNAPSHOT_VERSION,
            id: snapshot.id.clone(),
            source: snapshot.source.clone(),
            observed_at: snapshot.observed_at,
            run: snapshot.run.clone(),
            part: snapshot.part,
            last: snapshot.last,
            parts: snapshot.parts,
            repositories,
        };
        let outcome = self
            .write_json_once(
                &Layout::snapshot(&snapshot.id),
                &part,
                super::repository::Existing::MustMatch,
            )
            .await?;
        Ok((outcome, part))
    }

    /// Every run, complete or not, oldest first.
    pub async fn runs(&self) -> Result<Vec<Run>, StoreError> {
        let mut by_run: BTreeMap<String, Vec<PartId>> = BTreeMap::new();
        for id in self.part_ids().await? {
            by_run.entry(id.run.clone()).or_default().push(id);
        }
        let mut runs: Vec<Run> = futures::stream::iter(by_run)
            .map(|(run, parts)| async move { self.read_run(&run, parts).await })
            .buffered(READ_CONCURRENCY / 4)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await?;
        runs.sort_by(|a, b| (a.observed_at, &a.id).cmp(&(b.observed_at, &b.id)));
        Ok(runs)
    }

    /// The newest complete run taken at or before `at` (or ever).
    ///
    /// Run ids start with the second their run started, so runs are read newest second
    /// first and the search stops at the first second that holds a complete run taken at
    /// or before `at`: a daily schedule would otherwise read a year of snapshots. Every run
    /// of that second is read, since ids resolve only to the second.
    pub async fn latest_run(&self, at: Option<DateTime<Utc>>) -> Result<Option<Run>, StoreError> {
        let mut by_second: BTreeMap<String, BTreeMap<String, Vec<PartId>>> = BTreeMap::new();
        for id in self.part_ids().await? {
            by_second
                .entry(id.second().to_owned())
                .or_default()
                .entry(id.run.clone())
                .or_default()
                .push(id);
        }
        let last_second = at.map(|at| at.format("%Y%m%dT%H%M%SZ").to_string());
        for (second, runs) in by_second.into_iter().rev() {
            if last_second.as_ref().is_some_and(|l| &second > l) {
                continue; // started after `at`: nothing to read.
            }
            let mut best: Option<Run> = None;
            for (run, parts) in runs {
                let Some(run) = self.read_run(&run, parts).await? else {
                    continue;
                };
                let eligible = run.is_complete() && at.is_none_or(|at| run.observed_at <= at);
                if eligible
                    && best
                        .as_ref()
                        .is_none_or(|b| run.observed_at > b.observed_at)
                {
                    best = Some(run);
                }
            }
            if best.is_some() {
                return Ok(best);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_parse_and_round_trip() {
        let p = PartId::parse("20261127T053000Z-3fa2c1").unwrap();
        assert_eq!((p.run.as_str(), p.part), ("20261127T053000Z-3fa2c1", 0));
        assert_eq!(p.second(), "20261127T053000Z");
        let p = PartId::parse("20261127T053000Z-3fa2c1.12").unwrap();
        assert_eq!((p.run.as_str(), p.part), ("20261127T053000Z-3fa2c1", 12));
        assert_eq!(p.id(), "20261127T053000Z-3fa2c1.12");
        for bad in [
            "",
            "x",
            "20261127T053000Z",
            "20261127T053000Z-",
            "20261127T053000Z-3fa2c1.",
            "20261127T053000Z-3fa2c1.0",
            "20261127T053000Z-3fa2c1.01",
            "20261127T053000Z-3fa2c1.x",
            "20261327T053000Z-3fa2c1",
            "20261127T053000Z-../x",
            "20261127T053000Z-3fa2c1/..",
        ] {
            assert!(PartId::parse(bad).is_none(), "{bad:?}");
        }
    }

    fn part(run: &str, n: u32, last: bool, parts: Option<u32>) -> SnapshotPart {
        SnapshotPart {
            version: SNAPSHOT_VERSION,
            id: part_id(run, n),
            source: "r".into(),
            observed_at: Utc::now(),
            run: Some(run.into()),
            part: n,
            last,
            parts,
            repositories: BTreeMap::new(),
        }
    }

    #[test]
    fn a_run_is_complete_only_with_every_part() {
        let id = "20261127T053000Z-3fa2c1";
        let whole = Run::from_parts(
            id,
            vec![
                part(id, 0, false, None),
                part(id, 1, false, None),
                part(id, 2, true, Some(3)),
            ],
        )
        .unwrap();
        assert!(whole.is_complete());
        // The middle part is missing: the last part says three.
        let holed = Run::from_parts(
            id,
            vec![part(id, 0, false, None), part(id, 2, true, Some(3))],
        )
        .unwrap();
        assert!(!holed.is_complete());
        assert_eq!(holed.missing_parts(), vec![1]);
        // Stores written before the count was recorded: the last part's number says it.
        let old =
            Run::from_parts(id, vec![part(id, 0, false, None), part(id, 1, true, None)]).unwrap();
        assert!(old.is_complete());
        let no_last = Run::from_parts(id, vec![part(id, 0, false, None)]).unwrap();
        assert!(!no_last.is_complete());
        assert!(!no_last.header().last);
    }

    #[test]
    fn a_record_of_the_run_s_second_counts_as_newer() {
        let taken: DateTime<Utc> = "2026-11-27T05:30:00.400Z".parse().unwrap();
        let event: DateTime<Utc> = "2026-11-27T05:30:00Z".parse().unwrap();
        assert!(observed_after_run(event, taken), "same second as the run");
        assert!(observed_after_run(taken, taken));
        let before: DateTime<Utc> = "2026-11-27T05:29:59.999Z".parse().unwrap();
        assert!(!observed_after_run(before, taken));
        // An exact time earlier in the same second was seen before the run listed.
        let earlier: DateTime<Utc> = "2026-11-27T05:30:00.100Z".parse().unwrap();
        assert!(!observed_after_run(earlier, taken));
    }
}

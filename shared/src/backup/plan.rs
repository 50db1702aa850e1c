//! The one planner: enumerate a source, compare each repository with what the store
//! holds, and say what to copy. The CLI's local run and the fan-out Lambda both plan
//! through it, so they agree on every edge:
//!
//! - a repository deleted between the listing and its enumeration is *gone*: left out of
//!   the snapshot, named in the plan and in a warning, never a failure of the run;
//! - a tag whose latest record names another digest (it moved) puts the image in the work
//!   list even when the image itself is stored, so the copy records the tag;
//! - an archived ECR image is never sent to a copy: counted up to date when the store has
//!   it, otherwise named as not backed up;
//! - a repository whose state is the one the previous complete run saw, and whose images
//!   that run found all complete in the store ([`Baseline`]), is up to date without a
//!   store request: a daily run pays for what changed, not for the store's history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use super::BackupError;
use crate::copy::CopyRequest;
use crate::filter::ImageFilter;
use crate::oci::digest::Digest;
use crate::oci::names::RepositoryName;
use crate::source::ecr::EcrError;
use crate::source::registry::RegistryError;
use crate::source::{Source, SourceError, SourceImage};
use crate::store::records::{Snapshot, SnapshotRepository, Tree};
use crate::store::{Listing, PartContext, RepositoryListing, Store, StoreError};

/// Repositories enumerated at once.
const REPOSITORY_CONCURRENCY: usize = 4;

/// One repository of the source compared with the store.
#[derive(Debug, Clone)]
pub struct RepositoryPlan {
    /// The repository.
    pub repository: RepositoryName,
    /// True when the repository was deleted after it was listed: nothing else is set.
    pub gone: bool,
    /// Images the source listed, selected or not.
    pub images_seen: usize,
    /// The selected images and tags, as the snapshot records them.
    pub state: crate::store::records::SnapshotRepository,
    /// Images to copy, or to record moved tags for.
    pub work: Vec<CopyRequest>,
    /// Selected images already complete in the store.
    pub up_to_date: usize,
    /// Archived ECR images the store lacks: they cannot be pulled now.
    pub archived: Vec<SourceImage>,
    /// What the store holds of the repository (the copies use it to skip reads).
    pub known: RepositoryListing,
    /// True when the previous run saw the same state and found it complete: the store
    /// was not asked.
    pub unchanged: bool,
}

impl RepositoryPlan {
    /// Images of the state not known to be complete in the store: sent to be copied, or
    /// archived at the source and missing. The next run compares the repository again
    /// while this is not 0.
    pub fn pending(&self) -> u64 {
        (self.work.len() + self.archived.len()) as u64
    }
}

/// What the latest complete run recorded, so that a repository it saw in the same state,
/// complete, needs no store request (`docs/format.md`, "Snapshots").
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Repository → the digest of its tree in that run, when the run found every image
    /// of it complete in the store.
    confirmed: BTreeMap<crate::oci::names::RepositoryName, Digest>,
    /// Every tree of that run: already in the store, never written again.
    trees: std::collections::HashSet<Digest>,
    /// The run itself (its parts; no tree read).
    run: Option<crate::store::Run>,
}

impl Baseline {
    /// The latest complete run of `store` (its parts only; no tree is read).
    pub async fn load(store: &Store) -> Result<Baseline, StoreError> {
        let Some(run) = store.latest_run(None).await? else {
            return Ok(Baseline::default());
        };
        let mut baseline = Baseline::default();
        for (repo, entry) in run.entries() {
            let digest = entry.tree_digest();
            if entry.confirmed() {
                baseline.confirmed.insert(repo.clone(), digest.clone());
            }
            baseline.trees.insert(digest);
        }
        baseline.run = Some(run);
        Ok(baseline)
    }

    /// True when the previous run saw `repo` with the tree `digest` and found it complete.
    pub fn is_confirmed(&self, repo: &crate::oci::names::RepositoryName, digest: &Digest) -> bool {
        self.confirmed.get(repo) == Some(digest)
    }

    /// The run compared with, if the store has a complete one.
    pub fn run(&self) -> Option<&crate::store::Run> {
        self.run.as_ref()
    }

    /// Repositories the baseline knows complete.
    pub fn confirmed_repositories(&self) -> usize {
        self.confirmed.len()
    }
}

/// A whole source compared with the store.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The registry's state at enumeration time.
    pub snapshot: Snapshot,
    /// Images (with their selected tags) to copy or to record tags for.
    pub work: Vec<CopyRequest>,
    /// Images selected and already complete in the store.
    pub up_to_date: usize,
    /// Archived ECR images that cannot be pulled now.
    pub archived: Vec<SourceImage>,
    /// Repositories deleted during the enumeration.
    pub gone: Vec<RepositoryName>,
    /// What the store holds of each planned repository.
    pub known: Listing,
    /// What writing the snapshot needs: trees already stored, images pending per
    /// repository.
    pub context: PartContext,
    /// Repositories found unchanged since the previous run (no store request).
    pub unchanged: usize,
}

impl Plan {
    /// An empty plan that will record into `snapshot`.
    pub fn new(snapshot: Snapshot, baseline: &Baseline) -> Plan {
        Plan {
            snapshot,
            work: Vec::new(),
            up_to_date: 0,
            archived: Vec::new(),
            gone: Vec::new(),
            known: Listing::new(),
            context: PartContext {
                existing_trees: baseline.trees.clone(),
                pending: BTreeMap::new(),
            },
            unchanged: 0,
        }
    }

    /// Adds one repository's comparison.
    pub fn add(&mut self, repository: RepositoryPlan) {
        if repository.gone {
            self.gone.push(repository.repository);
            return;
        }
        let pending = repository.pending();
        if pending > 0 {
            self.context
                .pending
                .insert(repository.repository.clone(), pending);
        }
        self.unchanged += usize::from(repository.unchanged);
        self.snapshot
            .repositories
            .insert(repository.repository.clone(), repository.state);
        self.work.extend(repository.work);
        self.up_to_date += repository.up_to_date;
        self.archived.extend(repository.archived);
        self.known.insert(repository.repository, repository.known);
    }
}

/// Plans a source against a store, as of one time.
#[derive(Debug, Clone, Copy)]
pub struct Planner<'a> {
    source: &'a Source,
    store: &'a Store,
    filter: &'a ImageFilter,
    observed_at: DateTime<Utc>,
    baseline: &'a Baseline,
}

impl<'a> Planner<'a> {
    /// A planner whose work is observed at `observed_at` (the run's time), comparing
    /// with `baseline` first (see [`Baseline::load`]).
    pub fn new(
        source: &'a Source,
        store: &'a Store,
        filter: &'a ImageFilter,
        observed_at: DateTime<Utc>,
        baseline: &'a Baseline,
    ) -> Planner<'a> {
        Planner {
            source,
            store,
            filter,
            observed_at,
            baseline,
        }
    }

    /// The source's repositories that the filter selects, sorted by name, after `after`
    /// when a run continues.
    pub async fn repositories(
        &self,
        after: Option<&RepositoryName>,
    ) -> Result<Vec<RepositoryName>, BackupError> {
        let mut repositories: Vec<RepositoryName> = self
            .source
            .repositories()
            .await
            .map_err(|error| self.source_error(error))?
            .into_iter()
            .filter(|r| self.filter.repository(r))
            .filter(|r| after.is_none_or(|after| r > after))
            .collect();
        repositories.sort();
        Ok(repositories)
    }

    /// Plans `repositories` in their order (so the last one yielded is a clean cut for a
    /// continuation), a few enumerated at once.
    pub fn each(
        &self,
        repositories: Vec<RepositoryName>,
    ) -> impl Stream<Item = Result<RepositoryPlan, BackupError>> + '_ {
        futures::stream::iter(repositories)
            .map(move |repo| self.repository(repo))
            .buffered(REPOSITORY_CONCURRENCY)
    }

    /// Plans every selected repository into one plan recorded as `snapshot`.
    pub async fn plan(&self, snapshot: Snapshot) -> Result<Plan, BackupError> {
        let repositories = self.repositories(None).await?;
        let mut plan = Plan::new(snapshot, self.baseline);
        let mut each = std::pin::pin!(self.each(repositories));
        while let Some(repository) = each.next().await {
            let repository = repository?;
            plan.add(repository);
        }
        Ok(plan)
    }

    /// Enumerates one repository and compares it with the store.
    async fn repository(&self, repo: RepositoryName) -> Result<RepositoryPlan, BackupError> {
        let images = match self.source.images(&repo).await {
            Ok(images) => images,
            Err(e) if is_repository_gone(&e) => {
                tracing::warn!(repository = %repo, "repository was deleted during the run; it is left out of this run's snapshot");
                return Ok(RepositoryPlan {
                    gone: true,
                    ..RepositoryPlan::empty(repo)
                });
            }
            Err(e) => return Err(self.source_error(e)),
        };
        self.compare_images(repo, images).await
    }

    /// Compares one repository's enumerated images with the previous run and, when they
    /// differ from it or it left them pending, with the store.
    pub async fn compare_images(
        &self,
        repo: RepositoryName,
        images: Vec<SourceImage>,
    ) -> Result<RepositoryPlan, BackupError> {
        let state = selected_state(self.filter, &images);
        if self
            .baseline
            .is_confirmed(&repo, &Tree::of(&state).digest())
        {
            return Ok(RepositoryPlan {
                images_seen: images.len(),
                up_to_date: state.images.len(),
                state,
                unchanged: true,
                ..RepositoryPlan::empty(repo)
            });
        }
        let known = self
            .store
            .listing(Some(&repo))
            .await?
            .remove(&repo)
            .unwrap_or_default();
        Ok(compare(self.filter, repo, images, known, self.observed_at))
    }

    fn source_error(&self, error: SourceError) -> BackupError {
        BackupError::Source {
            source_name: self.source.name().to_owned(),
            error,
        }
    }
}

impl RepositoryPlan {
    fn empty(repository: RepositoryName) -> RepositoryPlan {
        RepositoryPlan {
            repository,
            gone: false,
            images_seen: 0,
            state: Default::default(),
            work: Vec::new(),
            up_to_date: 0,
            archived: Vec::new(),
            known: RepositoryListing::default(),
            unchanged: false,
        }
    }
}

/// The state a snapshot records for a repository: the images the filter selects, with
/// their selected tags.
pub fn selected_state(filter: &ImageFilter, images: &[SourceImage]) -> SnapshotRepository {
    let mut state = SnapshotRepository::default();
    for image in images {
        let Some(tags) = filter.select_tags(&image.tags) else {
            continue;
        };
        state.images.push(image.digest.clone());
        for t in tags {
            state.tags.insert(t, image.digest.clone());
        }
    }
    state
}

/// True when enumerating a repository failed because the repository no longer exists:
/// ECR's `RepositoryNotFoundException`, or a registry's 404 on its tag list.
pub fn is_repository_gone(error: &SourceError) -> bool {
    match error {
        SourceError::Ecr(EcrError::Call {
            code: Some(code), ..
        }) => code == "RepositoryNotFoundException",
        SourceError::Registry(RegistryError::NotFound { .. }) => true,
        _ => false,
    }
}

/// Compares one repository's images with what the store holds: into the snapshot's
/// state, and into the work list when the store lacks the image or a tag's latest record
/// names another digest.
pub fn compare(
    filter: &ImageFilter,
    repository: RepositoryName,
    images: Vec<SourceImage>,
    known: RepositoryListing,
    observed_at: DateTime<Utc>,
) -> RepositoryPlan {
    let mut plan = RepositoryPlan {
        images_seen: images.len(),
        ..RepositoryPlan::empty(repository)
    };
    for image in images {
        let Some(tags) = filter.select_tags(&image.tags) else {
            continue;
        };
        plan.state.images.push(image.digest.clone());
        for t in &tags {
            plan.state.tags.insert(t.clone(), image.digest.clone());
        }
        let stored = known.images.contains_key(&image.digest);
        if image.archived {
            // ECR cannot serve it until it is restored to ACTIVE. Backed up already, it
            // is restorable (the snapshot carries its tags); otherwise it is named as not
            // backed up, never sent to a worker that could only fail on it.
            if stored {
                plan.up_to_date += 1;
            } else {
                plan.archived.push(image);
            }
            continue;
        }
        let complete = stored
            && tags.iter().all(|t| {
                known
                    .tag_as_of(t, None)
                    .is_some_and(|e| e.digest == image.digest)
            });
        if complete {
            plan.up_to_date += 1;
        } else {
            plan.work.push(CopyRequest {
                repository: plan.repository.clone(),
                digest: image.digest,
                tags,
                observed_at,
            });
        }
    }
    plan.known = known;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Digest;
    use crate::store::TagEntry;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn image(repo: &RepositoryName, name: &[u8], tag: &str, archived: bool) -> SourceImage {
        SourceImage {
            repository: repo.clone(),
            digest: Digest::of(name),
            tags: vec![tag.parse().unwrap()],
            media_type: None,
            archived,
        }
    }

    /// An archived image missing from the store is named, not sent to a worker and not
    /// counted as backed up; one already backed up is restorable, so it is up to date.
    #[test]
    fn an_archived_image_is_named_unless_it_is_already_backed_up() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let taken = at("2026-11-27T05:30:00.400Z");
        let mut known = RepositoryListing::default();
        known.images.insert(Digest::of(b"kept"), taken);
        let images = vec![
            image(&repo, b"cold", "old", true),
            image(&repo, b"kept", "older", true),
            image(&repo, b"live", "v1", false),
        ];
        let mut plan = Plan::new(Snapshot::new("r".into(), taken), &Baseline::default());
        plan.add(compare(
            &ImageFilter::default(),
            repo.clone(),
            images,
            known,
            taken,
        ));
        assert_eq!(
            plan.archived.iter().map(|i| &i.digest).collect::<Vec<_>>(),
            vec![&Digest::of(b"cold")]
        );
        assert_eq!(
            plan.work.iter().map(|r| &r.digest).collect::<Vec<_>>(),
            vec![&Digest::of(b"live")]
        );
        assert_eq!(plan.up_to_date, 1, "the archived image already backed up");
        // The snapshot still says what the registry holds, archived images included.
        assert_eq!(plan.snapshot.repositories[&repo].images.len(), 3);
    }

    /// A stored image whose tag's latest record names another digest is copied again, so
    /// that the copy records the tag; one whose tags all agree is up to date.
    #[test]
    fn a_moved_tag_puts_a_stored_image_in_the_work_list() {
        let repo: RepositoryName = "team/app".parse().unwrap();
        let taken = at("2026-11-27T05:30:00Z");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut known = RepositoryListing::default();
        known.images.insert(a.clone(), taken);
        known.images.insert(b.clone(), taken);
        let entry = |digest: &Digest| TagEntry {
            digest: digest.clone(),
            observed_at: at("2026-11-26T05:30:00Z"),
            written_at: at("2026-11-26T05:30:01Z"),
        };
        known
            .tags
            .insert("latest".parse().unwrap(), vec![entry(&a)]);
        known.tags.insert("v1".parse().unwrap(), vec![entry(&a)]);
        let images = vec![
            image(&repo, b"a", "v1", false),
            image(&repo, b"b", "latest", false),
        ];
        let plan = compare(&ImageFilter::default(), repo, images, known, taken);
        assert_eq!(plan.up_to_date, 1);
        assert_eq!(
            plan.work.iter().map(|r| &r.digest).collect::<Vec<_>>(),
            vec![&b],
            "latest moved from a to b"
        );
    }

    /// Only "the repository does not exist" is gone; other failures fail the run.
    #[test]
    fn only_a_missing_repository_is_gone() {
        let gone = SourceError::Registry(RegistryError::NotFound {
            op: "listing tags",
            target: "team/app".into(),
        });
        assert!(is_repository_gone(&gone));
        let ecr = |code: &str| {
            SourceError::Ecr(EcrError::Call {
                op: "DescribeImages",
                target: "team/app".into(),
                code: Some(code.into()),
                message: "x".into(),
            })
        };
        assert!(is_repository_gone(&ecr("RepositoryNotFoundException")));
        assert!(!is_repository_gone(&ecr("AccessDeniedException")));
        assert!(!is_repository_gone(&ecr("ImageNotFoundException")));
    }
}

//! Which images a restore pushes, and under which repository names.

use std::collections::BTreeMap;

use crate::oci::digest::Digest;
use crate::oci::names::{NameError, RepositoryName, Tag};
use crate::wayback::inventory::TagView;

use super::{RestoreError, RestoreOptions};

/// `--rename OLD_PREFIX=NEW_PREFIX`: repositories starting with `OLD_PREFIX` are restored
/// under `NEW_PREFIX` instead; others keep their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    from: String,
    to: String,
}

impl Rename {
    /// Parses `OLD=NEW` (`=NEW` prefixes every repository).
    pub fn parse(text: &str) -> Result<Rename, RestoreError> {
        let (from, to) = text.split_once('=').ok_or_else(|| RestoreError::Rename {
            rename: text.into(),
            reason: "expected OLD_PREFIX=NEW_PREFIX".into(),
        })?;
        Ok(Rename {
            from: from.into(),
            to: to.into(),
        })
    }

    /// The repository's name in the target.
    pub fn apply(&self, repo: &RepositoryName) -> Result<RepositoryName, NameError> {
        match repo.as_str().strip_prefix(&self.from) {
            Some(rest) => format!("{}{rest}", self.to).parse(),
            None => Ok(repo.clone()),
        }
    }
}

/// One image to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreImage {
    /// Its repository in the store.
    pub repository: RepositoryName,
    /// Its repository in the target.
    pub target_repository: RepositoryName,
    /// The manifest or index digest.
    pub digest: Digest,
    /// Tags to point at it (empty: restored by digest only).
    pub tags: Vec<Tag>,
}

/// Picks the images of `view` that the options select, grouped by image.
pub fn select(view: &TagView, options: &RestoreOptions) -> Result<Vec<RestoreImage>, RestoreError> {
    let filter = &options.filter;
    let mut by_image: BTreeMap<(RepositoryName, Digest), Vec<Tag>> = BTreeMap::new();
    for ((repo, tag), digest) in &view.tags {
        if filter.repository(repo) && filter.tag(tag) {
            by_image
                .entry((repo.clone(), digest.clone()))
                .or_default()
                .push(tag.clone());
        }
    }
    if options.include_untagged && !filter.has_tag_pattern() {
        for (repo, digests) in view.untagged() {
            if filter.repository(&repo) {
                for d in digests {
                    by_image.entry((repo.clone(), d)).or_default();
                }
            }
        }
    }
    by_image
        .into_iter()
        .map(|((repository, digest), tags)| {
            let target_repository = match &options.rename {
                Some(rule) => rule.apply(&repository).map_err(|e| RestoreError::Rename {
                    rename: format!("{}={}", rule.from, rule.to),
                    reason: format!("{repository}: {e}"),
                })?,
                None => repository.clone(),
            };
            Ok(RestoreImage {
                repository,
                target_repository,
                digest,
                tags,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rewrites_prefixes_only() {
        let rule = Rename::parse("team/=restored/team/").unwrap();
        let r = |s: &str| s.parse::<RepositoryName>().unwrap();
        assert_eq!(rule.apply(&r("team/app")).unwrap(), r("restored/team/app"));
        assert_eq!(rule.apply(&r("other")).unwrap(), r("other"));
        assert!(Rename::parse("nothing").is_err());
        assert!(Rename::parse("a=B/").unwrap().apply(&r("a/x")).is_err());
        assert_eq!(
            Rename::parse("=dr/").unwrap().apply(&r("x")).unwrap(),
            r("dr/x")
        );
    }
}

//! Which repositories and tags a run includes: `--repository GLOB`,
//! `--exclude-repository GLOB`, `--tag REGEX`.

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;

use crate::oci::names::{RepositoryName, Tag};

/// A filter pattern that does not compile.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A repository glob is malformed.
    #[error("invalid repository pattern {pattern:?}")]
    Glob {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        #[source]
        source: globset::Error,
    },
    /// The tag regex is malformed.
    #[error("invalid tag pattern {pattern:?}")]
    Regex {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        #[source]
        source: regex::Error,
    },
}

/// The filter as given by a user: globs and a regex, serializable into queue messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterSpec {
    /// Repository globs to include (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Repository globs to leave out.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "excludeRepositories"
    )]
    pub exclude_repositories: Vec<String>,
    /// Tag regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl FilterSpec {
    /// Parses comma-separated lists, as given in environment variables.
    pub fn from_lists(include: &str, exclude: &str, tag: &str) -> FilterSpec {
        let split = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        FilterSpec {
            repositories: split(include),
            exclude_repositories: split(exclude),
            tag: Some(tag.trim().to_owned()).filter(|t| !t.is_empty()),
        }
    }

    /// Compiles the patterns.
    pub fn compile(&self) -> Result<ImageFilter, FilterError> {
        ImageFilter::new(
            &self.repositories,
            &self.exclude_repositories,
            self.tag.as_deref(),
        )
    }
}

/// Repository and tag selection.
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    tag: Option<Regex>,
}

fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>, FilterError> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.trim().is_empty()).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(Glob::new(p.trim()).map_err(|source| FilterError::Glob {
            pattern: p.clone(),
            source,
        })?);
    }
    builder
        .build()
        .map(Some)
        .map_err(|source| FilterError::Glob {
            pattern: String::new(),
            source,
        })
}

impl ImageFilter {
    /// Builds a filter; empty lists and an empty tag pattern select everything.
    pub fn new(
        include: &[String],
        exclude: &[String],
        tag: Option<&str>,
    ) -> Result<Self, FilterError> {
        let tag =
            match tag.map(str::trim).filter(|t| !t.is_empty()) {
                None => None,
                // Anchored, so `v1` does not select `v10`.
                Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|source| {
                    FilterError::Regex {
                        pattern: p.into(),
                        source,
                    }
                })?),
            };
        Ok(ImageFilter {
            include: glob_set(include)?,
            exclude: glob_set(exclude)?,
            tag,
        })
    }

    /// True if the repository is selected.
    pub fn repository(&self, repo: &RepositoryName) -> bool {
        self.include
            .as_ref()
            .is_none_or(|g| g.is_match(repo.as_str()))
            && !self
                .exclude
                .as_ref()
                .is_some_and(|g| g.is_match(repo.as_str()))
    }

    /// True if a tag pattern is set (untagged images are then left out).
    pub fn has_tag_pattern(&self) -> bool {
        self.tag.is_some()
    }

    /// True if the tag is selected.
    pub fn tag(&self, tag: &Tag) -> bool {
        self.tag.as_ref().is_none_or(|r| r.is_match(tag.as_str()))
    }

    /// Keeps the selected tags of an image; `None` if the image is not selected at all.
    pub fn select_tags(&self, tags: &[Tag]) -> Option<Vec<Tag>> {
        if self.tag.is_none() {
            return Some(tags.to_vec());
        }
        let kept: Vec<Tag> = tags.iter().filter(|t| self.tag(t)).cloned().collect();
        (!kept.is_empty()).then_some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RepositoryName {
        s.parse().unwrap()
    }

    #[test]
    fn globs_and_tag_regex() {
        let f = ImageFilter::new(
            &["team/*".into()],
            &["team/secret*".into()],
            Some("v[0-9]+"),
        )
        .unwrap();
        assert!(f.repository(&r("team/app/api")));
        assert!(!f.repository(&r("team/secret")));
        assert!(!f.repository(&r("other")));
        assert!(f.tag(&"v1".parse().unwrap()));
        assert!(!f.tag(&"v1-rc".parse().unwrap()));
        assert_eq!(f.select_tags(&[]), None);
        let all = FilterSpec::from_lists("", " ", "").compile().unwrap();
        assert!(all.repository(&r("x")));
        assert_eq!(all.select_tags(&[]), Some(vec![]));
    }

    #[test]
    fn bad_patterns_name_themselves() {
        let e = ImageFilter::new(&["a[".into()], &[], None).unwrap_err();
        assert!(e.to_string().contains("a["), "{e}");
        let e = ImageFilter::new(&[], &[], Some("(")).unwrap_err();
        assert!(e.to_string().contains("invalid tag pattern"), "{e}");
    }
}

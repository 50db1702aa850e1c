//! Repository names and tags, validated against the OCI distribution grammar.
//!
//! The grammar is what makes them safe as store keys: every path segment starts with an
//! alphanumeric character, so no name can be `..`, start with `/`, or collide with the
//! `_`-prefixed directories of the store layout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a repository name or tag was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The repository name breaks the OCI grammar.
    #[error("invalid repository name {name:?}: {reason}")]
    Repository {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tag breaks the OCI grammar.
    #[error("invalid tag {tag:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag {
        /// The refused tag.
        tag: String,
    },
}

/// Longest repository name ECR accepts.
pub const MAX_REPOSITORY_LEN: usize = 256;

/// A repository name such as `team/app/api`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepositoryName(String);

impl RepositoryName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let err = |reason| NameError::Repository {
            name: name.into(),
            reason,
        };
        if name.is_empty() {
            return Err(err("empty"));
        }
        if name.len() > MAX_REPOSITORY_LEN {
            return Err(err("longer than 256 characters"));
        }
        if !name.split('/').all(valid_component) {
            return Err(err(
                "each /-separated part must be lowercase letters and digits, joined by '.', '_', '__' or dashes",
            ));
        }
        Ok(RepositoryName(name.into()))
    }
}

impl TryFrom<String> for RepositoryName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RepositoryName> for String {
    fn from(r: RepositoryName) -> String {
        r.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A tag such as `v1.2.3`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(tag: &str) -> Result<Self, Self::Err> {
        let b = tag.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(tag.into()))
        } else {
            Err(NameError::Tag { tag: tag.into() })
        }
    }
}

impl TryFrom<String> for Tag {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> String {
        t.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_grammar() {
        for ok in ["a", "team/app/api", "a.b_c__d---e", "x9/y-z"] {
            ok.parse::<RepositoryName>().unwrap();
        }
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            ok.parse::<Tag>().unwrap();
        }
    }

    #[test]
    fn refuses_names_that_could_escape_a_key() {
        for bad in [
            "",
            "..",
            "a/../b",
            "/a",
            "a/",
            "a//b",
            "A",
            "a%2f",
            "_tags",
            "a/_images",
            "é",
            "a b",
            "a\\b",
            ".a",
            "a.",
            "a___b",
        ] {
            assert!(bad.parse::<RepositoryName>().is_err(), "{bad:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".x",
            "a/b",
            "a%b",
            "é",
            "a:b",
            &"t".repeat(129),
        ] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(257).parse::<RepositoryName>().is_err());
    }
}

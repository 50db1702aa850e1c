//! Content digests (`sha256:<hex>`) and a verifier that hashes bytes as they stream past.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a digest string or a stream of bytes was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The text is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {text:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid {
        /// The text that was parsed.
        text: String,
    },
    /// The algorithm is well-formed but not one this tool stores.
    #[error("unsupported digest algorithm in {text:?}: only sha256 is supported")]
    Unsupported {
        /// The text that was parsed.
        text: String,
    },
    /// The bytes hash to something else than they were announced as.
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes)")]
    Mismatch {
        /// The digest the bytes were supposed to have.
        expected: Digest,
        /// The digest the bytes really have.
        actual: Digest,
        /// How many bytes were hashed.
        size: u64,
    },
    /// The byte count differs from the descriptor's size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The digest of the object.
        digest: Digest,
        /// The size the descriptor announced.
        expected: u64,
        /// The size received.
        actual: u64,
    },
}

/// A validated `sha256:<hex>` digest; the only algorithm OCI registries use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Computes the digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// Checks that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestError> {
        let actual = Digest::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.clone(),
                actual,
                size: bytes.len() as u64,
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::Invalid { text: text.into() });
        };
        if algorithm != "sha256" {
            let known_shape = !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
            return Err(if known_shape && !hex.is_empty() {
                DigestError::Unsupported { text: text.into() }
            } else {
                DigestError::Invalid { text: text.into() }
            });
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Invalid { text: text.into() });
        }
        Ok(Digest { hex: hex.into() })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes bytes as they pass and checks the result against an expected digest and size.
pub struct DigestVerifier {
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Sha256,
    size: u64,
}

impl DigestVerifier {
    /// Starts verifying bytes that should hash to `expected` (and, if known, have `size` bytes).
    pub fn new(expected: Digest, expected_size: Option<u64>) -> Self {
        DigestVerifier {
            expected,
            expected_size,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Feeds the next chunk; fails early once more bytes arrived than announced.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), DigestError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        match self.expected_size {
            Some(expected) if self.size > expected => Err(DigestError::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: self.size,
            }),
            _ => Ok(()),
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finishes: Ok with the byte count if size and digest both match.
    pub fn finish(self) -> Result<u64, DigestError> {
        if let Some(expected) = self.expected_size {
            if expected != self.size {
                return Err(DigestError::SizeMismatch {
                    digest: self.expected,
                    expected,
                    actual: self.size,
                });
            }
        }
        let actual = Digest {
            hex: hex::encode(self.hasher.finalize()),
        };
        if actual == self.expected {
            Ok(self.size)
        } else {
            Err(DigestError::Mismatch {
                expected: self.expected,
                actual,
                size: self.size,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of(b""), d);
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "sha256:../../etc/passwd",
            "e3b0",
            &EMPTY.to_uppercase(),
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::Unsupported { .. })
        ));
    }

    #[test]
    fn verifier_accepts_matching_bytes_in_chunks() {
        let d = Digest::of(b"hello world");
        let mut v = DigestVerifier::new(d, Some(11));
        v.update(b"hello ").unwrap();
        v.update(b"world").unwrap();
        assert_eq!(v.finish().unwrap(), 11);
    }

    #[test]
    fn verifier_refuses_flipped_byte_and_wrong_size() {
        let d = Digest::of(b"hello world");
        let mut v = DigestVerifier::new(d.clone(), None);
        v.update(b"hello World").unwrap();
        assert!(matches!(v.finish(), Err(DigestError::Mismatch { .. })));

        let mut v = DigestVerifier::new(d.clone(), Some(5));
        assert!(matches!(
            v.update(b"hello world"),
            Err(DigestError::SizeMismatch { .. })
        ));

        let mut v = DigestVerifier::new(d, Some(11));
        v.update(b"hello").unwrap();
        assert!(matches!(
            v.finish(),
            Err(DigestError::SizeMismatch { actual: 5, .. })
        ));
    }
}

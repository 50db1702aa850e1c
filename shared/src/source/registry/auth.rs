//! Registry credentials and `WWW-Authenticate` challenges.
//!
//! Secrets never reach a log: [`Secret`] prints `<redacted>`, and request errors are
//! stripped of URLs before they are kept.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use base64::Engine;

use super::RegistryError;

/// A string that must not be printed (password, token, `Authorization` value).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for building a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to log in to a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    Anonymous,
    /// User name and password (ECR: `AWS` and the authorization token's password).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

impl Credentials {
    /// Parses `user:password`.
    pub fn from_user_password(text: &str) -> Option<Credentials> {
        let (username, password) = text.split_once(':')?;
        Some(Credentials::Basic {
            username: username.into(),
            password: Secret::new(password),
        })
    }

    /// The `Authorization: Basic` value, if these are Basic credentials.
    pub fn basic_header(&self) -> Option<Secret> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                Some(Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )))
            }
        }
    }
}

/// Where credentials come from; ECR's expire and are fetched again on demand.
#[async_trait]
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// Current credentials; `refresh` asks for new ones after a 401.
    async fn credentials(&self, refresh: bool) -> Result<Credentials, RegistryError>;
}

/// Credentials that never change.
#[derive(Debug, Clone)]
pub struct StaticCredentials(pub Credentials);

#[async_trait]
impl CredentialSource for StaticCredentials {
    async fn credentials(&self, _refresh: bool) -> Result<Credentials, RegistryError> {
        Ok(self.0.clone())
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to ask for.
        service: Option<String>,
        /// Scope named by the registry.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value; `None` for schemes this client does not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_commas_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="ecr""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Credentials::from_user_password("AWS:hunter2").unwrap();
        let printed = format!("{c:?} {:?}", c.basic_header());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("QVdTOmh1bnRlcjI"), "{printed}");
    }
}

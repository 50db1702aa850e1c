//! Credentials people already have: the containers `auth.json` that podman and skopeo
//! write, and Docker's `config.json` with its `auths`, `credsStore` and `credHelpers`
//! (which run `docker-credential-<name>` programs, `docker-credential-ecr-login`
//! among them).
//!
//! Files are searched in the order skopeo searches them: `--authfile`, then
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, then
//! `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`). In one file a registry's
//! `credHelpers` entry wins over `auths`, and `auths` over `credsStore`, as in Docker.
//! The first file with an answer for the registry is used; what was used is returned in
//! words that name no secret, for `-v`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::auth::{Credentials, Secret};

/// What `docker-credential-*` programs print when they hold nothing for a registry (the
/// credential-helper protocol's documented "not found" answer).
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// A credentials file or helper could not be used. Each names the file or program.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file exists but could not be read.
    #[error("reading credentials file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON it should be.
    #[error("credentials file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its secrets).
        reason: String,
    },
    /// A credential helper could not be run, or failed.
    #[error("credential helper {program} failed for {registry}: {reason}")]
    Helper {
        /// The program, e.g. `docker-credential-ecr-login`.
        program: String,
        /// The registry asked about.
        registry: String,
        /// What went wrong (its exit status and first line of stderr).
        reason: String,
    },
}

/// Credentials found for a registry, and where.
#[derive(Debug, Clone)]
pub struct FoundCredentials {
    /// The credentials.
    pub credentials: Credentials,
    /// Where they came from, e.g. `/root/.docker/config.json (auths)` or
    /// `docker-credential-ecr-login (credHelpers in /root/.docker/config.json)`.
    pub origin: String,
}

/// The files searched when no `--authfile` is given, in order, from the environment.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(path) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => files.push(Path::new(&dir).join("config.json")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                files.push(Path::new(&home).join(".docker/config.json"));
            }
        }
    }
    files
}

/// Looks `registry` (`host[:port]`) up in `files`, in order; files that do not exist are
/// passed over.
pub fn find_credentials(
    registry: &str,
    files: &[PathBuf],
) -> Result<Option<FoundCredentials>, AuthFileError> {
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(AuthFileError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        if let Some(found) = lookup_in(registry, path, &text)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The registry part of an `auths` key: `https://host/v1/` and `host` both name `host`.
fn registry_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn lookup_in(
    registry: &str,
    path: &Path,
    text: &str,
) -> Result<Option<FoundCredentials>, AuthFileError> {
    let invalid = |reason: String| AuthFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let object = |name: &str| config.get(name).and_then(|v| v.as_object());
    let in_file = path.display();

    if let Some(helper) = object("credHelpers")
        .and_then(|helpers| helpers.iter().find(|(k, _)| registry_of_key(k) == registry))
        .and_then(|(_, v)| v.as_str())
    {
        if let Some(credentials) = run_helper(helper, registry)? {
            return Ok(Some(FoundCredentials {
                credentials,
                origin: format!("docker-credential-{helper} (credHelpers in {in_file})"),
            }));
        }
    }
    if let Some((key, entry)) =
        object("auths").and_then(|auths| auths.iter().find(|(k, _)| registry_of_key(k) == registry))
    {
        if let Some(credentials) =
            auth_entry(entry).map_err(|reason| invalid(format!("auths entry {key:?}: {reason}")))?
        {
            return Ok(Some(FoundCredentials {
                credentials,
                origin: format!("{in_file} (auths)"),
            }));
        }
    }
    if let Some(store) = config.get("credsStore").and_then(|v| v.as_str()) {
        if let Some(credentials) = run_helper(store, registry)? {
            return Ok(Some(FoundCredentials {
                credentials,
                origin: format!("docker-credential-{store} (credsStore in {in_file})"),
            }));
        }
    }
    Ok(None)
}

/// One `auths` entry: `auth` (base64 of `user:password`) or `username` and `password`.
/// An entry with neither (Docker writes `{}` when a helper holds the secret) is no answer.
fn auth_entry(entry: &serde_json::Value) -> Result<Option<Credentials>, String> {
    if let Some(auth) = entry.get("auth").and_then(|v| v.as_str()) {
        if auth.is_empty() {
            return Ok(None);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not base64".to_owned())?;
        let text = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_owned())?;
        return Credentials::from_user_password(&text)
            .map(Some)
            .ok_or_else(|| "\"auth\" is not base64 of USER:PASSWORD".to_owned());
    }
    match (
        entry.get("username").and_then(|v| v.as_str()),
        entry.get("password").and_then(|v| v.as_str()),
    ) {
        (Some(username), Some(password)) => Ok(Some(Credentials::Basic {
            username: username.to_owned(),
            password: Secret::new(password),
        })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<name> get` with the registry on stdin (the credential-helper
/// protocol); `None` when the helper holds nothing for it.
fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>, AuthFileError> {
    let program = format!("docker-credential-{name}");
    let failed = |reason: String| AuthFileError::Helper {
        program: program.clone(),
        registry: registry.to_owned(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it ({e})")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(registry.as_bytes())
        .map_err(|e| failed(format!("cannot write to it ({e})")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot read its answer ({e})")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's one structured answer is this exact text: nothing stored.
        if stdout.trim() == HELPER_NOT_FOUND {
            return Ok(None);
        }
        // Its own words, first line only: helpers do not print secrets on failure, and a
        // long dump helps nobody.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr.lines().next().unwrap_or("").trim().to_owned();
        return Err(failed(format!("exit status {} ({said})", out.status)));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer = serde_json::from_str(&stdout)
        .map_err(|_| failed("its answer is not {\"Username\", \"Secret\"} JSON".into()))?;
    Ok(Some(Credentials::Basic {
        username: answer.username,
        password: Secret::new(answer.secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &serde_json::Value) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    fn user(found: &FoundCredentials) -> String {
        match &found.credentials {
            Credentials::Basic { username, .. } => username.clone(),
            Credentials::Anonymous => "anonymous".into(),
        }
    }

    #[test]
    fn auths_keys_name_their_registry_with_or_without_scheme_and_path() {
        assert_eq!(
            registry_of_key("https://r.example:5000/v1/"),
            "r.example:5000"
        );
        assert_eq!(registry_of_key("r.example"), "r.example");
        assert_eq!(registry_of_key("http://127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn the_first_file_with_an_answer_wins_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:secret-a");
        let first = write(
            dir.path(),
            "auth.json",
            &serde_json::json!({"auths": {"other.example": {"auth": auth}}}),
        );
        let second = write(
            dir.path(),
            "config.json",
            &serde_json::json!({"auths": {"https://r.example/v1/": {"username": "bob", "password": "secret-b"}}}),
        );
        let missing = dir.path().join("absent.json");
        let found = find_credentials("r.example", &[missing, first, second.clone()])
            .unwrap()
            .expect("found");
        assert_eq!(user(&found), "bob");
        assert_eq!(found.origin, format!("{} (auths)", second.display()));
        assert!(!format!("{found:?}").contains("secret-b"));
        assert!(find_credentials("nowhere.example", &[second])
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_bad_entry_is_an_error_naming_the_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "config.json",
            &serde_json::json!({"auths": {"r.example": {"auth": "not base64 !!"}}}),
        );
        let e = find_credentials("r.example", std::slice::from_ref(&path)).unwrap_err();
        let text = crate::error::error_chain(&e);
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("base64"), "{text}");
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        assert!(matches!(
            find_credentials("r.example", &[broken]),
            Err(AuthFileError::Invalid { .. })
        ));
    }

    #[test]
    fn a_helper_that_cannot_run_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "config.json",
            &serde_json::json!({"credHelpers": {"r.example": "no-such-helper-for-ecr-backup"}}),
        );
        let e = find_credentials("r.example", &[path]).unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-no-such-helper-for-ecr-backup"),
            "{e}"
        );
    }
}

//! Which credentials a command logs in to a registry with: the ones given on the command
//! line, else the ones people already have in their container tools' files (see
//! `ecr_backup_shared::source::registry::auth_files`), else none. ECR registries log in
//! with ECR tokens by themselves, so their files are read only when `--authfile` names one.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ecr_backup_shared::source::ecr::EcrRegistry;
use ecr_backup_shared::source::registry::auth_files::{default_auth_files, find_credentials};
use ecr_backup_shared::source::registry::{parse_registry_url, Credentials, Secret};

/// What the command line says about credentials for one registry.
pub struct CredentialFlags<'a> {
    /// `USER:PASSWORD`, and the flag that gave it (for error messages).
    pub user_password: Option<(&'a str, &'static str)>,
    /// The user name for `--password-stdin`.
    pub username: Option<&'a str>,
    /// Read the password from stdin.
    pub password_stdin: bool,
    /// A credentials file to use instead of the default ones.
    pub authfile: Option<&'a PathBuf>,
}

/// Resolves the credentials for `registry` (as the user wrote it), logging at `-v` where
/// they came from (never the secret).
pub fn resolve(registry: &str, flags: &CredentialFlags<'_>) -> Result<Option<Credentials>> {
    if let Some((text, flag)) = flags.user_password {
        tracing::info!(registry, "using credentials from {flag}");
        return Credentials::from_user_password(text)
            .map(Some)
            .with_context(|| format!("{flag} must be USER:PASSWORD"));
    }
    if flags.password_stdin {
        let Some(username) = flags.username else {
            bail!("--password-stdin needs the user name: add --username USER");
        };
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            bail!("--password-stdin: stdin held no password");
        }
        tracing::info!(registry, "using credentials from --password-stdin");
        return Ok(Some(Credentials::Basic {
            username: username.to_owned(),
            password: Secret::new(password),
        }));
    }
    if flags.username.is_some() {
        bail!("--username goes with --password-stdin");
    }
    let files = match flags.authfile {
        Some(path) => {
            if !path.exists() {
                bail!("--authfile {}: no such file", path.display());
            }
            vec![path.clone()]
        }
        None if EcrRegistry::from_host(registry).is_some() => return Ok(None),
        None => default_auth_files(),
    };
    let url = parse_registry_url(registry)?;
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return Ok(None),
    };
    match find_credentials(&host, &files)
        .with_context(|| format!("finding credentials for {host}"))?
    {
        Some(found) => {
            tracing::info!(registry = %host, "using credentials from {}", found.origin);
            Ok(Some(found.credentials))
        }
        None => {
            if flags.authfile.is_some() {
                bail!(
                    "--authfile {} holds no credentials for {host}",
                    files[0].display()
                );
            }
            tracing::info!(registry = %host, "no credentials found; connecting anonymously");
            Ok(None)
        }
    }
}

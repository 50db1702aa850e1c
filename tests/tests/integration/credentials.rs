//! Credentials people already have: Docker's config.json (`auths`, `credHelpers`,
//! `credsStore` with a small credential-helper script), the containers auth.json
//! (`REGISTRY_AUTH_FILE`, `--authfile`), and `--password-stdin`, each against the
//! registry with htpasswd auth, through the real CLI.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use ecr_backup_tests::corpus::{push_small_image, repository};
use ecr_backup_tests::servers::{self, TestServers};

use crate::common::cli_binary;

/// Runs `ecr-backup -v backup` of `prefix` from the auth registry with `args` and `env`,
/// with HOME pointing at `home` (so no file of the machine's user is read) and `stdin`.
fn backup(
    servers: &TestServers,
    home: &Path,
    prefix: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: &str,
) -> (i32, String) {
    let store = home.join("store");
    let mut command = Command::new(cli_binary());
    command
        .args(["-v", "backup", "--source", &servers.auth_registry])
        .args(["--store", store.to_str().unwrap()])
        .args(["--repository", &format!("{prefix}/**")])
        .args(args)
        .env("HOME", home)
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run ecr-backup");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn host(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_docker_and_containers_files_helpers_and_stdin() {
    let servers = TestServers::from_env();
    let prefix = servers::unique_prefix("creds");
    let repo = repository(&prefix, "app").unwrap();
    push_small_image(&servers.auth_client(), &repo, "v1", 16 * 1024)
        .await
        .unwrap();
    let registry = host(&servers.auth_registry);
    let (user, password) = servers.auth_credentials.split_once(':').unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(&servers.auth_credentials);
    let no_secret = |stderr: &str, how: &str| {
        assert!(
            !stderr.contains(password),
            "{how}: the password is printed: {stderr}"
        );
        assert!(
            !stderr.contains(&auth),
            "{how}: the auth string is printed: {stderr}"
        );
    };

    // Nothing anywhere: the registry refuses, as before.
    let home = tempfile::tempdir().unwrap();
    let (code, stderr) = backup(&servers, home.path(), &prefix, &[], &[], "");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("requires credentials"), "{stderr}");

    // ~/.docker/config.json, auths with a URL-shaped key.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".docker")).unwrap();
    let config = home.path().join(".docker/config.json");
    std::fs::write(
        &config,
        serde_json::json!({"auths": {format!("http://{registry}/v1/"): {"auth": auth}}})
            .to_string(),
    )
    .unwrap();
    let (code, stderr) = backup(&servers, home.path(), &prefix, &[], &[], "");
    assert_eq!(code, 0, "config.json auths: {stderr}");
    assert!(
        stderr.contains(&format!(
            "using credentials from {} (auths)",
            config.display()
        )),
        "-v says which credentials: {stderr}"
    );
    no_secret(&stderr, "config.json");

    // credHelpers: a docker-credential-* program found on PATH, given the registry on
    // stdin. It also wins over a wrong auths entry in the same file.
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-ecrbtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n[ \"$server\" = \"{registry}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = home.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{user}:wrong"));
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({
            "credHelpers": {registry.clone(): "ecrbtest"},
            "auths": {registry.clone(): {"auth": wrong}},
        })
        .to_string(),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env = [
        ("DOCKER_CONFIG", docker.display().to_string()),
        ("PATH", path.clone()),
    ];
    let (code, stderr) = backup(&servers, home.path(), &prefix, &[], &env, "");
    assert_eq!(code, 0, "credHelpers: {stderr}");
    assert!(
        stderr.contains("using credentials from docker-credential-ecrbtest (credHelpers in"),
        "{stderr}"
    );
    no_secret(&stderr, "credHelpers");

    // credsStore: the same helper for every registry.
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"credsStore": "ecrbtest", "auths": {}}).to_string(),
    )
    .unwrap();
    let (code, stderr) = backup(&servers, home.path(), &prefix, &[], &env, "");
    assert_eq!(code, 0, "credsStore: {stderr}");
    assert!(stderr.contains("(credsStore in"), "{stderr}");

    // The containers auth.json: REGISTRY_AUTH_FILE comes before Docker's file (here the
    // wrong one), and --authfile names one outright.
    let home = tempfile::tempdir().unwrap();
    let auth_json = home.path().join("auth.json");
    std::fs::write(
        &auth_json,
        serde_json::json!({"auths": {registry.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    std::fs::create_dir_all(home.path().join(".docker")).unwrap();
    std::fs::write(
        home.path().join(".docker/config.json"),
        serde_json::json!({"auths": {registry.clone(): {"auth": wrong}}}).to_string(),
    )
    .unwrap();
    let env = [("REGISTRY_AUTH_FILE", auth_json.display().to_string())];
    let (code, stderr) = backup(&servers, home.path(), &prefix, &[], &env, "");
    assert_eq!(code, 0, "REGISTRY_AUTH_FILE: {stderr}");
    assert!(
        stderr.contains(&auth_json.display().to_string()),
        "{stderr}"
    );
    let authfile = auth_json.display().to_string();
    let (code, stderr) = backup(
        &servers,
        home.path(),
        &prefix,
        &["--authfile", &authfile],
        &[],
        "",
    );
    assert_eq!(code, 0, "--authfile: {stderr}");
    // An --authfile without the registry is an error naming both, not a silent fallback.
    let empty = home.path().join("empty.json");
    std::fs::write(&empty, r#"{"auths": {}}"#).unwrap();
    let empty_arg = empty.display().to_string();
    let (code, stderr) = backup(
        &servers,
        home.path(),
        &prefix,
        &["--authfile", &empty_arg],
        &[],
        "",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&empty_arg) && stderr.contains(&registry),
        "{stderr}"
    );

    // --password-stdin, with --username.
    let home = tempfile::tempdir().unwrap();
    let (code, stderr) = backup(
        &servers,
        home.path(),
        &prefix,
        &["--username", user, "--password-stdin"],
        &[],
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "--password-stdin: {stderr}");
    assert!(
        stderr.contains("using credentials from --password-stdin"),
        "{stderr}"
    );
    no_secret(&stderr, "--password-stdin");
    let (code, stderr) = backup(
        &servers,
        home.path(),
        &prefix,
        &["--password-stdin"],
        &[],
        "x\n",
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--username"), "{stderr}");
}

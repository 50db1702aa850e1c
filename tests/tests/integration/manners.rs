//! The CLI's manners, as people who use docker, skopeo and the AWS CLI expect them: a
//! reader that stops early ends the command quietly, an unreachable store or missing AWS
//! settings fail at once with one line saying what to do, and shell completions and a
//! man page come from the command's own definitions.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::*;

/// A directory store whose repository listing is far longer than a pipe holds (64 KiB),
/// so that a reader that stops after one line leaves the command writing to a closed
/// pipe. Only the keys are needed: `ls` lists repositories from the record keys.
fn store_with_many_repositories(root: &Path, n: usize) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for i in 0..n {
        let images = root.join(format!(
            "repositories/team/a-fairly-long-repository-name-{i:05}/_images"
        ));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join(format!("sha256-{:064x}.json", i)), b"{}").unwrap();
    }
}

/// `ecr-backup ls | head -1` through a real shell pipe: the first line arrives, and the
/// command ends with status 0 and nothing on stderr (no broken-pipe panic).
#[test]
fn ls_into_head_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    store_with_many_repositories(&store, 3000);
    let out = Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; "$0" ls --store "$1" | head -n 1"#,
            cli_binary().to_str().unwrap(),
            store.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("REPOSITORY"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.is_empty(), "stderr:\n{stderr}");
}

/// A port on 127.0.0.1 nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs the CLI with only `env` (and `PATH`) in its environment, `HOME` an empty
/// directory: no AWS settings from the machine running the test. Returns (exit code,
/// stdout, stderr, seconds).
fn run_clean(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String, f64) {
    let home = tempfile::tempdir().unwrap();
    let binary = cli_binary();
    let started = Instant::now();
    let out = Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed().as_secs_f64(),
    )
}

/// The `error:` lines of a command's stderr.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// An S3 store at an address nobody answers on fails in a few seconds, not after the
/// SDK's full budget (six attempts with adaptive backoff, about 20 s), with one error
/// naming the store and the endpoint, and each retry shown at `-v` as it happens; for a
/// reader (`ls`) and a writer (`backup`) alike.
#[test]
fn an_unreachable_store_fails_in_seconds_with_one_line_naming_it() {
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let unreachable_registry = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        vec!["-v", "ls", "--store", "s3://backups/ecr"],
        vec![
            "-v",
            "backup",
            "--source",
            unreachable_registry.as_str(),
            "--store",
            "s3://backups/ecr",
        ],
    ] {
        let (code, _, stderr, seconds) = run_clean(&args, &env);
        assert_eq!(code, 2, "{args:?}:\n{stderr}");
        assert!(seconds < 6.0, "{args:?} took {seconds:.1} s:\n{stderr}");
        let errors = error_lines(&stderr);
        assert_eq!(errors.len(), 1, "{args:?}:\n{stderr}");
        assert!(
            errors[0].contains("s3://backups/ecr") && errors[0].contains(&endpoint),
            "{args:?}: {}",
            errors[0]
        );
        assert!(
            !stderr.contains("caused by"),
            "one line, not a dump:\n{stderr}"
        );
        let retries = stderr.matches("retrying S3 request").count();
        assert!(
            (1..=3).contains(&retries),
            "{args:?}: {retries} retries shown:\n{stderr}"
        );
    }
}

/// The environment of a machine with no AWS set-up at all. The instance metadata
/// service (IMDS), the SDK's last place to look for a region and credentials, is pointed
/// at a closed local port: the product must keep asking IMDS (on EC2 that is where an
/// instance's role comes from, so it cannot turn it off), and the test must not depend
/// on whether the machine running it is an EC2 instance with a role.
fn no_aws_setup(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port()),
        ),
        // Should a check be missing, no request may leave the machine.
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", closed_port()),
        ),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Asserts that stderr is one error line with every `needle`, and nothing from the
/// SDK: no IMDS warnings, no raw error dump.
fn assert_one_clear_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} missing: {stderr}");
    }
    for noise in [
        "IMDS",
        "imds",
        "WARN",
        "DispatchFailure",
        "ConstructionFailure",
    ] {
        assert!(!stderr.contains(noise), "{noise:?} in:\n{stderr}");
    }
}

/// S3 with no region anywhere: one line naming `AWS_REGION` and `--region`; and
/// `--region` is then enough to get past it.
#[test]
fn s3_without_a_region_says_to_set_aws_region() {
    let env = no_aws_setup(&[
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]);
    let (code, stdout, stderr, seconds) =
        run_clean(&["ls", "--store", "s3://backups/ecr"], &as_pairs(&env));
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(seconds < 6.0, "took {seconds:.1} s");
    assert_one_clear_line(&stderr, &["s3://backups/ecr", "AWS_REGION", "--region"]);

    let (code, _, stderr, _) = run_clean(
        &["--region", "eu-west-1", "ls", "--store", "s3://backups/ecr"],
        &as_pairs(&env),
    );
    assert_eq!(code, 2, "{stderr}");
    assert_one_clear_line(&stderr, &["cannot reach store s3://backups/ecr"]);
}

/// S3 with a region but no credentials anywhere (no variables, no `~/.aws`, no IMDS):
/// one line naming `AWS_PROFILE` and the key variables.
#[test]
fn s3_without_credentials_says_what_to_set() {
    let env = no_aws_setup(&[("AWS_REGION", "us-east-1".into())]);
    let (code, stdout, stderr, seconds) =
        run_clean(&["ls", "--store", "s3://backups/ecr"], &as_pairs(&env));
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(seconds < 6.0, "took {seconds:.1} s");
    assert_one_clear_line(
        &stderr,
        &["s3://backups/ecr", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"],
    );
}

/// Every subcommand a user can type.
const SUBCOMMANDS: &[&str] = &[
    "backup",
    "redrive",
    "dlq",
    "restore",
    "export",
    "verify",
    "ls",
    "du",
    "completions",
    "man",
];

/// The completion scripts come from the clap definitions: each names every subcommand,
/// and bash accepts its script.
#[test]
fn completion_scripts_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for sub in SUBCOMMANDS {
            assert!(
                script.contains(sub),
                "the {shell} script does not name {sub}"
            );
        }
        let store_flag = if shell == "fish" {
            "-l store"
        } else {
            "--store"
        };
        assert!(script.contains(store_flag), "{shell}: no {store_flag}");
    }
    let (_, script, _) = run_cli(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecr-backup.bash");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$0" && complete -p ecr-backup"#)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ecr-backup"),
        "bash did not load the script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manual page is roff that `man` renders, with every subcommand in it; `--dir`
/// writes a page per subcommand.
#[test]
fn the_man_page_renders() {
    let (code, page, stderr) = run_cli(&["man"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "not roff:\n{page:.200}"
    );
    assert!(page.contains(".TH ecr-backup 1"), "{page:.400}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecr-backup.1");
    std::fs::write(&file, &page).unwrap();
    // `man -l` where man-db is installed (Debian's base system has it); the roff
    // checks above hold either way.
    match Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&file)
        .env("MANWIDTH", "100")
        .output()
    {
        Ok(rendered) => {
            let text = String::from_utf8_lossy(&rendered.stdout);
            assert!(
                rendered.status.success(),
                "man -l failed: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
            assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
            for sub in SUBCOMMANDS {
                assert!(
                    text.contains(sub),
                    "the rendered page does not name {sub}:\n{text}"
                );
            }
        }
        Err(e) => eprintln!("man is not installed ({e}); checked the roff only"),
    }
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "the page does not name {sub}");
    }

    let pages = dir.path().join("man1");
    let (code, _, stderr) = run_cli(&["man", "--dir", pages.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for sub in SUBCOMMANDS {
        let page = pages.join(format!("ecr-backup-{sub}.1"));
        assert!(page.exists(), "{} missing", page.display());
    }
}

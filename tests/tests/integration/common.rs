//! Helpers shared by the integration tests: the CLI binary and skopeo, store consistency
//! checks, and (from the test-support crate, `ecr_backup_tests::stores`) stores, AWS
//! clients and backups through the library.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ecr_backup_shared::Digest;
use sha2::{Digest as _, Sha256};

pub use ecr_backup_tests::stores::{
    aws_config, backup_prefix, backup_source, dir_store, dir_store_at, s3_client, s3_store,
    s3_store_in, try_backup_source,
};

/// Builds the workspace binaries `binaries` of `packages` (debug profile) and returns
/// their paths, in the order of `binaries`. Tests run the binaries as users and Lambda do,
/// so they are built from the current sources rather than trusted to be up to date.
pub fn build_binaries(packages: &[&str], binaries: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet"]);
    for p in packages {
        command.args(["-p", p]);
    }
    let status = command
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {packages:?}: {e}"));
    assert!(status.success(), "cargo build of {packages:?} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    binaries
        .iter()
        .map(|b| {
            let path = target.join("debug").join(b);
            assert!(path.exists(), "{} was not built", path.display());
            path
        })
        .collect()
}

/// The `ecr-backup` binary, built once per test run so it is never stale.
pub fn cli_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| build_binaries(&["ecr-backup-cli"], &["ecr-backup"]).remove(0))
        .clone()
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cli_binary())
        .args(args)
        .output()
        .expect("run ecr-backup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks a directory store by hand, without the project's reader: every blob hashes to
/// its name, nothing partial is under `blobs/`, and every image record's manifests and
/// blobs exist. Returns the set of blobs.
pub fn assert_dir_store_consistent(root: &Path) -> BTreeSet<Digest> {
    let mut blobs = BTreeSet::new();
    let blob_dir = root.join("blobs/sha256");
    if let Ok(entries) = std::fs::read_dir(&blob_dir) {
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            let actual = hex::encode(Sha256::digest(&bytes));
            assert_eq!(
                actual, name,
                "blob {name} does not hash to its name (partial or corrupt)"
            );
            blobs.insert(format!("sha256:{name}").parse().unwrap());
        }
    }
    let mut stack = vec![root.join("repositories")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // Parsed as the store does: the records of a tag named `_images` live under
            // a directory of that name too.
            let key = path.strip_prefix(root).unwrap().to_str().unwrap();
            let is_image_record = matches!(
                ecr_backup_shared::store::Layout::split_record_key(key),
                Some((_, "_images", _))
            );
            if !is_image_record {
                continue;
            }
            let record: ecr_backup_shared::store::records::ImageRecord =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert!(
                blobs.contains(&record.digest),
                "{} names missing manifest {}",
                path.display(),
                record.digest
            );
            for m in &record.manifests {
                assert!(
                    blobs.contains(&m.digest),
                    "{} names missing manifest {}",
                    path.display(),
                    m.digest
                );
            }
            for b in &record.blobs {
                assert!(
                    blobs.contains(&b.digest),
                    "{} names missing blob {}",
                    path.display(),
                    b.digest
                );
                let size = std::fs::metadata(blob_dir.join(b.digest.hex()))
                    .unwrap()
                    .len();
                assert_eq!(size, b.size, "{} size", b.digest);
            }
        }
    }
    blobs
}

/// Runs the CLI with extra environment variables; returns (exit code, stdout, stderr).
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(cli_binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ecr-backup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// skopeo with its own private state, so runs never share a cache or a lock.
pub fn skopeo(home: &Path, args: &[&str]) -> std::process::Output {
    for d in ["data", "run", "config"] {
        std::fs::create_dir_all(home.join(d)).expect("skopeo state directory");
    }
    let output = Command::new("skopeo")
        .env("_CONTAINERS_ROOTLESS_UID", "1000")
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(args)
        .output()
        .expect("skopeo is installed (tests/scripts/setup.sh)");
    eprintln!(
        "skopeo {args:?} exited {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Fails if an S3 bucket holds an open multipart upload: refused or broken blob uploads
/// must be aborted, not left to accumulate.
pub async fn assert_no_open_multipart_uploads(client: &aws_sdk_s3::Client, bucket: &str) {
    let uploads = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "multipart uploads left open: {:?}",
        uploads.uploads()
    );
}

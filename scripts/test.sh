#!/usr/bin/env bash
# Sets up everything and runs every check of the project: formatting, lints, unit and
# integration tests against real local servers (docker-registry, moto), the
# infrastructure templates' linters and policy rules, and the Lambda release build.
#
# Installs what it needs first (Debian packages, a Python venv with moto, cfn-lint and
# cargo-lambda, cfn-guard from crates.io) with tests/scripts/setup.sh.
# Usage: scripts/test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started=$(date +%s)

step "Installing test tools"
bash tests/scripts/setup.sh --with-infra-tools
export PATH="$PWD/.venv/bin:$HOME/.cargo/bin:$PATH"

step "Formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "Building"
cargo build --workspace --all-targets

state=$(mktemp -d)
trap 'bash tests/scripts/stop-servers.sh "$state" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT
step "Starting local servers"
bash tests/scripts/start-servers.sh "$state"
# shellcheck disable=SC1091
. "$state/env"

step "Unit and integration tests"
cargo test --workspace

step "Infrastructure templates"
bash infra/check.sh

step "Lambda release build (arm64)"
cargo lambda build --release --arm64 --bin ecr-backup-fanout --bin ecr-backup-worker --bin ecr-backup-drill
for function in ecr-backup-fanout ecr-backup-worker ecr-backup-drill; do
    artefact=target/lambda/$function/bootstrap
    test -x "$artefact" || { echo "missing $artefact" >&2; exit 1; }
    file_type=$(od -An -tx1 -j18 -N2 "$artefact" | tr -d ' ')
    # ELF e_machine 0xb7 is aarch64.
    [ "$file_type" = "b700" ] || { echo "$artefact is not an arm64 binary ($file_type)" >&2; exit 1; }
    echo "ok   $artefact ($(du -h "$artefact" | cut -f1), arm64)"
done

step "All checks passed in $(( $(date +%s) - started )) s"

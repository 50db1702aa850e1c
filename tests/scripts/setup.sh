#!/usr/bin/env bash
# Installs what the integration tests and the demo need, skipping what is already there:
#
#   - Debian packages: docker-registry (CNCF distribution 2.8), skopeo, apache2-utils
#     (htpasswd with bcrypt), jq, curl, python3-venv;
#   - a Python virtualenv at ${VENV:-.venv} (relative to the repository root) with a
#     pinned moto server, boto3 and cfn-lint (which moto's server depends on).
#
# With --with-infra-tools it also installs the infrastructure tools: cargo-lambda into
# the same virtualenv (run it as `cargo lambda` with the venv's bin/ on PATH), cfn-guard
# with `cargo install` (about four minutes to build), and pinned checkov and parliament
# into a virtualenv of their own inside it, ${VENV:-.venv}/infra-tools (checkov pins an
# older boto3 than the tests' moto needs, so they cannot share one).
#
# Meant for Debian bookworm, run as root (or with sudo available). Needs no Docker
# engine and no systemd: the test servers are started by start-servers.sh, never as
# system services.
#
# Usage: tests/scripts/setup.sh [--with-infra-tools]
set -euo pipefail

# Pinned versions (bump deliberately, then run the integration tests).
MOTO_VERSION=5.2.1
BOTO3_VERSION=1.44.8
CFN_LINT_VERSION=1.58.0
CARGO_LAMBDA_VERSION=1.9.2
CFN_GUARD_VERSION=3.2.1
CHECKOV_VERSION=3.3.30
PARLIAMENT_VERSION=1.6.4

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

with_infra=0
for arg in "$@"; do
    case "$arg" in
        --with-infra-tools) with_infra=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${VENV:-.venv}
case "$venv" in
    /*) ;;
    *) venv="$repo_root/$venv" ;;
esac

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup.sh: installing Debian packages needs root (or sudo): $*" >&2
        exit 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --- Debian packages ---------------------------------------------------------------
apt_packages=(docker-registry skopeo apache2-utils jq curl python3 python3-venv)
missing=()
for p in "${apt_packages[@]}"; do
    if installed "$p"; then
        say "apt: $p already installed"
    else
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt: installing ${missing[*]}"
    # docker-registry's maintainer scripts would start a system service on :5000; the
    # tests start their own instances, so forbid service starts during the install.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    restore_policy() {
        if [ "$added_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    restore_policy
    added_policy=0
    trap - EXIT
fi

# --- Python virtualenv -------------------------------------------------------------
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ]; then
    say "venv: $venv exists"
else
    say "venv: creating $venv"
    "$python" -m venv "$venv"
fi

# Installs NAME==VERSION (pip spec SPEC) into a venv (default: the tests' venv) unless
# that version is there.
pip_pin() {
    local name=$1 version=$2 spec=$3 into=${4:-$venv}
    local have
    have=$("$into/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    if [ "$have" = "$version" ]; then
        say "pip: $name $version already installed${4:+ in $into}"
    else
        say "pip: installing $spec${have:+ (had $have)}${4:+ in $into}"
        "$into/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
    fi
}

pip_pin moto "$MOTO_VERSION" "moto[server]==$MOTO_VERSION"
pip_pin boto3 "$BOTO3_VERSION" "boto3==$BOTO3_VERSION"
# moto[server] depends on cfn-lint (for CloudFormation): pin it here too.
pip_pin cfn-lint "$CFN_LINT_VERSION" "cfn-lint==$CFN_LINT_VERSION"
# moto[server]'s extras can be missing when moto itself was installed without them.
if ! "$venv/bin/python" -c 'import flask, flask_cors' 2>/dev/null; then
    say "pip: installing moto[server] extras"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# --- Infrastructure tools (optional) -----------------------------------------------
if [ "$with_infra" -eq 1 ]; then
    pip_pin cargo-lambda "$CARGO_LAMBDA_VERSION" "cargo-lambda==$CARGO_LAMBDA_VERSION"
    if command -v cfn-guard >/dev/null 2>&1; then
        say "cargo: cfn-guard already on PATH ($(cfn-guard --version 2>/dev/null || echo 'version unknown'))"
    else
        say "cargo: installing cfn-guard $CFN_GUARD_VERSION (takes a few minutes)"
        cargo install --locked cfn-guard --version "$CFN_GUARD_VERSION"
    fi
    infra_venv="$venv/infra-tools"
    if [ ! -x "$infra_venv/bin/python" ]; then
        say "venv: creating $infra_venv (checkov, parliament)"
        "$python" -m venv "$infra_venv"
    fi
    pip_pin checkov "$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION" "$infra_venv"
    pip_pin parliament "$PARLIAMENT_VERSION" "parliament==$PARLIAMENT_VERSION" "$infra_venv"
fi

say "done"
echo "    moto server: $venv/bin/moto_server"
if [ "$with_infra" -eq 1 ]; then
    echo "    cfn-lint:    $venv/bin/cfn-lint"
    echo "    cargo-lambda: $venv/bin/cargo-lambda (put $venv/bin on PATH for 'cargo lambda')"
    echo "    checkov, parliament: $venv/infra-tools/bin/"
else
    echo "    cfn-lint:    $venv/bin/cfn-lint"
    echo "    (run with --with-infra-tools for cfn-guard and cargo-lambda)"
fi

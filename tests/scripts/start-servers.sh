#!/usr/bin/env bash
# Starts the local servers the integration tests and the demo use, each on a free
# 127.0.0.1 port, with all their files in STATE_DIR:
#
#   src   an anonymous registry (docker-registry 2.8) to back up from
#   dst   a second, empty anonymous registry to restore into
#   auth  a registry with HTTP Basic auth (user AWS, password 123456789012-auth-token,
#         what moto's ECR GetAuthorizationToken returns): a stand-in for ECR's data plane
#   moto  moto server, for S3, SQS, ECR's control plane and EventBridge
#
# Then writes STATE_DIR/env, to be sourced by the tests:
#
#   ECR_BACKUP_TEST_REGISTRY, ECR_BACKUP_TEST_REGISTRY_LOG (src and its access log),
#   ECR_BACKUP_TEST_TARGET_REGISTRY, ECR_BACKUP_TEST_TARGET_REGISTRY_LOG (dst),
#   ECR_BACKUP_TEST_AUTH_REGISTRY, ECR_BACKUP_TEST_AUTH_REGISTRY_LOG,
#   ECR_BACKUP_TEST_AUTH_CREDENTIALS (user:password of the auth registry),
#   ECR_BACKUP_TEST_MOTO, and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
#   AWS_DEFAULT_REGION with moto's dummy values.
#
# Idempotent: servers already running from STATE_DIR are kept. Stop them with
# tests/scripts/stop-servers.sh STATE_DIR. Run tests/scripts/setup.sh first.
#
# Usage: tests/scripts/start-servers.sh STATE_DIR
#        . STATE_DIR/env
set -euo pipefail

if [ "$#" -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
state_dir=$1
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$script_dir/lib.sh"

venv=${VENV:-.venv}
case "$venv" in
    /*) ;;
    *) venv="$repo_root/$venv" ;;
esac
moto_bin=$venv/bin/moto_server
if [ ! -x "$moto_bin" ]; then
    echo "start-servers.sh: $moto_bin not found: run tests/scripts/setup.sh (or set VENV)" >&2
    exit 1
fi

mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
rm -f "$state_dir/env"

src=$("$script_dir/start-registry.sh" "$state_dir" src)
dst=$("$script_dir/start-registry.sh" "$state_dir" dst)
auth=$("$script_dir/start-registry.sh" "$state_dir" auth --auth)
auth_credentials="${REGISTRY_USER:-AWS}:${REGISTRY_PASSWORD:-123456789012-auth-token}"

# moto
moto_log=$state_dir/moto.log
if pid=$(running_pid "$state_dir" moto) && [ -f "$state_dir/moto.url" ] \
    && wait_http "$(cat "$state_dir/moto.url")/moto-api/" any 3; then
    moto=$(cat "$state_dir/moto.url")
    echo "moto already running (pid $pid) at $moto" >&2
else
    port=$(free_port)
    moto=http://127.0.0.1:$port
    pid=$(spawn "$state_dir" moto "$moto_log" "$moto_log" "$moto_bin" -H 127.0.0.1 -p "$port")
    echo "$moto" >"$state_dir/moto.url"
    if ! wait_http "$moto/moto-api/" any 20 "$pid"; then
        echo "start-servers.sh: moto did not start: no answer on $moto/moto-api/ (waited up to 20 s)" >&2
        echo "--- last lines of $moto_log:" >&2
        tail -n 30 "$moto_log" >&2 || true
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    echo "moto started (pid $pid) at $moto" >&2
fi

cat >"$state_dir/env.tmp" <<EOF
export ECR_BACKUP_TEST_REGISTRY=$src
export ECR_BACKUP_TEST_REGISTRY_LOG=$state_dir/src.log
export ECR_BACKUP_TEST_TARGET_REGISTRY=$dst
export ECR_BACKUP_TEST_TARGET_REGISTRY_LOG=$state_dir/dst.log
export ECR_BACKUP_TEST_AUTH_REGISTRY=$auth
export ECR_BACKUP_TEST_AUTH_REGISTRY_LOG=$state_dir/auth.log
export ECR_BACKUP_TEST_AUTH_CREDENTIALS=$auth_credentials
export ECR_BACKUP_TEST_MOTO=$moto
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
EOF
mv "$state_dir/env.tmp" "$state_dir/env"
echo "servers ready; environment written to $state_dir/env:" >&2
cat "$state_dir/env"

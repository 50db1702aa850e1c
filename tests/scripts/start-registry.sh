#!/usr/bin/env bash
# Starts one local OCI registry (Debian's docker-registry, CNCF distribution 2.8) on a free
# 127.0.0.1 port, with all of its files in STATE_DIR:
#
#   STATE_DIR/NAME.yml       its configuration
#   STATE_DIR/NAME-data/     its storage (filesystem driver, deletes enabled)
#   STATE_DIR/NAME.log       its access log (one combined-log-format line per request)
#   STATE_DIR/NAME.err.log   its application log
#   STATE_DIR/NAME.htpasswd  bcrypt credentials, with --auth
#   STATE_DIR/NAME.url       its URL, http://127.0.0.1:PORT
#   STATE_DIR/pids           a "PID NAME" line is appended (read by stop-servers.sh)
#
# With --auth the registry asks for HTTP Basic credentials, as Amazon ECR's data plane
# does: user AWS, password 123456789012-auth-token, which is what moto's ECR
# GetAuthorizationToken hands out for account 123456789012 (override with
# REGISTRY_USER / REGISTRY_PASSWORD). --port PORT picks the port instead of a free one.
#
# Idempotent: if NAME is already running from STATE_DIR it is left as it is. Data in
# STATE_DIR/NAME-data is kept across restarts; delete STATE_DIR for a fresh registry.
# Prints the registry's URL as the last line of its output.
#
# Usage: tests/scripts/start-registry.sh STATE_DIR NAME [--auth] [--port PORT]
set -euo pipefail

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
}

if [ "$#" -lt 2 ]; then
    usage >&2
    exit 2
fi
state_dir=$1
name=$2
shift 2
auth=0
port=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --auth) auth=1 ;;
        --port)
            port=${2:?--port needs a value}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "start-registry.sh: unknown argument: $1" >&2
            exit 2
            ;;
    esac
    shift
done

case "$name" in
    '' | *[!a-zA-Z0-9_-]*)
        echo "start-registry.sh: NAME must be letters, digits, '-' or '_': $name" >&2
        exit 2
        ;;
esac

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$script_dir/lib.sh"

registry_bin=$(command -v docker-registry || true)
if [ -z "$registry_bin" ]; then
    echo "start-registry.sh: docker-registry is not installed: run tests/scripts/setup.sh" >&2
    exit 1
fi

mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
config=$state_dir/$name.yml
log=$state_dir/$name.log
err_log=$state_dir/$name.err.log
data=$state_dir/$name-data
url_file=$state_dir/$name.url

# Already running?
if pid=$(running_pid "$state_dir" "$name") && [ -f "$url_file" ]; then
    url=$(cat "$url_file")
    if wait_http "$url/v2/" "200 401" 3; then
        echo "registry $name already running (pid $pid) at $url" >&2
        echo "$url"
        exit 0
    fi
fi

if [ -z "$port" ]; then
    port=$(free_port)
elif ! port_free "$port"; then
    echo "start-registry.sh: port $port on 127.0.0.1 is already in use" >&2
    exit 1
fi
url=http://127.0.0.1:$port

auth_block=
if [ "$auth" -eq 1 ]; then
    if ! command -v htpasswd >/dev/null 2>&1; then
        echo "start-registry.sh: htpasswd is not installed (apache2-utils): run tests/scripts/setup.sh" >&2
        exit 1
    fi
    htpasswd -Bbn "${REGISTRY_USER:-AWS}" "${REGISTRY_PASSWORD:-123456789012-auth-token}" \
        >"$state_dir/$name.htpasswd"
    auth_block="auth:
  htpasswd:
    realm: ecr-backup-test
    path: $state_dir/$name.htpasswd"
fi

mkdir -p "$data"
cat >"$config" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(random_hex)
  headers:
    X-Content-Type-Options: [nosniff]
$auth_block
EOF

# The access log goes to stdout, the application log to stderr.
pid=$(spawn "$state_dir" "$name" "$log" "$err_log" "$registry_bin" serve "$config")
echo "$url" >"$url_file"
if ! wait_http "$url/v2/" "200 401" 20 "$pid"; then
    echo "start-registry.sh: registry $name did not start: no answer on $url/v2/ (waited up to 20 s)" >&2
    echo "--- last lines of $err_log:" >&2
    tail -n 30 "$err_log" >&2 || true
    kill "$pid" 2>/dev/null || true
    exit 1
fi
echo "registry $name started (pid $pid) at $url$([ "$auth" -eq 1 ] && echo ', Basic auth')" >&2
echo "$url"

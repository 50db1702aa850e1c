#!/usr/bin/env bash
# Stops the servers that start-servers.sh or start-registry.sh started from STATE_DIR
# (the PIDs in STATE_DIR/pids). Servers already gone are ignored; running it twice is
# harmless. Their data and logs stay in STATE_DIR.
#
# Usage: tests/scripts/stop-servers.sh STATE_DIR
set -euo pipefail

if [ "$#" -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
state_dir=$1
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$script_dir/lib.sh"

pids_file=$state_dir/pids
if [ ! -f "$pids_file" ]; then
    echo "no servers recorded in $pids_file" >&2
    exit 0
fi

stopping=()
while read -r pid name _; do
    [ -n "${pid:-}" ] || continue
    # Only signal a PID that is still one of our servers (PIDs get reused).
    if is_our_server "$pid"; then
        echo "stopping $name (pid $pid)" >&2
        kill -TERM "$pid" 2>/dev/null || true
        stopping+=("$pid")
    fi
done <"$pids_file"

for pid in "${stopping[@]}"; do
    for _ in $(seq 1 50); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "pid $pid did not stop on TERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
done
rm -f "$pids_file" "$state_dir/env"
echo "servers in $state_dir stopped" >&2

# Helpers shared by the server scripts; sourced, not run.

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True if nothing listens on 127.0.0.1:PORT (binding it succeeds).
port_free() {
    python3 -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()' "$1"
}

# 32 random hex digits.
random_hex() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# True if PID is a live process (not a zombie).
alive() {
    local pid=$1 state
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# True if PID is alive and is one of our servers.
is_our_server() {
    local pid=$1 cmdline
    alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case "$cmdline" in
        *docker-registry* | *moto_server*) return 0 ;;
        *) return 1 ;;
    esac
}

# Prints the PID of server NAME started from STATE_DIR, if it is still running.
running_pid() {
    local state_dir=$1 name=$2 pid
    [ -f "$state_dir/pids" ] || return 1
    pid=$(awk -v n="$name" '$2 == n { p = $1 } END { print p }' "$state_dir/pids")
    is_our_server "$pid" || return 1
    echo "$pid"
}

# spawn STATE_DIR NAME STDOUT_FILE STDERR_FILE COMMAND...
# Starts COMMAND in its own session (so it outlives the calling shell), records
# "PID NAME" in STATE_DIR/pids and prints the PID.
spawn() {
    local state_dir=$1 name=$2 out=$3 err=$4
    shift 4
    local pid_file
    pid_file=$(mktemp "$state_dir/.$name.pid.XXXXXX")
    # shellcheck disable=SC2016
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pid_file" "$@" >>"$out" 2>>"$err" </dev/null &
    for _ in $(seq 1 50); do
        [ -s "$pid_file" ] && break
        sleep 0.05
    done
    local pid
    pid=$(cat "$pid_file")
    rm -f "$pid_file"
    if [ -z "$pid" ]; then
        echo "could not start $name: $*" >&2
        return 1
    fi
    echo "$pid $name" >>"$state_dir/pids"
    echo "$pid"
}

# wait_http URL CODES SECONDS [PID]
# Waits until URL answers with one of CODES (space-separated; "any" for any HTTP answer).
# Fails early if PID is given and dies.
wait_http() {
    local url=$1 codes=$2 seconds=$3 pid=${4:-}
    local deadline=$((SECONDS + seconds)) code
    while :; do
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)
        if [ -n "$code" ] && [ "$code" != 000 ]; then
            if [ "$codes" = any ]; then return 0; fi
            case " $codes " in *" $code "*) return 0 ;; esac
        fi
        if [ -n "$pid" ] && ! alive "$pid"; then
            echo "the server exited (last HTTP answer: ${code:-none})" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "no expected answer from $url (last: ${code:-none})" >&2
            return 1
        fi
        sleep 0.1
    done
}

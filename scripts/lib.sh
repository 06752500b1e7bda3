# Shared helpers for the bash scripts in this directory. Source it; do not run it.
# shellcheck shell=bash

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
# shellcheck disable=SC2016 # $1 expands in the inner shell
port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# pid_alive PID [MARKER]: true when PID is a live (non-zombie) process whose
# command line contains MARKER. The marker guards against a recycled pid
# after a reboot or a crash leaving a stale pid file behind.
pid_alive() {
    local pid=$1 marker=${2:-} state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    # Field 3 of /proc/PID/stat is the state; the command name before it is
    # parenthesised and may contain spaces, so cut after the last ')'.
    state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z && $state != X ]] || return 1
    [[ -z $marker ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

pid_gone() { ! pid_alive "$1"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it
# succeeds or SECONDS have passed. Returns 1 on timeout.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

#!/usr/bin/env bash
# Stop the single-node test cluster started by .ci/slurm/start.sh: slurmd, slurmctld, then munged.
# Only stops the daemons recorded in their pid files; safe to run when nothing is running.
# Leaves configuration, state and logs in place (start.sh reuses them).
set -uo pipefail

log() { echo "[slurm-ci] $*" >&2; }

stop_pidfile() { # name pidfile
    local name="$1" pidfile="$2" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop within 10s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$pidfile"
}

# Cancel whatever is still queued or running so that slurmd leaves no job processes behind.
if command -v scancel >/dev/null 2>&1 && [ -s /run/slurmctld.pid ] &&
    kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    scancel --cluster=maxact-ci --full --quiet --user=root 2>/dev/null ||
        scancel --full --quiet --user=root 2>/dev/null || true
fi
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
if [ "${MAXACT_SLURM_KEEP_MUNGE:-0}" != 1 ]; then
    stop_pidfile munged /run/munge/munged.pid
fi
exit 0

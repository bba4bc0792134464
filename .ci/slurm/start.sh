#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster ("maxact-ci") on this machine: munged, slurmctld and
# slurmd on localhost, one partition `debug`, and two device-less "GPUs" (GRES gpu:2) so that the
# workflow's `resources: gpu=N` -> `sbatch --gpus=N` path is exercised on a CPU-only machine.
#
# Idempotent: installs the Debian packages if missing, keeps an existing munge key, leaves running
# daemons alone, and returns as soon as `sinfo` reports the node idle. Needs root; no systemd.
# Refuses to touch a slurm.conf that it did not write (a real cluster's configuration).
#
# Environment: MAXACT_SLURM_GPUS (default 2) fake GPUs on the node; MAXACT_SLURM_TIMEOUT (default 60)
# seconds to wait for the node.
set -euo pipefail

GPUS="${MAXACT_SLURM_GPUS:-2}"
TIMEOUT="${MAXACT_SLURM_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by maxact .ci/slurm/start.sh"
LOG_DIR=/var/log/slurm

log() { echo "[slurm-ci] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages and starts system daemons)"
    exit 1
fi

# --- packages -------------------------------------------------------------------------------------
need=()
for b in munged slurmctld slurmd sbatch sinfo squeue scontrol; do
    command -v "$b" >/dev/null 2>&1 || need+=("$b")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing slurm-wlm and munge (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d: keep the packages' init scripts from trying to start daemons during install
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || {
        rm -f /usr/sbin/policy-rc.d
        exit 1
    }
    rm -f /usr/sbin/policy-rc.d
fi

# --- munge ----------------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null
fi

# --- slurm.conf -----------------------------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(free -m | awk '/^Mem:/ {print $2}')"
MEM_MB=$((MEM_MB * 95 / 100)) # leave a little for the daemons

if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    log "$CONF exists and was not written by this script; refusing to overwrite a real configuration"
    exit 1
fi
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
NEW="$(mktemp)"
cat >"$NEW" <<EOF
$MARKER
# Single-node test cluster for the maxact workflow's Slurm test. Not for production.
ClusterName=maxact-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Containers: no cgroups, no process containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Keep finished jobs visible to squeue/scontrol for 1 h (no slurmdbd, so sacct has no data): the
# executor plugin's squeue status query needs MinJobAge >= 3 x its first status-check delay, and
# the test reads finished jobs back with scontrol.
MinJobAge=3600
InactiveLimit=0
KillWait=10
Waittime=0
MailProg=/bin/true
# No accounting database; finished jobs are also appended to a text file (read by the test).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# Use the node description below even where the hardware probe disagrees (VMs, containers).
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# Fake GPUs: Slurm drops file-less GPUs and wants a character device per GPU, so each one is a
# symlink to /dev/null. Jobs get CUDA_VISIBLE_DEVICES=<index> as on a real GPU node; CUDA finds no
# device behind it (torch falls back to the CPU).
FAKE_DIR=/var/spool/slurmd/maxact-fake-gpu
mkdir -p "$FAKE_DIR"
for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$FAKE_DIR/gpu$i"; done
GRES_NEW="$(mktemp)"
cat >"$GRES_NEW" <<EOF
$MARKER
# Placeholder "GPUs" for a CPU-only test node: scheduled and counted (sbatch --gpus=N), no device.
NodeName=$HOST Name=gpu File=$FAKE_DIR/gpu[0-$((GPUS - 1))]
EOF

changed=0
for pair in "$NEW:$CONF" "$GRES_NEW:$CONF_DIR/gres.conf"; do
    src="${pair%%:*}"
    dst="${pair#*:}"
    if [ -e "$dst" ] && [ "$dst" != "$CONF" ] && ! grep -qF "$MARKER" "$dst"; then
        log "$dst exists and was not written by this script; refusing to overwrite it"
        rm -f "$NEW" "$GRES_NEW"
        exit 1
    fi
    if ! cmp -s "$src" "$dst" 2>/dev/null; then
        install -m 0644 "$src" "$dst"
        changed=1
    fi
    rm -f "$src"
done

# --- daemons --------------------------------------------------------------------------------------
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$changed" = 1 ] && { running /run/slurmctld.pid || running /run/slurmd.pid; }; then
    log "configuration changed; restarting the daemons"
    MAXACT_SLURM_KEEP_MUNGE=1 "$(dirname "$0")/stop.sh"
fi
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd
fi

# --- wait for the node ----------------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
    state="$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
    idle | mixed | allocated) break ;;
    drain* | down*)
        # A node left drained/down by an earlier run: put it back.
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    if ! running /run/slurmctld.pid || ! running /run/slurmd.pid; then
        sleep 1 # a daemon may still be writing its pid file
        if ! running /run/slurmctld.pid || ! running /run/slurmd.pid; then
            state="daemon exited"
            break
        fi
    fi
    sleep 0.5
done
case "$state" in
idle | mixed | allocated)
    log "cluster maxact-ci up: node $HOST ($CPUS CPUs, ${MEM_MB} MB, gpu:$GPUS) is $state"
    ;;
*)
    log "node $HOST did not become idle within ${TIMEOUT}s (state: '${state:-unknown}')"
    log "slurmctld log:"; tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
    log "slurmd log:"; tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
    ;;
esac

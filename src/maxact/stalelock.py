"""A Snakemake lock left by a run that was killed outright (``kill -9``, a closed terminal, a power cut) is removed
by the next run, so that a plain ``snakemake`` completes the study after any kill.

Snakemake writes no owner into its lock files (``.snakemake/locks/<n>.input.lock`` and ``<n>.output.lock``) and
refuses to start while they exist ("Directory cannot be locked ... --unlock"). So:

- when a run has taken its locks and starts its jobs (the Snakefile's ``onstart:``), :func:`record_lock_owner`
  writes, per lock file of that run, who holds it: host, process id and start time, process group, and whether
  its jobs run on this host (``.snakemake/maxact_lock_owners/``);
- when the Snakefile is read by a later run, :func:`clear_stale_lock` removes a lock file only when its owner is
  known, ran on this host with local jobs, is gone (no process with its id and start time) and left no process
  in its process group (a job of the killed run still writing). A lock without a record written after it, one
  taken on another host or with cluster jobs (which outlive their submitter), or a dry run leaves everything to
  Snakemake's own message (``snakemake --unlock``, see the README's Troubleshooting).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

OWNERS = "maxact_lock_owners"
_DRY = re.compile(r"^(--dry-?run|--unlock|-[A-Za-z]*n[A-Za-z]*)$")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _group_alive(pgid: int) -> bool:
    """Whether a running process (not a zombie waiting to be reaped) belongs to process group ``pgid``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False


def record_lock_owner(workflow, workdir: str | os.PathLike = ".") -> None:
    """In ``onstart:`` (the run holds its locks): record this process as the owner of each of its lock files."""
    lockfiles = getattr(getattr(workflow, "persistence", None), "_lockfile", None) or {}
    if not lockfiles or not Path("/proc").is_dir():
        return  # another persistence backend or platform: nothing is recorded, nothing will be removed
    owners = Path(workdir) / ".snakemake" / OWNERS
    owners.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), "pgid": os.getpgid(0),
          "local_jobs": bool(getattr(workflow, "local_exec", False))}
    for lockfile in lockfiles.values():
        tmp = owners / f".{Path(lockfile).name}.tmp"
        tmp.write_text(json.dumps(me))
        os.replace(tmp, owners / f"{Path(lockfile).name}.json")


def clear_stale_lock(workdir: str | os.PathLike = ".", argv: list[str] | None = None, main_process: bool = True) -> str | None:
    """When the Snakefile is read: remove the lock files whose owner is known to be gone (module docstring).
    A message naming them, or None."""
    if not main_process or any(_DRY.match(a) for a in (argv or [])[1:]) or not Path("/proc").is_dir():
        return None
    meta = Path(workdir) / ".snakemake"
    locks, owners = meta / "locks", meta / OWNERS
    if not locks.is_dir():
        return None
    removed = []
    for lock in sorted(locks.glob("*.lock")):
        record = owners / f"{lock.name}.json"
        try:
            owner = json.loads(record.read_text())
            if record.stat().st_mtime < lock.stat().st_mtime:
                continue  # written by an earlier run that used the same file name: the lock's owner is unknown
        except (OSError, ValueError):
            continue
        if owner.get("host") != socket.gethostname() or not owner.get("local_jobs"):
            continue
        if owner.get("start") is not None and _start_time(int(owner["pid"])) == owner["start"]:
            continue  # that run is going on
        if _group_alive(int(owner.get("pgid", -1))):
            continue  # a job of the killed run may still be writing
        lock.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        removed.append((lock.name, owner["pid"]))
    if not removed:
        return None
    pids = sorted({p for _, p in removed})
    return (f"removed the Snakemake lock left by a run that was killed ({', '.join(n for n, _ in removed)}; process "
            f"{', '.join(map(str, pids))} on this host is gone and left no job running)")

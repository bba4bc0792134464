"""A Snakemake lock left by a run that was killed outright (``kill -9``, a closed terminal, a power cut) is removed
by the next run, so that a plain ``snakemake`` completes the study after any kill.

Snakemake writes no owner into its locks (``.snakemake/locks/``) and refuses to start while they exist
("Directory cannot be locked ... --unlock"). The Snakefile calls :func:`clear_stale_lock` when it is read: the run
that is about to take the lock records its host and process id beside it (``.snakemake/maxact_lock_owner.json``);
a later run removes the locks only when that owner ran on this host and no longer runs. A run on another host, a
run that is still alive, or a lock without a recorded owner is left to Snakemake (``snakemake --unlock``, see the
README's Troubleshooting).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

OWNER = "maxact_lock_owner.json"


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _alive_snakemake(pid: int) -> bool:
    """Whether ``pid`` is a running snakemake process (a reused pid of another program is not)."""
    cmd = _cmdline(pid)
    return cmd is not None and "snakemake" in cmd


def clear_stale_lock(workdir: str | os.PathLike = ".") -> str | None:
    """Remove the locks of a killed run of this working directory (see the module docstring); record this process
    as the owner when it is the one about to lock. A message when locks were removed, else None."""
    meta = Path(workdir) / ".snakemake"
    locks = meta / "locks"
    owner_file = meta / OWNER
    held = locks.is_dir() and any(locks.iterdir())
    message = None
    if held:
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            return None  # nobody recorded: Snakemake's own message (snakemake --unlock) stands
        if owner.get("host") != socket.gethostname() or not Path("/proc").is_dir():
            return None
        if _alive_snakemake(int(owner.get("pid", -1))):
            return None  # a run is going on: Snakemake refuses this one, as it should
        for p in locks.iterdir():
            p.unlink(missing_ok=True)
        message = (f"removed the Snakemake lock left by a run that was killed (process {owner.get('pid')} on this host "
                   "is gone)")
    if Path("/proc").is_dir():
        meta.mkdir(exist_ok=True)
        tmp = owner_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        os.replace(tmp, owner_file)
    return message

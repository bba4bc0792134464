"""One GPU per job on a host with several: a small slot allocator for the workflow's GPU rules.

Snakemake's ``--resources gpu=G`` bounds how many GPU jobs run at once, but it does not say which GPU a local job
should use (snakemake/snakemake#281): every job would see every GPU and start on GPU 0. So a GPU rule's job takes
slots before it touches CUDA: one lock file per GPU (``<lock dir>/gpu<id>.lock``, an exclusive ``flock``), taken
without blocking from the first free ones, and sets ``CUDA_VISIBLE_DEVICES`` to them. The system releases a lock when
its process ends, also when it is killed, so a killed job never holds a GPU.

Which GPUs there are: ``MAXACT_GPU_IDS`` (a comma-separated list, e.g. fake ids in tests), else the
``CUDA_VISIBLE_DEVICES`` the job was given (empty: none), else the GPUs the NVIDIA driver lists
(``/proc/driver/nvidia/gpus``). Without GPUs (a CPU run) nothing is taken. Under Slurm (``SLURM_JOB_ID`` set, no
``MAXACT_GPU_IDS``) nothing is taken either: Slurm's allocation is already the job's own, and with device cgroups
every job sees its GPUs renumbered from 0, so locks by id would make jobs on different GPUs wait for each other.

The slots are held until the process ends (or :meth:`GpuSlots.release`), whether or not the caller keeps the
returned object.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def gpu_ids() -> list[str]:
    """The ids of the GPUs jobs may use on this host (see the module docstring)."""
    if os.environ.get("MAXACT_GPU_IDS", "").strip():
        return [x.strip() for x in os.environ["MAXACT_GPU_IDS"].split(",") if x.strip()]
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    if v is not None:  # set, even empty ("no GPU") or Slurm's "NoDevFiles": the list it gives
        return [x.strip() for x in v.split(",") if x.strip() and x.strip() != "NoDevFiles"]
    drv = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(drv.iterdir())))] if drv.is_dir() else []


def lock_dir() -> Path:
    return Path(os.environ.get("MAXACT_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"maxact-gpu-slots-{os.getuid()}")


class GpuSlots:
    """The GPUs this process holds (``ids``) and their lock files (released on :meth:`release` or at exit)."""

    def __init__(self, ids: list[str], files: list):
        self.ids = ids
        self._files = files
        if files:
            _HELD.append(self)  # a lock lives as long as its open file: held here, not by the caller's variable

    def release(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
        if self in _HELD:
            _HELD.remove(self)


_HELD: list[GpuSlots] = []


def acquire(n: int, wait_seconds: float = 3600.0, poll: float = 0.5) -> GpuSlots:
    """Take ``n`` free GPU slots (waiting for them while other jobs hold them) and point ``CUDA_VISIBLE_DEVICES`` at
    them. ``n`` = 0, or a host without GPUs: nothing is taken."""
    if n > 0 and os.environ.get("SLURM_JOB_ID") and not os.environ.get("MAXACT_GPU_IDS", "").strip():
        log.info("GPUs allocated by Slurm (job %s, CUDA_VISIBLE_DEVICES=%s): no slot taken", os.environ["SLURM_JOB_ID"],
                 os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        return GpuSlots([], [])
    ids = gpu_ids()
    if n <= 0 or not ids:
        return GpuSlots([], [])
    if n > len(ids):
        raise RuntimeError(f"this job needs {n} GPUs but the host has {len(ids)} ({', '.join(ids)}): lower the checkpoint's "
                           "gpus or run it on a larger host")
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        held, files = [], []
        for gid in ids:
            f = open(folder / f"gpu{gid}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            held.append(gid)
            files.append(f)
            if len(held) == n:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
                log.info("GPU slot(s) %s taken (CUDA_VISIBLE_DEVICES=%s, process %d)", ", ".join(held), ",".join(held), os.getpid())
                return GpuSlots(held, files)
        for f in files:  # not enough free ones: give back the partial set, wait, try again
            f.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {n} free GPU slot(s) among {', '.join(ids)} after {wait_seconds:.0f} s ({folder})")
        time.sleep(poll)

"""The GPU slot allocator on the CPU with fake GPU ids: concurrent jobs never share a GPU, a killed job frees its
slot, and the workflow's GPU jobs take their slots (their logs say which)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from maxact.gpuslots import acquire, gpu_ids

JOB = """
import json, os, sys, time
from maxact.gpuslots import acquire
slots = acquire(int(sys.argv[1]), wait_seconds=120, poll=0.05)
t0 = time.time()
time.sleep(float(sys.argv[2]))
print(json.dumps({"pid": os.getpid(), "ids": slots.ids, "visible": os.environ["CUDA_VISIBLE_DEVICES"], "t0": t0, "t1": time.time()}))
"""


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MAXACT_GPU_IDS", "0,1,2")
    monkeypatch.setenv("MAXACT_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path


def _job(n: int, hold: float, code: str = JOB) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(n), str(hold)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def _wait_for_holder(lock, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)


def test_concurrent_jobs_never_share_a_gpu(fake_gpus):
    jobs = [_job(1, 0.6) for _ in range(5)] + [_job(2, 0.6)]
    runs = [json.loads(j.communicate(timeout=120)[0]) for j in jobs]
    assert all(j.returncode == 0 for j in jobs)
    for r in runs:
        assert r["visible"] == ",".join(r["ids"]) and set(r["ids"]) <= {"0", "1", "2"}
    for i, a in enumerate(runs):  # two jobs holding the same GPU never overlap in time
        for b in runs[i + 1:]:
            if set(a["ids"]) & set(b["ids"]):
                assert a["t1"] <= b["t0"] or b["t1"] <= a["t0"], (a, b)
    assert sorted(len(r["ids"]) for r in runs) == [1, 1, 1, 1, 1, 2]


def test_a_killed_job_frees_its_gpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("MAXACT_GPU_IDS", "7")
    holder = _job(1, 60)
    deadline = time.time() + 60
    lock = fake_gpus / "locks" / "gpu7.lock"
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RuntimeError, match="no 1 free GPU slot"):
        acquire(1, wait_seconds=0.3, poll=0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    slots = acquire(1, wait_seconds=5, poll=0.05)
    assert slots.ids == ["7"] and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    slots.release()


def test_no_gpus_or_no_request_takes_nothing(fake_gpus, monkeypatch):
    assert acquire(0).ids == []
    monkeypatch.setenv("MAXACT_GPU_IDS", "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # given by Slurm: its allocation is used
    assert gpu_ids() == ["3", "5"]
    monkeypatch.setenv("MAXACT_GPU_IDS", "0")
    with pytest.raises(RuntimeError, match="needs 2 GPUs but the host has 1"):
        acquire(2)


@pytest.mark.slow
def test_workflow_gpu_jobs_take_their_own_slot(tmp_path, monkeypatch):
    """The test study with 2 shards and 2 fake GPUs, two GPU jobs at once: every GPU job took a slot and its log says
    which (that concurrent holders never share one is the first test's)."""
    from workflow_helpers import snakemake

    monkeypatch.setenv("MAXACT_GPU_IDS", "0,1")
    monkeypatch.setenv("MAXACT_GPU_LOCK_DIR", str(tmp_path / "locks"))
    wd = tmp_path / "wd"
    wd.mkdir()
    p = snakemake(wd, "--cores", "2", "--resources", "gpu=2", "--config", "runtime={shards: 2}")
    logs = sorted((wd / "results" / "test" / "logs").rglob("*.log"))
    taken = {}
    for log in logs:
        text = log.read_text()
        if "GPU slot(s)" in text:
            taken[log.name if "measure_shard" not in str(log) else f"{log.parent.name}/{log.name}"] = \
                text.split("GPU slot(s) ", 1)[1].split(" taken", 1)[0]
    # every measure_shard, int8_check and probes job took a slot; the merge (no GPU) took none
    assert len([k for k in taken if "-of-2" in k]) == 4 and set(taken.values()) <= {"0", "1"}, taken
    assert "Nothing to be done" in snakemake(wd, "-n", "--config", "runtime={shards: 2}").stdout
    del p


def test_a_job_that_drops_the_returned_object_still_holds_its_gpu(fake_gpus, monkeypatch):
    """What the workflow scripts do: ``acquire(n)`` as a statement. The slot stays taken until the process ends."""
    monkeypatch.setenv("MAXACT_GPU_IDS", "5")
    holder = _job(1, 60, code="import sys, time, gc\nfrom maxact.gpuslots import acquire\nacquire(1)\ngc.collect()\ntime.sleep(60)\n")
    _wait_for_holder(fake_gpus / "locks" / "gpu5.lock")
    time.sleep(0.3)  # past the statement: a dropped object would have closed its lock file by now
    with pytest.raises(RuntimeError, match="no 1 free GPU slot"):
        acquire(1, wait_seconds=0.3, poll=0.05)
    holder.kill()
    holder.wait()
    acquire(1, wait_seconds=5, poll=0.05).release()


def test_under_slurm_nothing_is_taken_and_the_allocation_stands(fake_gpus, monkeypatch):
    monkeypatch.delenv("MAXACT_GPU_IDS")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    slots = acquire(1, wait_seconds=0.3, poll=0.05)
    assert slots.ids == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not (fake_gpus / "locks").exists()


def test_an_empty_cuda_visible_devices_means_no_gpu(monkeypatch):
    monkeypatch.delenv("MAXACT_GPU_IDS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_ids() == []

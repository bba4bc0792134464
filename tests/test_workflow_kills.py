"""Kills anywhere in the DAG: the next plain `snakemake` completes the study, with the same results as a run that
was never interrupted (the test study, run once by the `study` fixture)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_helpers import REPO, TEST_CONFIG, compare_results, snakemake

pytestmark = pytest.mark.slow


def start(workdir: Path, *args) -> tuple[subprocess.Popen, Path]:
    """`snakemake` on the test config in its own process group; its output goes to a file the test can watch."""
    log = workdir / f"run-{time.time_ns()}.log"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile",
           str(TEST_CONFIG), "--cores", "2", "--resources", "gpu=1", *args]
    f = open(log, "w")
    # Ctrl-C's default action back: a test run started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt, so Snakemake would run on to the end.
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)), log


def kill_when(proc: subprocess.Popen, log: Path, rule: str, sig: int, delay: float = 1.5, timeout: float = 600,
              job_log_dir: Path | None = None) -> str:
    """Send ``sig`` to the whole run (Snakemake and its jobs) ``delay`` seconds after ``rule`` started (and, with
    ``job_log_dir``, after the job's own process has opened its log there: Snakemake prints a rule's header before it
    starts the job, and a signal in between can reach no job at all when another job starts at the same moment)."""
    deadline = time.time() + timeout
    since = log.stat().st_mtime_ns - 1  # a job log of this run, not one an earlier (killed) run left there

    def job_started() -> bool:
        return job_log_dir is None or any(f.stat().st_mtime_ns >= since for f in job_log_dir.glob("*.log"))

    while f"rule {rule}:" not in log.read_text() or not job_started():
        assert proc.poll() is None, f"the run ended before {rule} started:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"{rule} did not start"
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, f"the run ended before it could be killed in {rule}"
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def same_as_uninterrupted(study_wd: Path, wd: Path) -> None:
    roots = [str(study_wd), str(wd), str(study_wd.resolve()), str(wd.resolve())]
    res = Path("results") / "test"
    problems = compare_results(study_wd / res, wd / res, roots, names=("uninterrupted", "killed and rerun"))
    assert not problems, "\n".join(problems[:30])


@pytest.mark.extended  # about 3 min; a killed run's recovery stays in CI (the forced rerun below, the sharded study's)
def test_kills_at_several_points_then_a_plain_run_completes_the_study(study, tmp_path):
    """One working directory, killed three times on its way (kill -9 in measure, Ctrl-C in calibration, kill -9 of
    everything in render), then one plain run: the study is complete and equal to the uninterrupted one."""
    wd = tmp_path / "wd"
    wd.mkdir()
    for rule, sig in (("measure", signal.SIGKILL), ("calibration", signal.SIGINT), ("render", signal.SIGKILL)):
        proc, log = start(wd)
        jobs = wd / "results" / "test" / "logs" / rule if rule == "calibration" else None
        kill_when(proc, log, rule, sig, delay=1.0 if rule != "calibration" else 0.05, job_log_dir=jobs)
        assert proc.returncode != 0, f"the run was not stopped in {rule}:\n{log.read_text()[-3000:]}"
    p = snakemake(wd)  # the plain run: a lock left by kill -9 and incomplete outputs are dealt with
    assert "removed the Snakemake lock left by a run that was killed" in p.stderr + p.stdout
    assert (wd / "results" / "test" / "reports" / "report.html").exists()
    assert "Nothing to be done" in snakemake(wd, "-n").stdout
    same_as_uninterrupted(study[0], wd)


def test_a_killed_forced_rerun_of_measure_is_completed_by_the_next_plain_run(study, tmp_path):
    """The reported case: a `--forcerun measure` killed while measuring left activation_stats.json missing, and the
    next plain run said "Nothing to be done"."""
    wd = tmp_path / "wd"
    shutil.copytree(study[0], wd, symlinks=True)
    proc, log = start(wd, "--forcerun", "measure")
    kill_when(proc, log, "measure", signal.SIGKILL, delay=1.0)
    missing = [c for c in ("tiny-llama", "tiny-gemma3")
               if not (wd / "results" / "test" / "measure" / c / "activation_stats.json").exists()]
    assert missing, "the kill left every result in place; it did not test anything"
    p = snakemake(wd)
    assert "Nothing to be done" not in p.stdout + p.stderr
    for c in missing:
        assert (wd / "results" / "test" / "measure" / c / "activation_stats.json").exists()
    assert "Nothing to be done" in snakemake(wd, "-n").stdout
    same_as_uninterrupted(study[0], wd)


def test_a_running_study_keeps_its_lock(study, tmp_path):
    """Only a dead run's lock is removed: while a run is going on, a second one in the same folder is refused."""
    wd = tmp_path / "wd"
    shutil.copytree(study[0], wd, symlinks=True)
    proc, log = start(wd, "--forcerun", "measure")
    try:
        deadline = time.time() + 300
        while "rule measure:" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        second = snakemake(wd, check=False)
        assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr
    finally:  # the first run only had to hold the lock: ended at once (a Ctrl-C would wait for its measure job)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)

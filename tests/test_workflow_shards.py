"""runtime.shards through the real workflow: N measure_shard jobs and one merge give the unsharded study's results;
changing N reruns nothing already measured; a killed shard reruns alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_helpers import REPO, TEST_CONFIG, compare_results, planned, planned_wildcards, snakemake

pytestmark = pytest.mark.slow

SKIP = r"^(benchmarks|logs|measure_shards)/"  # the sharded run's own job files
DROP = r"^(shards|shard)$"  # provenance of the split (settings.shards, provenance.shards)


def _same(study_wd: Path, wd: Path) -> list[str]:
    roots = [str(study_wd), str(wd), str(study_wd.resolve()), str(wd.resolve())]
    return compare_results(study_wd / "results" / "test", wd / "results" / "test", roots, names=("unsharded", "sharded"),
                           skip_files=SKIP, drop_keys=DROP)


def test_changing_the_number_of_shards_reruns_nothing_measured(study):
    wd, _ = study
    for n in (2, 5):
        p = snakemake(wd, "-n", "--config", f"runtime={{shards: {n}}}")
        assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-3000:]


def test_a_killed_shard_reruns_alone_and_the_sharded_study_equals_the_unsharded_one(study, tmp_path):
    """runtime.shards: 3, killed while measuring its second shard: the next plain run (same shards) measures the shards
    that did not finish, not the finished one, and merges; the study it completes equals the unsharded one (one
    sharded run serves both checks: each is a whole study on 2 cores)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    log = wd / "run.log"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(wd), "--configfile",
           str(TEST_CONFIG), "--cores", "1", "--resources", "gpu=1", "--config", "runtime={shards: 3}"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 900
    while log.read_text().count("rule measure_shard:") < 2:
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    jobs = planned(log.read_text())
    assert jobs.get("measure_shard") == 6 and jobs.get("measure") == 2, jobs  # 3 shards x 2 checkpoints, 2 merges
    done = sorted(str(p.parent.relative_to(wd / "results" / "test" / "measure_shards"))
                  for p in (wd / "results" / "test" / "measure_shards").rglob("shard.json"))
    assert done, "no shard had finished: nothing was tested"
    p = snakemake(wd, "--config", "runtime={shards: 3}")
    rerun = {w.replace("ckpt=", "").replace(", scatteritem=", "/") for w in planned_wildcards(p.stdout + p.stderr, "measure_shard")}
    assert rerun and not rerun & set(done), (rerun, done)
    assert len(rerun) + len(done) == 6
    problems = _same(study[0], wd)
    assert not problems, "\n".join(problems[:30])
    prov = json.loads((wd / "results" / "test" / "measure" / "tiny-llama" / "activation_stats.json").read_text())["provenance"]
    assert prov["shards"]["count"] == 3 and [s["index"] for s in prov["shards"]["parts"]] == [1, 2, 3]
    assert sum(s["samples"] for s in prov["shards"]["parts"]) == 12
    shutil.rmtree(wd, ignore_errors=True)

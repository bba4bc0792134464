"""The tiny study through a real (single-node) Slurm cluster gives the same results as a local run.

Needs the cluster from `.ci/slurm/start.sh` (slurmctld + slurmd on localhost, partition `debug`,
two device-less "GPUs") and snakemake-executor-plugin-slurm. Skips when `sbatch`/`sinfo` are
missing or the cluster is not up, unless MAXACT_REQUIRE_SLURM=1 (then it fails). With
MAXACT_SLURM_START=1 the test starts the cluster itself (root only) and stops it afterwards.

The workflow runs from the same Snakefile and config, each run in its own working directory:
  local:  snakemake --cores 2 --resources gpu=1 --configfile config/test.yaml  (the session's `study` fixture)
  slurm:  snakemake --profile profiles/slurm --profile profiles/slurm-ci --configfile config/test.yaml
  slurm, sharded: the same with runtime.shards: 2
The Slurm run must have sent every non-local job through sbatch (job ids from Snakemake's output,
checked against slurmctld with `scontrol show job`, GPU rules holding `gres:gpu:N`), and both
runs must produce the same files, with equal JSON (apart from run-specific keys such as
timestamps, durations and host names) and equal Parquet tables.

MAXACT_SLURM_TEST_WORKFLOW=<dir> runs another workflow instead (a directory holding a Snakefile
and config/test.yaml), for trying the Slurm setup on a throwaway workflow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import compare_results, result_files

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = Path(os.environ.get("MAXACT_SLURM_TEST_WORKFLOW") or REPO).resolve()
SNAKEFILE = WORKFLOW / "Snakefile"
TEST_CONFIG = WORKFLOW / "config" / "test.yaml"
PROFILE = REPO / "profiles" / "slurm"
CI_PROFILE = REPO / "profiles" / "slurm-ci"
PARTITION = "debug"  # the CI cluster's partition, as set in profiles/slurm-ci
RUN_TIMEOUT = 1500  # seconds per Snakemake run
_CONFIG = yaml.safe_load(TEST_CONFIG.read_text()) if TEST_CONFIG.is_file() else {}
RESULTS = Path(_CONFIG.get("results_dir", "results"))  # where the test config puts results, relative to the working dir
CHECKPOINTS = [c["name"] for c in _CONFIG.get("checkpoints", [])]

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(2 * RUN_TIMEOUT + 300)]

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*?)\)\.?$", re.M)


# --------------------------------------------------------------------------- cluster availability


def _cluster_problem() -> str | None:
    """Why the CI cluster can't be used, or None when it can."""
    for tool in ("sbatch", "sinfo", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (no Slurm client; run .ci/slurm/start.sh as root)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    try:
        p = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out (slurmctld not answering)"
    if p.returncode != 0:
        return f"the Slurm cluster is not up (`sinfo` failed: {p.stderr.strip()}); run .ci/slurm/start.sh"
    states = set(p.stdout.split())
    if not states:
        return f"the Slurm cluster has no partition `{PARTITION}` (not the .ci/slurm/start.sh cluster)"
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no usable node in partition `{PARTITION}` (states: {', '.join(sorted(states))})"
    return None


@pytest.fixture(scope="module")
def cluster():
    started = False
    problem = _cluster_problem()
    if problem and os.environ.get("MAXACT_SLURM_START") == "1":
        subprocess.run([str(REPO / ".ci" / "slurm" / "start.sh")], check=True, timeout=600)
        started = True
        problem = _cluster_problem()
    if problem:
        if os.environ.get("MAXACT_REQUIRE_SLURM") == "1":
            pytest.fail(f"MAXACT_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    yield
    if started:
        subprocess.run([str(REPO / ".ci" / "slurm" / "stop.sh")], timeout=120)


# --------------------------------------------------------------------------- the two runs


def _snakemake(workdir: Path, *args: str, config: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--configfile", str(TEST_CONFIG), *(("--config", *config) if config else ()), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SNAKEMAKE_PROFILE", None)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=REPO, env=env)
    (workdir / "snakemake.out").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nfailed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-8000:]}")
    return p


@pytest.fixture(scope="module")
def runs(cluster, study, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm_vs_local")
    slurm = base / "slurm"
    slurm.mkdir()
    if WORKFLOW == REPO:  # the local run: the test study every workflow test compares against (results/test)
        local, p_local = study
    else:
        local = base / "local"
        local.mkdir()
        p_local = _snakemake(local, "--cores", "2", "--resources", "gpu=1", "--workflow-profile", "none")
    p_slurm = _snakemake(slurm, "--profile", str(PROFILE), "--profile", str(CI_PROFILE),
                         "--workflow-profile", "none")
    sharded = base / "slurm_sharded"
    sharded.mkdir()
    # runtime.shards: 2 -> each checkpoint's measurement is two sbatch jobs (measure_shard) and a merge; only the
    # merged measurements are asked for (what sharding changes; the unsharded Slurm run makes the rest of the study)
    p_sharded = _snakemake(sharded, "--profile", str(PROFILE), "--profile", str(CI_PROFILE), "--workflow-profile", "none",
                           *(str(RESULTS / "measure" / c / "activation_stats.json") for c in CHECKPOINTS),
                           config=("runtime={shards: 2}",))
    return {"local": (local, p_local), "slurm": (slurm, p_slurm), "slurm_sharded": (sharded, p_sharded)}


# --------------------------------------------------------------------------- helpers


def _job_blocks(output: str) -> list[tuple[str, bool, dict[str, str]]]:
    """(rule, is_local, resources) for every job Snakemake announced in its log."""
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", "\n" + output):
        m = re.match(r"(local)?rule (\S+):", block)
        if not m:
            continue
        res = {}
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        if r:
            for item in r.group(1).split(", "):
                k, _, v = item.partition("=")
                res[k.strip()] = v.strip()
        out.append((m.group(2), bool(m.group(1)), res))
    return out


def _rule_of(log: str) -> str:
    """Rule name from the plugin's log path: <slurm logdir>/rule_<rule>/[<wildcards>/]<jobid>.log."""
    parts = Path(log).parts
    below = parts[parts.index("slurm_logs") + 1:] if "slurm_logs" in parts else parts[-2:]
    return below[0].removeprefix("rule_")


def _scontrol_job(jobid: str) -> dict[str, str]:
    p = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"slurmctld does not know job {jobid}: {p.stderr}"
    return dict(re.findall(r"(\S+?)=(\S*)", p.stdout))


# --------------------------------------------------------------------------- tests


def test_every_remote_job_went_through_sbatch(runs):
    wd, p = runs["slurm"]
    out = p.stdout + p.stderr
    jobs = _job_blocks(out)
    remote = [(rule, res) for rule, is_local, res in jobs if not is_local]
    submitted = SUBMITTED.findall(out)
    assert remote, f"no remote jobs in the Slurm run's log:\n{out[-3000:]}"
    assert len(submitted) == len(remote), (
        f"{len(remote)} remote jobs but {len(submitted)} sbatch submissions:\n{out[-3000:]}")
    submitted_rules = sorted(_rule_of(log) for _, _, log in submitted)
    assert submitted_rules == sorted(rule for rule, _ in remote)

    gpus_by_rule: dict[str, set[str]] = {}
    for rule, res in remote:
        gpus_by_rule.setdefault(rule, set()).add(res.get("gpu", "0"))
    for _, slurm_id, log in submitted:
        info = _scontrol_job(slurm_id)
        rule = _rule_of(log)
        assert info.get("JobState") == "COMPLETED", (slurm_id, info.get("JobState"))
        assert info.get("Partition") == PARTITION
        assert Path(info["WorkDir"]).resolve() == wd.resolve()
        assert Path(log).is_file(), f"Slurm log {log} missing"
        wanted = gpus_by_rule[rule] - {"0"}
        tres = info.get("TresPerJob", "") + info.get("TresPerNode", "")
        if wanted:
            got = re.search(r"gres:gpu:(\d+)", tres)
            assert got and got.group(1) in wanted, f"job {slurm_id} ({rule}) wanted gpu={wanted}, Slurm has {tres!r}"
        else:
            assert "gpu" not in tres, f"CPU job {slurm_id} ({rule}) got a GPU: {tres!r}"


def test_gpu_rules_asked_slurm_for_gpus(runs):
    """The rules' portable `resources: gpu=N` reaches Slurm without any GPU setting in the profile."""
    _, p = runs["slurm"]
    gpu_jobs = [rule for rule, is_local, res in _job_blocks(p.stdout + p.stderr)
                if not is_local and int(res.get("gpu", "0") or 0) > 0]
    assert gpu_jobs, "the workflow declared no GPU jobs (resources: gpu=N)"


def test_slurm_results_equal_local_results(runs):
    (lwd, _), (swd, _) = runs["local"], runs["slurm"]
    lres, sres = lwd / RESULTS, swd / RESULTS
    assert result_files(lres), "the local run produced no results"
    roots = [str(lwd), str(swd), str(lwd.resolve()), str(swd.resolve())]
    problems = compare_results(lres, sres, roots, names=("local", "slurm"))
    assert not problems, "Slurm results differ from local results:\n" + "\n".join(problems[:40])


def test_a_sharded_study_on_slurm_equals_the_unsharded_local_one(runs):
    """runtime.shards on the Slurm cluster: every shard its own sbatch job (gres:gpu:1), merged into the measurements of
    the unsharded local run (float64 sums within 1e-9; the split itself only in the provenance)."""
    (lwd, _), (swd, p) = runs["local"], runs["slurm_sharded"]
    out = p.stdout + p.stderr
    shard_jobs = [log for _, _, log in SUBMITTED.findall(out) if _rule_of(log) == "measure_shard"]
    assert len(shard_jobs) == 4, out[-3000:]  # 2 shards x 2 checkpoints, each submitted on its own
    roots = [str(lwd), str(swd), str(lwd.resolve()), str(swd.resolve())]
    problems = compare_results(lwd / RESULTS / "measure", swd / RESULTS / "measure", roots, names=("local", "slurm sharded"),
                               drop_keys=r"^(shards|shard)$")
    assert not problems, "Sharded Slurm results differ from local results:\n" + "\n".join(problems[:40])

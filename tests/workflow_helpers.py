"""Running the workflow from a test, and comparing the results of two runs (shared by the workflow, kill and
Slurm tests)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "config" / "test.yaml"

# JSON keys (and Parquet columns) whose values legitimately differ between two runs of the same
# job: timestamps, durations (`duration*`, `wall*`, `elapsed*`, `seconds`, `*_seconds`), host
# names, `run_*` ids.
VOLATILE_KEY = re.compile(r"(^|_)(timestamp|created|hostname|duration|wall|elapsed)|^run_|(^|_)seconds$", re.I)


def snakemake(workdir: Path, *args, configfile: Path = TEST_CONFIG, check=True, timeout=1200):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", "--resources", "gpu=1", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def planned(output: str) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    m = re.search(r"Job stats:\n(.*?)\n\n", output + "\n\n", re.S)
    counts = {}
    if m:
        for line in m.group(1).splitlines()[2:]:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
    return counts


def planned_wildcards(output: str, rule: str) -> list[str]:
    out = []
    for block in re.split(r"\n(?=(?:local)?rule )", output):
        if block.startswith((f"rule {rule}:", f"localrule {rule}:")):
            m = re.search(r"wildcards: (.*)", block)
            out.append(m.group(1).strip() if m else "")
    return out


def clean(obj, roots: list[str], drop: re.Pattern | None = None):
    """Drop volatile keys (and keys matching ``drop``) recursively; replace each run's own directory in strings by <WD>."""
    if isinstance(obj, dict):
        return {k: clean(v, roots, drop) for k, v in obj.items()
                if not VOLATILE_KEY.search(str(k)) and not (drop and drop.search(str(k)))}
    if isinstance(obj, list):
        return [clean(v, roots, drop) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "<WD>")
        return obj
    return obj


def diff(a, b, path="$", names=("first", "second")) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in the {names[1] if k in b else names[0]} run")
            else:
                out += diff(a[k], b[k], f"{path}.{k}", names)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]", names)]
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if math.isnan(a) and math.isnan(b) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return []
        return [f"{path}: {a!r} ({names[0]}) != {b!r} ({names[1]})"]
    return [] if a == b else [f"{path}: {a!r} ({names[0]}) != {b!r} ({names[1]})"]


def clean_frame(df, roots: list[str]):
    import pandas as pd

    df = df.drop(columns=[c for c in df.columns if VOLATILE_KEY.search(str(c))])
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
            df[c] = df[c].map(lambda v: clean(v, roots))
    return df


def result_files(results: Path) -> set[str]:
    return {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()}


def compare_results(a_res: Path, b_res: Path, roots: list[str], names=("first", "second"), skip_files: str | None = None,
                    drop_keys: str | None = None) -> list[str]:
    """Differences between two result trees: the same files, equal JSON (volatile keys aside, floats to 1e-9) and
    equal Parquet tables. ``skip_files``: a regex of relative paths left out of the comparison; ``drop_keys``: a regex
    of JSON keys dropped. An empty list: the same results."""
    import pandas as pd

    skip = re.compile(skip_files) if skip_files else None
    drop = re.compile(drop_keys) if drop_keys else None
    afiles, bfiles = ({f for f in result_files(r) if not (skip and skip.search(f))} for r in (a_res, b_res))
    if afiles != bfiles:
        return [f"only in the {names[0]} run: {sorted(afiles - bfiles)}; only in the {names[1]} run: {sorted(bfiles - afiles)}"]
    problems = []
    for f in sorted(x for x in afiles if x.endswith(".json")):
        a = clean(json.loads((a_res / f).read_text()), roots, drop)
        b = clean(json.loads((b_res / f).read_text()), roots, drop)
        problems += [f"{f}: {d}" for d in diff(a, b, names=names)[:10]]
    for f in sorted(x for x in afiles if x.endswith(".parquet")):
        a, b = (clean_frame(pd.read_parquet(r / f), roots) for r in (a_res, b_res))
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)
        except AssertionError as e:
            problems.append(f"{f}: {str(e)[:1500]}")
    return problems


def maxact(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """The `maxact` command line as a user runs it: a subprocess of this Python."""
    return subprocess.run([sys.executable, "-m", "maxact.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)

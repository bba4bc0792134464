"""The rehearsal's table: one row per checkpoint of a study config, from its measure results.

Reads ``<results_dir>/measure/<name>/activation_stats.json`` (tokens, measure seconds, peak GPU memory,
attention and kernels from the provenance). A checkpoint without a result keeps its row, with the
reason from its rule log. Projects the time to measure the paper's full corpus from each tokens/s.

    python benchmarks/rehearsal_table.py --config config/rehearsal.yaml [--results results/rehearsal] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

PAPER_TOKENS = 17.0e6  # the paper's corpus: 5,000 samples, mean about 3,400 tokens


def _short_kernels(prov: dict) -> str:
    k = prov.get("kernels") or {}
    parts = [f"attention {k.get('attention')}"]
    if k.get("experts"):
        parts.append(f"experts {k['experts']}")
    for fn, impl in sorted((k.get("optional") or {}).items()):
        parts.append(f"{fn}: {'torch reference' if impl.startswith('torch reference') else impl.split('.')[0]}")
    parts.append(f"statistics {str(prov.get('statistics_kernel')).split(' ')[0]}")
    return "; ".join(parts)


def failure_reason(log: Path, missing: str = "not run") -> str:
    if not log.exists():
        return missing
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|error|Exception|out of memory)", ln):
            return ln[:200]
    return (lines[-1][:200] if lines else f"{missing} (log empty: the job was stopped)")


def rows(config: dict, results: Path, missing: str = "not run") -> list[dict]:
    out = []
    for c in config["checkpoints"]:
        name = c["name"]
        f = results / "measure" / name / "activation_stats.json"
        row = {"checkpoint": name, "model_type": c.get("model_type"), "params_b": c.get("params_b")}
        if not f.exists():
            row["status"] = failure_reason(results / "logs" / "measure" / f"{name}.log", missing)
            out.append(row)
            continue
        r = json.loads(f.read_text())
        prov = r["provenance"]
        secs = prov["durations"]["measure_seconds"]
        tok_s = r["num_tokens"] / secs if secs else None
        bench = results / "benchmarks" / "measure" / f"{name}.tsv"
        job_s = float(bench.read_text().splitlines()[1].split("\t")[0]) if bench.exists() else None
        row.update(status="ok", job_s=job_s, tokens=r["num_tokens"], seconds=secs, tok_s=tok_s, peak_gib=prov.get("peak_gpu_memory_gib"),
                   kernels=_short_kernels(prov), load_s=prov["durations"]["load_seconds"], oom_splits=len(prov.get("oom_splits") or []),
                   projected_h=PAPER_TOKENS / tok_s / 3600 if tok_s else None, device=prov.get("device_name"))
        out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| checkpoint | model_type | device | tokens/s | peak GPU memory (GiB) | attention and kernels | projected time for 17.0M tokens (h) | measure job (s) | status |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in table:
        if r["status"] != "ok":
            lines.append(f"| {r['checkpoint']} | {r['model_type']} | | | | | | | {r['status']} |")
            continue
        note = "ok" + (f", {r['oom_splits']} out-of-memory split(s)" if r["oom_splits"] else "")
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        lines.append(f"| {r['checkpoint']} | {r['model_type']} | {r['device']} | {r['tok_s']:,.0f} | {peak} | {r['kernels']} | "
                     f"{r['projected_h']:.2f} | {r['job_s'] if r['job_s'] is not None else ''} | {note} |")
    done = [r for r in table if r["status"] == "ok"]
    total = sum(r["projected_h"] for r in done)
    lines.append("")
    lines.append(f"Total for the {len(done)} measured checkpoints: **{total:.1f} device-hours** "
                 f"({', '.join(sorted({str(r['device']) for r in done})) or 'none'}) of measurement for the paper's "
                 f"{PAPER_TOKENS / 1e6:.1f}M-token corpus (model load and the INT-8/probe stages not included)."
                 + (f" Not measured: {', '.join(r['checkpoint'] for r in table if r['status'] != 'ok')}." if len(done) < len(table) else ""))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/rehearsal.yaml")
    ap.add_argument("--results", help="results folder (default: the config's results_dir)")
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--missing", default="not run", help="status of a checkpoint with neither a result nor an error in its log")
    a = ap.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text())
    table = rows(config, Path(a.results or config.get("results_dir", "results")), a.missing)
    md = markdown(table)
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()

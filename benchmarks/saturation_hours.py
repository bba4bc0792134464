"""Hours of the saturation study (config/saturation.yaml, 20,000 samples) from a rehearsal run of its twin.

Reads a results folder of config/saturation_rehearsal.yaml (every checkpoint measured in shards through the DAG)
and prints, per checkpoint: the GPU, the tokens the rehearsal measured, the rate (tokens / the shards' measuring
seconds: warm-up included, so a short rehearsal understates the steady rate), each shard job's overhead (the
Snakemake benchmark's wall seconds minus its measuring seconds: start-up and load), and the projected hours of the
20,000-sample corpus on one GPU unsharded and cut into --shards shards on as many GPUs. Tokens of the real run:
--tokens-per-sample (default 3,400: the paper's 17.0M tokens over its 5,000 samples) times 20,000.

    python benchmarks/saturation_hours.py RESULTS_DIR [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def rows(results: Path, tokens_per_sample: float, n_samples: int, shards: int) -> list[dict]:
    out = []
    for stats in sorted((results / "measure").glob("*/activation_stats.json")):
        name = stats.parent.name
        d = json.loads(stats.read_text())
        sh = (d.get("provenance") or {}).get("shards") or {}
        parts = sh.get("parts") or []
        measure_s = sum(p["durations"]["measure_seconds"] for p in parts) or d["provenance"]["durations"]["measure_seconds"]
        overheads = []
        for p in parts:
            tsv = results / "benchmarks" / "measure_shard" / name / f"{p['index']}-of-{p['count']}.tsv"
            if tsv.exists():
                with open(tsv) as f:
                    wall = float(next(csv.DictReader(f, delimiter="\t"))["s"])
                overheads.append(wall - p["durations"]["measure_seconds"])
        rate = d["num_tokens"] / measure_s if measure_s else float("nan")
        total = tokens_per_sample * n_samples
        over = max(overheads) if overheads else 0.0
        hours_1 = (total / rate + over) / 3600
        hours_n = (total / rate / shards + over) / 3600
        out.append({"checkpoint": name, "gpu": d["provenance"].get("device_name"), "tokens": d["num_tokens"],
                    "shards": len(parts), "measure_seconds": round(measure_s, 2), "tok_per_s": round(rate),
                    "shard_overhead_s": round(over, 1), "projected_tokens": int(total),
                    "hours_one_gpu": round(hours_1, 2), f"hours_{shards}_shards": round(hours_n, 2)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results folder of a config/saturation_rehearsal.yaml run")
    ap.add_argument("--tokens-per-sample", type=float, default=17.0e6 / 5000)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=8, help="shards (GPUs) per checkpoint for the sharded column")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    rs = rows(Path(a.results), a.tokens_per_sample, a.samples, a.shards)
    keys = list(rs[0]) if rs else []
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    for r in rs:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    tot1 = sum(r["hours_one_gpu"] for r in rs)
    totn = sum(r[f"hours_{a.shards}_shards"] for r in rs)
    print(f"\nTotal: {tot1:.1f} GPU-hours with every checkpoint on one GPU; {totn:.2f} h of wall time on {a.shards} GPUs "
          f"with every checkpoint cut into {a.shards} shards, one checkpoint after another")
    if a.json:
        Path(a.json).write_text(json.dumps(rs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

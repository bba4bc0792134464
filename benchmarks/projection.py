"""H200-hours for the paper's 27 checkpoints with packed measurement, from the measured files.

The rehearsal (``rehearsal.json``: every checkpoint, padded measurement through the DAG, 145k tokens each)
over-weights one-off compile and autotune costs, so each checkpoint's rate is first brought to the steady
state of its family's representative (``families.py`` before packing: padded measured tok/s / the
representative's rehearsal tok/s). The packed rate is then that steady-state rate times the family's gain,
both ratios to the padded bare forward of their own run (so runs with different batch caps compare):

    gain = (packed measured / padded bare, packed families.py run) / (measured / bare, padded families.py run)

Prints one row per checkpoint and the totals for the paper's corpus (17.0M tokens).

With ``--shards-bench`` (a ``benchmarks/shards.py`` result) it also projects the wall time of the whole paper on
``--gpus`` GPUs, each checkpoint one job (the packed hours plus one process's start-up and load) against each
checkpoint cut into one shard per GPU (its hours / shards plus, per shard, a start-up, a load and the warm-up the
benchmark measured, and one merge per checkpoint). Jobs go longest first to the GPU free soonest (what a cluster
queue or ``snakemake --resources gpu=N`` does with jobs ready at once). Loads scale with the checkpoint's
parameters from the benchmark's seconds per billion. Also one checkpoint alone (``--alone``) at ``--alone-scale``
times the paper's tokens (4: the 20,000-sample corpus).

With ``--compiled`` (a ``families.py --compiled`` run) each family's packed rate is further multiplied by its
compiled gain (compiled measured / eager packed measured, both of that run) where ``measure.compile: auto`` compiles
it (the registry's ``Compile.checked`` holds cuda); the others keep their packed rate.

    python benchmarks/projection.py
    python benchmarks/projection.py --compiled benchmarks/measured/<run>/families_compiled.json
    python benchmarks/projection.py --shards-bench benchmarks/measured/<run>/shards_qwen3-8b.json --gpus 8
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "measured"
PAPER_TOKENS = 17.0e6
# The family representative each checkpoint's steady state and gain come from (families.py's set).
REPRESENTATIVE = {"qwen2": "Qwen2.5-7B", "qwen2_5_vl": "Qwen2.5-VL-7B", "qwen3": "Qwen3-8B", "qwen3_moe": "Qwen3-30B-A3B",
                  "qwen3_5": "Qwen3.5-9B", "qwen3_5_moe": "Qwen3.5-35B-A3B", "gemma": "gemma-2b", "gemma2": "gemma-2-9b",
                  "gemma3": "gemma-3-4b-it", "gpt_oss": "gpt-oss-20b", "bailing_hybrid": "Ling-mini-20T"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rehearsal", default=str(ROOT / "h200-2026-12-01" / "rehearsal.json"))
    ap.add_argument("--padded", default=str(ROOT / "h200-2026-12-01" / "families_full_stats_all.json"))
    ap.add_argument("--packed", nargs="+", default=[str(ROOT / "h200-2026-12-02" / "families_packed_all.json"),
                                                    str(ROOT / "h200-2026-12-02c" / "families_gemma2_flex.json")],
                    help="families.py runs, packed; a checkpoint in a later file replaces its row of an earlier one")
    ap.add_argument("--compiled", nargs="+", default=[],
                    help="families.py --compiled runs or throughput.py --compiled results (a later file's checkpoint "
                         "replaces an earlier one's): the compiled gain per family, where auto compiles")
    ap.add_argument("--shards-bench", help="a benchmarks/shards.py result: project the wall time on --gpus GPUs")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--alone", default="Qwen2.5-32B-Instruct", help="the checkpoint of the one-checkpoint projection")
    ap.add_argument("--alone-scale", type=float, default=4.0, help="its tokens, in paper corpora")
    a = ap.parse_args(argv)
    rehearsal = json.loads(Path(a.rehearsal).read_text())
    padded = {r["checkpoint"]: r for r in json.loads(Path(a.padded).read_text())}
    packed = {r["checkpoint"]: r for f in a.packed for r in json.loads(Path(f).read_text())}
    by_name = {r["checkpoint"]: r for r in rehearsal}
    compiled = {r["checkpoint"]: r for f in a.compiled for r in _compiled_rows(json.loads(Path(f).read_text()))}
    head = "| checkpoint | family forward | rehearsal tok/s | steady padded tok/s | gain | packed tok/s | paper corpus padded (h) | packed (h) |"
    if compiled:
        head += " compiled gain | compiled tok/s | compiled (h) |"
    print(head)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if compiled else ""))
    tot_rehearsal = tot_padded = tot_packed = tot_compiled = 0.0
    hours: dict[str, tuple[float, float]] = {}  # checkpoint -> (packed seconds of the paper corpus, params in B)
    for r in rehearsal:
        rep = REPRESENTATIVE[r["model_type"]]
        old, new = padded[rep], packed[rep]
        steady = r["tok_s"] * old["measured_tok_s"] / by_name[rep]["tok_s"]
        gain = (new["ratios"]["packed_measured_vs_padded_bare"]) / (old["measured_tok_s"] / old["bare_tok_s"])
        rate = steady * gain
        h_old, h_new = PAPER_TOKENS / steady / 3600, PAPER_TOKENS / rate / 3600
        tot_rehearsal += PAPER_TOKENS / r["tok_s"] / 3600
        tot_padded += h_old
        tot_packed += h_new
        fwd = "packed" if new["method"] == "varlen" else "padded"
        row = f"| {r['checkpoint']} | {fwd} | {r['tok_s']:,.0f} | {steady:,.0f} | {gain:.2f} | {rate:,.0f} | {h_old:.2f} | {h_new:.2f} |"
        if compiled:
            c = compiled.get(rep)
            cgain = c["ratios"]["compiled_measured_vs_packed_measured"] if c and _auto_compiles(r["model_type"]) else 1.0
            h_c = PAPER_TOKENS / (rate * cgain) / 3600
            tot_compiled += h_c
            row += f" {cgain:.2f} | {rate * cgain:,.0f} | {h_c:.2f} |"
            h_new = h_c
        hours[r["checkpoint"]] = (h_new * 3600, float(r["params_b"]))
        print(row)
    print(f"\nPaper corpus ({PAPER_TOKENS / 1e6:.1f}M tokens), 27 checkpoints: {tot_rehearsal:.1f} H200-hours at the rehearsal's "
          f"rates, {tot_padded:.1f} at the padded steady state, **{tot_packed:.1f} packed** "
          f"({tot_padded / tot_packed:.2f}x fewer than padded)" + (
              f"; **{tot_compiled:.1f} compiled where measure.compile: auto compiles** ({tot_packed / tot_compiled:.2f}x "
              "fewer than packed eager)." if compiled else "."))
    if a.shards_bench:
        wall_times(hours, json.loads(Path(a.shards_bench).read_text()), a.gpus, a.alone, a.alone_scale)


# throughput.py's presets as the rehearsal's checkpoint names (a throughput.py result counts as that row).
PRESET_CHECKPOINT = {"qwen3-8b": "Qwen3-8B", "qwen3-30b-a3b": "Qwen3-30B-A3B", "gemma-2b": "gemma-2b", "gemma-2-9b": "gemma-2-9b"}


def _compiled_rows(data) -> list[dict]:
    if isinstance(data, dict):  # one throughput.py result
        if data["preset"] not in PRESET_CHECKPOINT:
            raise SystemExit(f"throughput.py preset {data['preset']!r} is no rehearsal checkpoint (known: {', '.join(PRESET_CHECKPOINT)})")
        return [{**data, "checkpoint": PRESET_CHECKPOINT[data["preset"]]}] if "compiled_measured" in data["paths"] else []
    return [r for r in data if "error" not in r and "compiled_measured" in r.get("paths", {})]


def _auto_compiles(model_type: str) -> bool:
    from maxact.measurement.compiled import resolve_compile
    from maxact.models.registry import family_for

    return resolve_compile(family_for(type("C", (), {"model_type": model_type})), "auto", "cuda")[0]


def makespan(jobs: list[float], gpus: int) -> float:
    """Longest job first, each to the GPU free soonest."""
    free = [0.0] * gpus
    for t in sorted(jobs, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def wall_times(seconds: dict[str, tuple[float, float]], bench: dict, gpus: int, alone: str, alone_scale: float) -> None:
    """The paper's wall time on ``gpus`` GPUs with and without sharding, from the per-process costs of ``bench``."""
    procs = bench["processes"]
    shard_procs = procs[1:]
    params_b = seconds.get(bench["checkpoint"], (0, 8.0))[1]
    startup = sum(p["startup"] + p["rest"] for p in shard_procs) / len(shard_procs)
    load_per_b = sum(p["load"] for p in shard_procs) / len(shard_procs) / params_b
    # warm-up: what a shard's measurement takes beyond its share of the unsharded measurement's seconds
    warmup = max(0.0, (sum(p["measure"] for p in shard_procs) - procs[0]["measure"]) / len(shard_procs))
    merge = bench["merge_wall"]
    first_warmup = max(0.0, procs[0]["measure"] - bench["corpus"]["tokens"] * bench["projection"]["measure_seconds_per_mtoken"] / 1e6)

    def job(name, scale=1.0, shards=1):
        s, b = seconds[name]
        return s * scale / shards + startup + load_per_b * b + (warmup if shards > 1 else first_warmup)

    print(f"\nWall time on {gpus} GPUs (per process, from {bench['checkpoint']} on {bench['device_name']}: start-up and "
          f"rest {startup:.1f} s, load {load_per_b:.2f} s per billion parameters, warm-up {warmup:.1f} s; merge "
          f"{merge:.1f} s per checkpoint):\n")
    counts = [n for n in (2, 4, 8, 16) if n <= gpus] + ([gpus] if gpus not in (2, 4, 8, 16) else [])
    print("| what | GPU-hours | ideal (GPU-hours / GPUs) | without sharding | " + " | ".join(f"{n} shards each" for n in counts) + " |")
    print("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in counts) + " |")
    for label, names, scale in ((f"the paper: 27 checkpoints x {PAPER_TOKENS / 1e6:.0f}M tokens", list(seconds), 1.0),
                                (f"the paper x {alone_scale:g} (the 20,000-sample corpus)", list(seconds), alone_scale),
                                (f"{alone} alone x {alone_scale * PAPER_TOKENS / 1e6:.0f}M tokens", [alone], alone_scale)):
        gpu_h = sum(seconds[n][0] * scale for n in names) / 3600
        plain = makespan([job(n, scale) for n in names], gpus)
        cells = []
        for n in counts:
            sharded = makespan([job(c, scale, n) for c in names for _ in range(n)], gpus) + merge
            cells.append(f"{sharded / 3600:.2f} h ({plain / sharded:.2f}x)")
        print(f"| {label} | {gpu_h:.2f} | {gpu_h / gpus:.2f} h | {plain / 3600:.2f} h | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

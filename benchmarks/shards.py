"""What sharding one checkpoint's measurement costs, on one GPU, and whether the merged result equals the whole.

Runs, each as its own process the way the workflow's jobs run (a fresh Python, CUDA context and model load; by
default each with its own empty Triton/Inductor caches, as on a fresh cluster node):

1. the unsharded measurement (``measure_checkpoint``, the stage the ``measure`` rule and ``maxact measure`` call);
2. the N shards of the same batch plan one after another (``--shard K/N``);
3. ``maxact merge`` of the shard folders (the command line itself).

The checkpoint is a public shape from ``config/rehearsal.yaml`` (``--config``) with random weights, either saved once as safetensors
and loaded from that folder by every process (``--weights disk``, the default: loads like a user's checkpoint, from a
warm page cache) or built and seeded on the GPU by every process (``--weights random``: no disk, for shapes too large
to save). The corpus is random token ids with the paper corpus's lengths (136 to 5,422 tokens, mean about 3,400), at
least ``--min-tokens`` of them, in the tokens file format of the tokenize rule.

Prints, per process, its wall time split into start-up (Python, imports, CUDA), model load, measurement and the rest
(statistics to the host, files), and the overhead of sharding: (sum of the shard processes + merge) - the unsharded
process, as a fraction of the unsharded measurement, split into extra start-ups, extra loads, extra warm-up (the
shards' measurement seconds beyond the unsharded run's: first-batch kernel compiles and autotuning per process), extra
rest and the merge. The overhead is a fixed cost per shard, so the script also gives the fraction at the paper's 17M
tokens and the token count at which it falls to 5%. Then compares the merged folder with the unsharded one
(tests/result_compare.py): extremes, counts, histograms, top-k and per-sample rows exactly; float sums within 1e-9
(``bit_identical``: they were equal too).

    python benchmarks/shards.py --checkpoint Qwen3-8B --shards 4 --min-tokens 1000000 --out shards_qwen3-8b.json
    python benchmarks/shards.py --checkpoint Qwen3-30B-A3B --weights random --min-tokens 300000 --out shards_moe.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
PAPER_TOKENS = 17.0e6
GOAL = 0.05


def config_entry(config: Path, name: str) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(config).read_text())
    for e in cfg["checkpoints"]:
        if e["name"] == name:
            if e.get("source") != "random":
                raise SystemExit(f"{name!r} of {config} is not a random-init shape (source: random)")
            return e
    raise SystemExit(f"{name!r} is not a checkpoint of {config}")


def workload(vocab: int, min_tokens: int, max_len: int, path: Path, seed: int = 0) -> dict:
    """Random token ids with corpus-like lengths (at least ``min_tokens``) written as a tokens file; its meta."""
    import hashlib

    import numpy as np
    import pandas as pd
    from throughput import corpus_like_lengths

    from maxact.corpus.tokenization import write_tokens

    hi = min(5422, max_len)
    lo = min(136, hi // 4)
    lengths = corpus_like_lengths(int(min_tokens / 3000) + 64, lo=lo, hi=hi, mean=min(3400, lo + 0.6 * (hi - lo)), seed=seed)
    while sum(lengths) < min_tokens:
        lengths += corpus_like_lengths(64, lo=lo, hi=hi, mean=min(3400, lo + 0.6 * (hi - lo)), seed=seed + len(lengths))
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), min_tokens)) + 1]
    rng = np.random.default_rng(seed + 1)
    ids = [rng.integers(3, vocab, size=n).tolist() for n in lengths]  # past the byte tokenizer's specials
    df = pd.DataFrame({"sample_id": [f"s{i:06d}" for i in range(len(ids))], "input_ids": ids, "n_tokens": lengths})
    sha = hashlib.sha256(np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]).tobytes()).hexdigest()
    meta = {"corpus_sha256": sha, "max_seq_len": max(lengths), "add_special_tokens": False, "truncate": True}
    write_tokens(df, path, meta)
    return {"samples": len(ids), "tokens": int(sum(lengths)), "mean_len": float(np.mean(lengths)), "min_len": min(lengths),
            "max_len": max(lengths), "corpus_sha256": sha}


# ---- the processes ----------------------------------------------------------------------------------------------

def worker(spec: dict) -> None:
    """One process: save the random model (``save``) or measure (the whole, or one shard). Writes its timings."""
    t0 = time.perf_counter()
    import torch

    from maxact.corpus.tokenization import read_tokens
    from maxact.measurement.settings import MeasureSettings
    from maxact.measurement.shards import Shard
    from maxact.stages.measure import measure_checkpoint

    if spec["task"] == "save":
        from maxact.models.checkpoints import load_tokenizer
        from maxact.stages.loading import load

        loaded = load(spec["prepared"], MeasureSettings.of(spec["settings"]), device=torch.device(spec["settings"]["device"]))
        loaded.model.save_pretrained(spec["folder"])
        load_tokenizer(spec["prepared"]).save_pretrained(spec["folder"])
        return
    if spec["settings"]["device"] == "cuda":
        torch.cuda.init()  # the CUDA context is start-up, not load
    started = time.perf_counter()
    tokens, meta = read_tokens(spec["tokens"])
    shard = Shard.parse(spec["shard"]) if spec.get("shard") else None
    res = measure_checkpoint(spec["prepared"], tokens, meta, spec["out"], settings=spec["settings"], shard=shard,
                             write_exports=bool(spec["settings"].get("exports")))
    done = time.perf_counter()
    d = res["provenance"]["durations"]
    Path(spec["timings"]).write_text(json.dumps({
        "startup_in_process": started - t0, "in_stage": done - started, "load": d["load_seconds"],
        "measure": d["measure_seconds"], "device_name": res["provenance"]["device_name"], "tokens": res["num_tokens"],
        "global_max": res["global_max_activation"], "packing": res["provenance"]["packing"]["method"],
        "peak_gpu_memory_gib": res["provenance"]["peak_gpu_memory_gib"]}))


def run_process(args: list[str], env: dict, label: str) -> float:
    t = time.perf_counter()
    r = subprocess.run(args, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"{label} failed (exit {r.returncode})")
    print(f"{label}: {wall:.1f} s", flush=True)
    return wall


def fresh_env(work: Path, label: str, fresh_caches: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if fresh_caches:  # each process compiles its kernels as a job on a fresh node would
        for var in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
            d = work / "caches" / label / var.lower()
            d.mkdir(parents=True, exist_ok=True)
            env[var] = str(d)
    return env


def measure_process(work: Path, prepared: dict, tokens: Path, settings: dict, label: str, shard: str | None,
                    fresh_caches: bool) -> dict:
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    spec = {"task": "measure", "prepared": prepared, "tokens": str(tokens), "settings": settings, "out": str(out),
            "shard": shard, "timings": str(work / f"{label}.timings.json")}
    wall = run_process([sys.executable, __file__, "--worker", json.dumps(spec)], fresh_env(work, label, fresh_caches), label)
    t = json.loads(Path(spec["timings"]).read_text())
    rest = t["in_stage"] - t["load"] - t["measure"]
    return {"label": label, "shard": shard, "wall": wall, "startup": wall - t["in_stage"], "load": t["load"],
            "measure": t["measure"], "rest": rest, "tokens": t["tokens"], "device_name": t["device_name"],
            "packing": t["packing"], "peak_gpu_memory_gib": t["peak_gpu_memory_gib"], "folder": str(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", default="Qwen3-8B", help="a random-init checkpoint of --config (its public shape)")
    ap.add_argument("--config", default=str(ROOT / "config" / "rehearsal.yaml"))
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (a smoke run on a tiny shape, e.g. --config config/test.yaml)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--min-tokens", type=int, default=1_000_000)
    ap.add_argument("--weights", choices=["disk", "random"], default="disk")
    ap.add_argument("--batch-size", type=int, help="measure batch size (default: the schema's)")
    ap.add_argument("--full-stats", choices=["paper", "all"], default="paper")
    ap.add_argument("--calibration", action="store_true", help="also record linear inputs and write every calibration file")
    ap.add_argument("--shared-caches", action="store_true", help="let the processes share the kernel caches (a warm node)")
    ap.add_argument("--work", default="/tmp/maxact-shards-bench")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))
    if a.shards < 2:
        ap.error("--shards must be at least 2")

    from transformers import AutoConfig

    from maxact.models.checkpoints import prepare_checkpoint
    from result_compare import compare_folders

    work = Path(a.work)
    shutil.rmtree(work / "caches", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    entry = config_entry(Path(a.config), a.checkpoint)
    cfg = AutoConfig.for_model(entry["model_type"], **entry.get("config_overrides", {}))
    text = getattr(cfg, "text_config", None) or cfg
    settings = {"device": a.device, "full_stats": a.full_stats, **({"batch_size": a.batch_size} if a.batch_size else {})}
    if a.calibration:
        settings.update(linear_inputs=True, exports=["smoothquant", "input_scales", "awq"])
    prepared = prepare_checkpoint(entry, work / "cache")
    setup = {}
    if a.weights == "disk":
        folder = work / f"{a.checkpoint}-weights"
        if not (folder / "model.safetensors.index.json").exists() and not (folder / "model.safetensors").exists():
            shutil.rmtree(folder, ignore_errors=True)
            spec = {"task": "save", "prepared": prepared, "settings": settings, "folder": str(folder)}
            setup["save_seconds"] = run_process([sys.executable, __file__, "--worker", json.dumps(spec)],
                                                fresh_env(work, "save", False), "save random weights")
        prepared = prepare_checkpoint({"name": a.checkpoint, "source": "local", "path": str(folder),
                                       "model_id": entry.get("model_id")}, work / "cache")
        setup["weights_gib"] = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
    tokens = work / "tokens.parquet"
    corpus = workload(text.vocab_size, a.min_tokens, min(5422, text.max_position_embeddings), tokens)
    print(f"{a.checkpoint}: {corpus['samples']} samples, {corpus['tokens']:,} tokens; weights {a.weights}", flush=True)

    fresh = not a.shared_caches
    whole = measure_process(work, prepared, tokens, settings, "unsharded", None, fresh)
    parts = [measure_process(work, prepared, tokens, settings, f"shard{k}", f"{k}/{a.shards}", fresh)
             for k in range(1, a.shards + 1)]
    merge_cmd = [sys.executable, "-m", "maxact.cli", "merge", "--out", str(work / "merged"), "--overwrite",
                 *[p["folder"] for p in parts]] + (["--export", ",".join(settings["exports"])] if a.calibration else [])
    shutil.rmtree(work / "merged", ignore_errors=True)
    merge_wall = run_process(merge_cmd, fresh_env(work, "merge", fresh), "merge")
    equality = compare_folders(Path(whole["folder"]), work / "merged")

    keys = ("wall", "startup", "load", "measure", "rest")
    total = {k: sum(p[k] for p in parts) for k in keys}
    extra = {k: total[k] - whole[k] for k in keys}
    overhead = extra["wall"] + merge_wall
    per_token = whole["measure"] / whole["tokens"]
    fraction = overhead / whole["measure"]
    res = {
        "checkpoint": a.checkpoint, "model_type": entry["model_type"], "shards": a.shards, "weights": a.weights,
        "settings": settings, "fresh_kernel_caches": fresh, "corpus": corpus, "setup": setup,
        "device_name": whole["device_name"], "packing": whole["packing"], "processes": [whole, *parts],
        "merge_wall": merge_wall,
        "overhead": {"seconds": overhead, "fraction_of_measurement": fraction, "extra_startup": extra["startup"],
                     "extra_load": extra["load"], "extra_warmup": extra["measure"], "extra_rest": extra["rest"],
                     "merge": merge_wall, "per_extra_shard_seconds": overhead / (a.shards - 1)},
        "projection": {"measure_seconds_per_mtoken": per_token * 1e6,
                       "fraction_at_paper_tokens": overhead / (per_token * PAPER_TOKENS),
                       "tokens_for_goal": overhead / (GOAL * per_token)},
        "equality": {k: v[:20] if isinstance(v, list) else v for k, v in equality.items()},
        "library": {"torch": __import__("torch").__version__, "transformers": __import__("transformers").__version__},
    }
    print("\n| process | wall s | start-up s | load s | measure s | rest s | tokens |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in [whole, *parts]:
        print(f"| {p['label']} | {p['wall']:.1f} | {p['startup']:.1f} | {p['load']:.1f} | {p['measure']:.1f} | "
              f"{p['rest']:.1f} | {p['tokens']:,} |")
    print(f"| merge | {merge_wall:.1f} | | | | | |")
    o = res["overhead"]
    print(f"\noverhead of {a.shards} shards: {o['seconds']:.1f} s = {100 * fraction:.1f}% of the unsharded measurement "
          f"({whole['measure']:.1f} s, {corpus['tokens']:,} tokens; goal <= {100 * GOAL:.0f}%): extra start-ups "
          f"{o['extra_startup']:.1f} s, loads {o['extra_load']:.1f} s, warm-up {o['extra_warmup']:.1f} s, rest "
          f"{o['extra_rest']:.1f} s, merge {merge_wall:.1f} s")
    pr = res["projection"]
    print(f"at the paper's {PAPER_TOKENS / 1e6:.0f}M tokens: {100 * pr['fraction_at_paper_tokens']:.2f}%; "
          f"{GOAL:.0%} from {pr['tokens_for_goal'] / 1e6:.2f}M tokens")
    print(f"merged vs unsharded: equal {equality['equal']}, bit-identical {equality['bit_identical']} (float sums: "
          f"{equality['float_sums_compared']} compared, max rel diff {equality['float_sum_max_rel']:.3g})")
    for d in (equality["stats"] + equality["per_sample"] + equality["tensors"])[:10]:
        print("  ", d)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    if not equality["equal"]:
        raise SystemExit("the merged result differs from the unsharded one")


if __name__ == "__main__":
    main()

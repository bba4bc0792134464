"""Bare backbone forwards against the measurement, per paper family at full shape, in one process.

Each family's representative checkpoint is read from ``config/rehearsal.yaml`` (its public shape,
random init) and loaded the way the ``measure`` rule loads it (``prepare_checkpoint`` +
``load_model``: the family's own attention implementation, the model built and seeded on the GPU).
Corpus-like lengths (as ``throughput.py``), at least ``--min-tokens`` tokens a pass, then interleaved
rounds of the three paths of ``throughput.py`` (padded bare forward, packed bare forward, packed
measurement with every hook point and statistic on), each family packed the way ``packing: auto``
packs it (families the registry keeps padded run padded in the packed slots). Prints tokens/s of each,
the ratios and the memory ratio per family, and a table at the end.

    python benchmarks/families.py                      # every family (about 10 minutes on one H200)
    python benchmarks/families.py --checkpoints Qwen3-8B gemma-2-9b --repeats 3
    python benchmarks/families.py --compiled --layers 4  # also the compiled paths (measure.compile), 4 layers each

``--compiled`` adds the compiled bare forward and the compiled measurement (goal: at least 1.2x the family's eager
packed measurement). ``--layers N`` keeps each checkpoint's first N decoder layers (its shape otherwise; hybrid
layer patterns cut with them): the per-layer cost ratios at a fraction of the time.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import corpus_like_lengths, interleaved_paths, packed_batches, warm_up, warm_up_packed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# One full-shape checkpoint per paper family (the smallest that represents it at a realistic size).
REPRESENTATIVES = ("Qwen2.5-7B", "Qwen2.5-VL-7B", "Qwen3-8B", "Qwen3-30B-A3B", "Qwen3.5-9B", "Qwen3.5-35B-A3B",
                   "gemma-2b", "gemma-2-9b", "gemma-3-4b-it", "gpt-oss-20b", "Ling-mini-20T")


def family_workload(vocab: int, min_tokens: int, max_len: int, batch_size: int, max_batch_tokens: int, seed: int = 0):
    """Random token sequences with corpus-like lengths adding up to at least ``min_tokens``."""
    from maxact.measurement.batching import collate, make_batches

    hi = min(5422, max_len)
    lo = min(136, hi // 4)
    mean = min(3400, lo + 0.6 * (hi - lo))
    lengths = corpus_like_lengths(max(1, int(min_tokens / mean * 1.5) + 8), lo=lo, hi=hi, mean=mean, seed=seed)
    keep = int(np.searchsorted(np.cumsum(lengths), min_tokens)) + 1
    lengths = lengths[:keep]
    g = torch.Generator().manual_seed(seed + 1)
    samples = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]
    batches = make_batches(lengths, batch_size, max_batch_tokens)
    return lengths, samples, batches, [collate(samples, b, 0) for b in batches]


def bench_one(entry: dict, cache: Path, dev: torch.device, a, full_kinds) -> dict:
    from maxact.measurement.kernels import describe as statistics_kernel
    from maxact.measurement.packing import resolve_packing
    from maxact.measurement.settings import MeasureSettings, resolve_dtype
    from maxact.models.checkpoints import prepare_checkpoint
    from maxact.models.kernels_used import kernels_used
    from maxact.models.registry import resolve_backbone
    from maxact.stages.loading import load_for_measurement

    t0 = time.perf_counter()
    if a.layers:
        entry = {**entry, "config_overrides": fewer_layers(entry.get("config_overrides") or {}, a.layers)}
    man = prepare_checkpoint(entry, cache)
    dtype = resolve_dtype("auto", dev)  # bf16 on the GPU, as the measure rule
    model, fam = load_for_measurement(man, dtype, MeasureSettings.of({"attn_implementation": a.attn_implementation}), dev)
    build_s = time.perf_counter() - t0
    bb = resolve_backbone(model, fam)
    text = getattr(model.config, "text_config", None) or model.config
    lengths, samples, batches, collated = family_workload(text.vocab_size, a.min_tokens, a.max_len, a.batch_size,
                                                          a.max_batch_tokens)
    method, why = resolve_packing(fam, a.packing, dev.type, dtype, model, a.attn_implementation)
    packed, rows = packed_batches(samples, lengths, a.batch_size, a.max_batch_tokens)
    warmup_s = warm_up(model, bb, samples, batches, collated, dev, full_kinds)
    warmup_s += warm_up_packed(model, bb, fam, method, samples, packed, rows, dev, full_kinds)
    res = {"checkpoint": entry["name"], "model_type": entry["model_type"], "family": fam.name,
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "kernels": kernels_used(model),
           "packing": {"method": method, "why_padded": why or None, "kernel": fam.packing.kernel if method == "varlen" else None},
           "statistics_kernel": statistics_kernel(dev, dtype),
           "samples": len(samples), "mean_len": float(np.mean(lengths)), "build_s": build_s, "warmup_s": warmup_s}
    res["layers"] = getattr(text, "num_hidden_layers", None)
    res.update(interleaved_paths(model, bb, fam, method, samples, batches, collated, packed, rows, dev, full_kinds,
                                 a.repeats, label=f"{entry['name']} ", compiled=a.compiled))
    if a.compiled:
        from maxact.measurement.compiled import resolve_compile

        res["compile_registry"] = dict(zip(("compiled", "why_not"), resolve_compile(fam, "auto", dev.type)))
    del model, bb
    _free()
    return res


def fewer_layers(overrides: dict, n: int) -> dict:
    """Config overrides keeping the first ``n`` decoder layers (``text_config`` too; per-layer lists cut)."""
    out = {}
    for k, v in overrides.items():
        if isinstance(v, dict):
            out[k] = fewer_layers(v, n)
        elif k == "num_hidden_layers":
            out[k] = min(int(v), n)
        elif k in ("layer_types", "mlp_only_layers") and isinstance(v, list):
            out[k] = v[:n] if k == "layer_types" else [i for i in v if i < n]
        else:
            out[k] = v
    return out


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config" / "rehearsal.yaml"))
    ap.add_argument("--checkpoints", nargs="+", default=list(REPRESENTATIVES))
    ap.add_argument("--min-tokens", type=int, default=100_000, help="tokens per pass (each bare and each measured run)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved (bare, measured) pairs per family")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--max-len", type=int, default=5422)
    ap.add_argument("--attn-implementation", default="auto")
    ap.add_argument("--packing", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--full-stats", default="all", choices=["paper", "all"])
    ap.add_argument("--compiled", action="store_true", help="also the compiled bare forward and compiled measurement")
    ap.add_argument("--layers", type=int, help="keep each checkpoint's first N decoder layers")
    ap.add_argument("--out", help="write every figure as JSON here (rewritten after each family)")
    ap.add_argument("--device", default="cuda:0", help="cuda:N (cpu only for a smoke run on a tiny config)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/families.py measures full-shape models: it needs a CUDA GPU (or --device cpu on a tiny config)")
    from maxact.measurement.settings import full_kinds

    entries = {c["name"]: c for c in yaml.safe_load(Path(a.config).read_text())["checkpoints"]}
    missing = [n for n in a.checkpoints if n not in entries]
    if missing:
        raise SystemExit(f"not in {a.config}: {', '.join(missing)} (known: {', '.join(entries)})")
    results = []
    with tempfile.TemporaryDirectory(prefix="maxact-families-") as cache:
        for name in a.checkpoints:
            try:
                results.append(bench_one(entries[name], Path(cache), dev, a, full_kinds(a.full_stats)))
            except Exception as e:  # one family failing keeps its row, with the reason
                results.append({"checkpoint": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
                _free()
            print(json.dumps(results[-1], default=str), flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    print("\n| checkpoint | family | forward | padded bare tok/s | packed bare tok/s | packed measured tok/s | "
          "measured / padded bare | measured / packed bare | memory measured / packed bare |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['checkpoint']} | | | | | | failed: {r['error']} | | |")
            continue
        p, q = r["paths"], r["ratios"]
        fwd = f"packed, {r['packing'].get('kernel') or 'varlen_attn'}" if r["method"] == "varlen" else f"padded, {r['kernels']['attention']}"
        print(f"| {r['checkpoint']} | {r['family']} | {fwd} | {p['padded_bare']['tok_s']:,.0f} | {p['packed_bare']['tok_s']:,.0f} | "
              f"{p['packed_measured']['tok_s']:,.0f} | {q['packed_measured_vs_padded_bare']:.3f} | "
              f"{q['packed_measured_vs_packed_bare']:.3f} | {_f(q['memory_packed_measured_vs_packed_bare'])} |")
    if a.compiled:
        print("\n| checkpoint | layers | compiled bare tok/s | compiled measured tok/s | compiled measured / eager packed measured | "
              "compiled measured / padded bare | compiled measured / compiled bare | memory compiled measured / packed bare | "
              "compile + warm-up s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            if "error" in r or "compiled_measured" not in r.get("paths", {}):
                continue
            p, q = r["paths"], r["ratios"]
            print(f"| {r['checkpoint']} | {r['layers']} | {p['compiled_bare']['tok_s']:,.0f} | {p['compiled_measured']['tok_s']:,.0f} | "
                  f"{q['compiled_measured_vs_packed_measured']:.3f} | {q['compiled_measured_vs_padded_bare']:.3f} | "
                  f"{q['compiled_measured_vs_compiled_bare']:.3f} | {_f(q['memory_compiled_measured_vs_packed_bare'])} | "
                  f"{r['compile_warmup_s']:.0f} |")


if __name__ == "__main__":
    main()

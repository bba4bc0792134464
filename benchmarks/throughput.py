"""Throughput and memory of the measurement against bare backbone forwards, in one process.

Builds a random-init model of a given shape directly on the GPU from its config (default: the
Qwen3-8B shape, bf16, SDPA), makes variable-length samples like the paper's corpus (136 to 5,422
tokens, mean about 3,400) and runs, interleaved ``--repeats`` times over the same samples:

- the padded bare forward (length-sorted padded batches, SDPA with the mask): the baseline;
- the packed bare forward (each batch's samples end to end in one row, torch's varlen_attn);
- the packed measurement (every hook point; ``--full-stats all`` for every statistic);
- with ``--padded-measured``, also today's padded measurement; with ``--calibration``, the packed measurement
  also recording every linear layer's inputs (the calibration files' data; goal: at most 5% slower);
- with ``--compiled``, the packed bare forward with each decoder layer's forward compiled (``torch.compile``,
  dynamic shapes, as ``measure.compile`` compiles it) and the compiled packed measurement (with ``--calibration``
  also its calibration variant). The compile and warm-up seconds are reported apart (``compile_warmup_s``).

Prints tokens/s and peak GPU memory of each and the ratios the packing issue sets goals for:
packed measured / padded bare (goal >= 1.30), packed measured / packed bare (>= 0.88) and the memory of
the packed measurement / the packed bare forward (<= 1.10); and the compilation issue's: compiled measured /
padded bare (>= 1.75), compiled measured / compiled bare (>= 0.95), memory compiled measured / packed bare (<= 1.10).

    python benchmarks/throughput.py --preset qwen3-8b --samples 48 --full-stats all --compiled --calibration
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

PRESETS = {
    # Shapes from the public config.json files (no download needed: random init).
    "qwen3-8b": ("qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                               rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "qwen3-1.7b": ("qwen3", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                                 num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960)),
    "qwen3-30b-a3b": ("qwen3_moe", dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                                        num_experts_per_tok=8, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                                        head_dim=128, vocab_size=151936, max_position_embeddings=40960)),
    "gemma-2b": ("gemma", dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                               num_key_value_heads=1, head_dim=256, vocab_size=256000, max_position_embeddings=8192)),
    "gemma-2-9b": ("gemma2", dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                                 num_key_value_heads=8, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
                                 query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                 sliding_window=4096, hidden_activation="gelu_pytorch_tanh")),
    "gemma3-270m": ("gemma3_text", dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                                        num_key_value_heads=1, head_dim=256, vocab_size=262144)),
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=1000)),
}


def corpus_like_lengths(n: int, lo: int = 136, hi: int = 5422, mean: float = 3400, seed: int = 0) -> list[int]:
    """Lengths on [lo, hi] from a Beta distribution with the paper corpus's mean."""
    m = (mean - lo) / (hi - lo)
    a = 2.0
    b = a * (1 - m) / m
    rng = np.random.default_rng(seed)
    return [int(lo + (hi - lo) * v) for v in rng.beta(a, b, size=n)]


def build(preset: str, dtype, device, layers: int | None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from maxact.models.registry import family_for, resolve_attention

    mt, kw = PRESETS[preset]
    kw = dict(kw)
    if layers:
        kw["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(mt, **kw)
    attn = resolve_attention(family_for(cfg), "auto", torch.device(device).type)  # Gemma 2: eager (no SDPA)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    return model.eval()


def workload(vocab: int, n_samples: int, max_len: int, batch_size: int, max_batch_tokens: int):
    """Random token sequences with corpus-like lengths, their padded batches (as the engine makes them) and the
    collated batches: (lengths, samples, batches, collated)."""
    from maxact.measurement.batching import collate, make_batches

    hi = min(5422, max_len)
    lo = min(136, hi // 4)
    lengths = corpus_like_lengths(n_samples, lo=lo, hi=hi, mean=min(3400, lo + 0.6 * (hi - lo)))
    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]
    batches = make_batches(lengths, batch_size, max_batch_tokens)
    return lengths, samples, batches, [collate(samples, b, 0) for b in batches]


def bare_forward(backbone, batches, dev) -> None:
    """The backbone alone over collated batches: the baseline every ratio is taken against."""
    with torch.no_grad():
        for c in batches:
            backbone(input_ids=c.input_ids.to(dev), attention_mask=c.attention_mask.to(dev), use_cache=False)


def packed_batches(samples, lengths, batch_size: int, max_batch_tokens: int):
    """The same samples in packed batches (as the engine makes them): (batches, collated packed rows)."""
    from maxact.measurement.batching import collate_packed, make_batches

    batches = make_batches(lengths, batch_size, max_batch_tokens, packed=True)
    return batches, [collate_packed(samples, b) for b in batches]


def bare_packed_forward(backbone, family, method, rows, dev) -> None:
    """The backbone alone over packed rows, called exactly as the measurement calls it (no hooks)."""
    from maxact.measurement import packing

    if method == "padded":
        raise ValueError("bare_packed_forward needs a packing method (varlen or block_mask)")
    with torch.no_grad(), packing.packed_forward(backbone, family, method):
        for r in rows:
            backbone(**packing.forward_kwargs(backbone, family, method, r, dev))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev):
    """Seconds, peak GPU bytes and the result of ``fn()``, the device synchronised around it."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    return dt, peak, out


def warm_up(model, backbone, samples, batches, collated, dev, full_kinds) -> float:
    """Seconds of warm-up (reported, not timed): every batch shape once bare (cuBLAS/SDPA/flex pick or
    compile kernels per shape) and the measurement's kernels (NVRTC/Triton) on the first and last batch."""
    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement

    t0 = time.perf_counter()
    bare_forward(backbone, collated, dev)
    warm = Measurement(model, len(samples), dev, full_kinds=full_kinds)
    run_batches(warm, samples, [batches[0], batches[-1]], 0)
    sync(dev)
    warm.remove()
    return time.perf_counter() - t0


def compiled_bare_packed_forward(backbone, layers, family, method, rows, dev) -> None:
    """:func:`bare_packed_forward` with each decoder layer's forward compiled as ``measure.compile`` compiles it."""
    from maxact.measurement.compiled import RegionalCompile

    with RegionalCompile(layers, True):
        bare_packed_forward(backbone, family, method, rows, dev)


def interleaved_paths(model, backbone, family, method, samples, padded, collated, packed, rows, dev, full_kinds,
                      repeats: int, padded_measured: bool = False, label: str = "", calibration: bool = False,
                      compiled: bool = False, profile: bool = False) -> dict:
    """``repeats`` rounds of (padded bare, packed bare, packed measured[, padded measured]) over the same samples:
    each path's tokens/s and peak memory per round, and the medians and ratios over the rounds. ``method``
    'padded' (a family that does not pack) runs the padded batches in the 'packed' slots."""
    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.summary import assemble_result

    n_tok = sum(len(s) for s in samples)

    def measured(m, batches, linear_inputs=False, compile=False):
        meas = Measurement(model, len(samples), dev, full_kinds=full_kinds, packing=m, linear_inputs=linear_inputs,
                           compile=compile)
        run_batches(meas, samples, batches, 0)
        out = assemble_result(meas, [str(i) for i in range(len(samples))], None)  # one host transfer at the end
        if compile:  # graphs traced and recompiles during this run (after the warm-up: none expected)
            rep = meas.compile_report()
            out["compile"] = {k: rep.get(k) for k in ("unique_graphs", "recompiles", "graph_breaks")}
        meas.remove()
        return out

    def make_paths(padded, collated, packed, rows) -> dict:
        """Every timed path over these batches (all of them; or the first of each kind, for --profile)."""
        paths = {"padded_bare": lambda: bare_forward(backbone, collated, dev)}
        if method == "padded":
            paths["packed_bare"] = paths["padded_bare"]
            paths["packed_measured"] = lambda: measured("padded", padded)
        else:
            paths["packed_bare"] = lambda: bare_packed_forward(backbone, family, method, rows, dev)
            paths["packed_measured"] = lambda: measured(method, packed)
        if padded_measured:
            paths["padded_measured"] = lambda: measured("padded", padded)
        if calibration:  # the same packed measurement also recording every linear layer's inputs (measure.exports)
            paths["packed_measured_calibration"] = lambda: measured(method, packed if method != "padded" else padded, True)
        if compiled:
            m_c, b_c = (method, packed) if method != "padded" else ("padded", padded)
            bare_c = (lambda: compiled_bare_packed_forward(backbone, layers, family, method, rows, dev)) if method != "padded" else None
            paths["compiled_bare"] = bare_c or (lambda: _compiled_padded_bare(backbone, layers, collated, dev))
            paths["compiled_measured"] = lambda: measured(m_c, b_c, compile=True)
            if calibration:
                paths["compiled_measured_calibration"] = lambda: measured(m_c, b_c, True, compile=True)
        return paths

    if compiled:
        from maxact.models.registry import layer_points

        layers = [lp.layer for lp in layer_points(backbone, family)]
    paths = make_paths(padded, collated, packed, rows)
    compile_warmup_s = None
    if compiled:
        # Compile and warm up once (every packed row's shape, dynamic): reported, not timed.
        t0 = time.perf_counter()
        for name in [k for k in paths if k.startswith("compiled")]:
            paths[name]()
        sync(dev)
        compile_warmup_s = time.perf_counter() - t0
        print(f"{label}compile and warm-up of the compiled paths: {compile_warmup_s:.1f} s", flush=True)
    rounds = []
    for r in range(repeats):
        rnd = {}
        for name, fn in paths.items():
            t, peak, out = timed(fn, dev)
            rnd[name] = {"tok_s": n_tok / t, "peak_gib": peak / 2**30}
            if isinstance(out, dict):
                rnd[name].update(global_max=out["global_max_activation"], location=out["global_max_location"],
                                 points=len(out["per_layer_stats"]))
                if "compile" in out:
                    rnd[name]["compile"] = out["compile"]
        rounds.append(rnd)
        # Every measured path must have measured the same thing: a compiled path that lost statistics (a layer
        # graph reused without the hooks) would be fast and wrong.
        counts = {k: v["points"] for k, v in rnd.items() if "points" in v}
        if len(set(counts.values())) > 1:
            raise RuntimeError(f"{label}the measured paths recorded different numbers of points: {counts}")
        print(f"{label}[round {r}] " + " | ".join(f"{k} {v['tok_s']:,.0f} tok/s {v['peak_gib']:.2f} GiB" for k, v in rnd.items()),
              flush=True)

    def med(path, key):
        vals = sorted(rd[path][key] for rd in rounds)
        return vals[len(vals) // 2]

    summary = {p: {"tok_s": med(p, "tok_s"), "peak_gib": max(rd[p]["peak_gib"] for rd in rounds)} for p in paths}
    base, pb, pm = summary["padded_bare"], summary["packed_bare"], summary["packed_measured"]
    ratios = {
        "packed_measured_vs_padded_bare": pm["tok_s"] / base["tok_s"],
        "packed_measured_vs_packed_bare": pm["tok_s"] / pb["tok_s"],
        "packed_bare_vs_padded_bare": pb["tok_s"] / base["tok_s"],
        "memory_packed_measured_vs_packed_bare": pm["peak_gib"] / pb["peak_gib"] if pb["peak_gib"] else None,
    }
    if "padded_measured" in summary:
        ratios["padded_measured_vs_padded_bare"] = summary["padded_measured"]["tok_s"] / base["tok_s"]
    if "packed_measured_calibration" in summary:  # goal: at most 5% slower than without (overhead <= 0.05)
        ratios["calibration_overhead"] = pm["tok_s"] / summary["packed_measured_calibration"]["tok_s"] - 1.0
    if "compiled_measured" in summary:
        cb, cm = summary["compiled_bare"], summary["compiled_measured"]
        ratios.update(compiled_measured_vs_padded_bare=cm["tok_s"] / base["tok_s"],
                      compiled_measured_vs_compiled_bare=cm["tok_s"] / cb["tok_s"],
                      compiled_measured_vs_packed_measured=cm["tok_s"] / pm["tok_s"],
                      compiled_bare_vs_packed_bare=cb["tok_s"] / pb["tok_s"],
                      memory_compiled_measured_vs_packed_bare=cm["peak_gib"] / pb["peak_gib"] if pb["peak_gib"] else None)
        if "compiled_measured_calibration" in summary:
            ratios["compiled_calibration_overhead"] = cm["tok_s"] / summary["compiled_measured_calibration"]["tok_s"] - 1.0
    print(f"{label}medians: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items() if v is not None), flush=True)
    res = {"method": method, "rounds": rounds, "paths": summary, "ratios": ratios, "tokens": n_tok,
           "padded_batches": len(padded), "packed_batches": len(packed), "compile_warmup_s": compile_warmup_s}
    if profile and dev.type == "cuda":  # one batch of each kind per path: a pass over all of them took minutes
        res["gpu_ms"] = gpu_time_by_category(make_paths(padded[:1], collated[:1], packed[:1], rows[:1]), dev, label)
    return res


def gpu_time_by_category(paths: dict, dev, label: str = "") -> dict:
    """Each path once more under torch.profiler (``paths``: over the first batch): its GPU time (ms) per kernel
    category and its wall time, so that a gap between two paths can be split into what the GPU did more and what it
    waited for."""
    from overhead import profile_batch

    out = {}
    for name, fn in paths.items():
        timing: dict = {}
        cats = profile_batch(fn, timing)
        out[name] = {"wall_ms": timing["wall_ms"], "gpu_ms": sum(v[0] for v in cats.values()),
                     "categories": {k: {"ms": v[0], "kernels": v[1]} for k, v in sorted(cats.items())}}
    cats = sorted({c for v in out.values() for c in v["categories"]})
    print(f"\n{label}GPU ms per kernel category, each path's first batch under the profiler:")
    print("| category | " + " | ".join(out) + " |")
    print("| --- |" + " ---: |" * len(out))
    for c in cats:
        print(f"| {c} | " + " | ".join(f"{v['categories'].get(c, {}).get('ms', 0.0):,.1f}" for v in out.values()) + " |")
    print("| GPU total | " + " | ".join(f"{v['gpu_ms']:,.1f}" for v in out.values()) + " |")
    print("| wall (profiled) | " + " | ".join(f"{v['wall_ms']:,.1f}" for v in out.values()) + " |", flush=True)
    return out


def _compiled_padded_bare(backbone, layers, collated, dev) -> None:
    from maxact.measurement.compiled import RegionalCompile

    with RegionalCompile(layers, True):
        bare_forward(backbone, collated, dev)


def warm_up_packed(model, backbone, family, method, samples, packed, rows, dev, full_kinds) -> float:
    """Seconds of warm-up of the packed paths: every packed row once bare, the measurement on the first and last."""
    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement

    if method == "padded":
        return 0.0
    t0 = time.perf_counter()
    bare_packed_forward(backbone, family, method, rows, dev)
    warm = Measurement(model, len(samples), dev, full_kinds=full_kinds, packing=method)
    run_batches(warm, samples, [packed[0], packed[-1]], 0)
    sync(dev)
    warm.remove()
    return time.perf_counter() - t0


def count_host_syncs(fn, dev) -> list[str]:
    """Host synchronisations (.item(), D2H copies, nonzero, ...) while ``fn`` runs (torch's sync debug mode
    reports each one as a warning): the measurement must add none to the bare forward's."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            sync(dev)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-8b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, help="override the number of layers (quick runs)")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-len", type=int, default=5422)
    ap.add_argument("--packing", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every path; the summary is the median")
    ap.add_argument("--full-stats", default="all", choices=["paper", "all"],
                    help="points with quantiles + Sun criterion: the published files' set, or every point")
    ap.add_argument("--padded-measured", action="store_true", help="also time today's padded measurement")
    ap.add_argument("--calibration", action="store_true",
                    help="also time the packed measurement recording every linear layer's inputs (calibration files)")
    ap.add_argument("--compiled", action="store_true",
                    help="also time the compiled bare forward and the compiled measurement (measure.compile: on)")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one packed measured batch (torch.profiler) and print the top GPU kernels, and each "
                         "path's GPU time per kernel category")
    a = ap.parse_args(argv)

    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.kernels import describe as statistics_kernel
    from maxact.measurement.packing import resolve_packing
    from maxact.measurement.settings import full_kinds, resolve_dtype
    from maxact.models import packed_attention
    from maxact.models.registry import family_for

    fk = full_kinds(a.full_stats)
    dev = torch.device(a.device)
    dtype = resolve_dtype(a.dtype, dev)
    model = build(a.preset, dtype, dev, a.layers)
    family = family_for(model.config)
    method, why = resolve_packing(family, a.packing, dev.type, dtype, model)
    lengths, samples, batches, collated = workload(model.config.vocab_size, a.samples, a.max_len, a.batch_size,
                                                   a.max_batch_tokens)
    packed, rows = packed_batches(samples, lengths, a.batch_size, a.max_batch_tokens)
    bb = model.model
    n_tok = sum(lengths)

    warmup_s = warm_up(model, bb, samples, batches, collated, dev, fk)
    warmup_s += warm_up_packed(model, bb, family, method, samples, packed, rows, dev, fk)

    host_syncs = {}
    if dev.type == "cuda" and method != "padded":
        bare_syncs = count_host_syncs(lambda: bare_packed_forward(bb, family, method, rows[:1], dev), dev)
        m1 = Measurement(model, len(samples), dev, full_kinds=fk, packing=method)
        meas_syncs = count_host_syncs(lambda: run_batches(m1, samples, [packed[0]], 0), dev)
        m1.remove()
        host_syncs = {"packed_bare": len(bare_syncs), "packed_measured": len(meas_syncs),
                      "measured_examples": sorted(set(meas_syncs))[:5]}
        if a.calibration:
            m2 = Measurement(model, len(samples), dev, full_kinds=fk, packing=method, linear_inputs=True)
            run_batches(m2, samples, [packed[0]], 0)  # warm: the calibration path's first batch
            cal_syncs = count_host_syncs(lambda: run_batches(m2, samples, [packed[0]], 0), dev)
            m2.remove()
            host_syncs.update(packed_measured_calibration=len(cal_syncs), calibration_examples=sorted(set(cal_syncs))[:5])
        print(f"host syncs on one packed row: {host_syncs}", flush=True)

    res = {"preset": a.preset, "full_stats": a.full_stats, "kernel_backend": statistics_kernel(dev, dtype),
           "packing": {"setting": a.packing, "method": method, "why_padded": why or None,
                       "attention": packed_attention.describe(family.packing.kernel) if method == "varlen" else None},
           "layers": model.config.num_hidden_layers, "dtype": str(dtype), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "samples": len(samples), "tokens": n_tok, "batch_size": a.batch_size, "max_batch_tokens": a.max_batch_tokens,
           "mean_len": float(np.mean(lengths)), "min_len": min(lengths), "max_len": max(lengths), "warmup_s": warmup_s,
           "host_syncs": host_syncs}
    res.update(interleaved_paths(model, bb, family, method, samples, batches, collated, packed, rows, dev, fk, a.repeats,
                                 padded_measured=a.padded_measured, calibration=a.calibration, compiled=a.compiled,
                                 profile=a.profile))
    if a.compiled and dev.type == "cuda" and method != "padded":
        # The compiled measurement after its warm-up (the layers are compiled with the hooks by now): host syncs on one
        # packed row, as for the eager paths above (a sync per layer would leave the GPU idle while the next launches).
        m3 = Measurement(model, len(samples), dev, full_kinds=fk, packing=method, compile=True)
        run_batches(m3, samples, [packed[0]], 0)
        c_syncs = count_host_syncs(lambda: run_batches(m3, samples, [packed[0]], 0), dev)
        m3.remove()
        res["host_syncs"].update(compiled_measured=len(c_syncs), compiled_examples=sorted(set(c_syncs))[:5])
        print(f"host syncs of the compiled measurement on one packed row: {len(c_syncs)} {sorted(set(c_syncs))[:5]}",
              flush=True)
    if a.profile and dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        meas = Measurement(model, len(samples), dev, full_kinds=fk, packing=method)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_batches(meas, samples, [packed[0] if method != "padded" else batches[0]], 0)
            sync(dev)
        meas.remove()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=60), flush=True)
    print("\n| path | tok/s | vs padded bare forward | peak GiB |")
    print("| --- | --- | --- | --- |")
    base = res["paths"]["padded_bare"]["tok_s"]
    for name, v in res["paths"].items():
        print(f"| {name.replace('_', ' ')} | {v['tok_s']:,.0f} | {v['tok_s'] / base:.3f} | {v['peak_gib']:.2f} |")
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

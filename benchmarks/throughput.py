"""Throughput and memory of the full measurement against a bare backbone forward, in one process.

Builds a random-init model of a given shape directly on the GPU from its config (default: the
Qwen3-8B shape, bf16, SDPA), makes variable-length batches like the paper's corpus (136 to 5,422
tokens, mean about 3,400) and runs (a) the bare backbone forward and (b) the measurement with every
hook point and statistic on. Prints tokens/s of each, the ratio (b)/(a) and the peak GPU memory.

    python benchmarks/throughput.py --preset qwen3-8b --samples 96 --max-batch-tokens 65536
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

    mt, kw = PRESETS[preset]
    kw = dict(kw)
    if layers:
        kw["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(mt, **kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def workload(vocab: int, n_samples: int, max_len: int, batch_size: int, max_batch_tokens: int):
    """Random token sequences with corpus-like lengths, their batches (as the engine makes them) and the
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


def interleaved_pairs(model, backbone, samples, batches, collated, dev, full_kinds, repeats: int, label: str = "") -> dict:
    """``repeats`` (bare forward, full measurement) pairs over the same batches: each pair's tokens/s,
    ratio and peak memory, and the median/min/max ratio over the pairs."""
    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.summary import assemble_result

    n_tok = sum(len(samples[i]) for b in batches for i in b)

    def measured():
        meas = Measurement(model, len(samples), dev, full_kinds=full_kinds)
        run_batches(meas, samples, batches, 0)
        out = assemble_result(meas, [str(i) for i in range(len(samples))], None)  # one host transfer at the end
        meas.remove()
        return out

    runs = []
    for r in range(repeats):
        t_bare, m_bare, _ = timed(lambda: bare_forward(backbone, collated, dev), dev)
        t_meas, m_meas, result = timed(measured, dev)
        run = {"bare_tok_s": n_tok / t_bare, "measured_tok_s": n_tok / t_meas, "ratio": t_bare / t_meas,
               "bare_peak_gib": m_bare / 2**30, "measured_peak_gib": m_meas / 2**30,
               "memory_ratio": (m_meas / m_bare) if m_bare else None, "points": len(result["per_layer_stats"]),
               "global_max": result["global_max_activation"], "location": result["global_max_location"]}
        runs.append(run)
        print(f"{label}[run {r}] bare {run['bare_tok_s']:,.0f} tok/s | measured {run['measured_tok_s']:,.0f} tok/s | "
              f"ratio (measured/bare) {run['ratio']:.3f} | peak GiB bare {run['bare_peak_gib']:.2f} measured "
              f"{run['measured_peak_gib']:.2f} (x{run['memory_ratio'] or 0:.3f}) | {run['points']} points", flush=True)
    ratios = sorted(r["ratio"] for r in runs)
    return {"runs": runs, "median_ratio": ratios[len(ratios) // 2], "min_ratio": ratios[0], "max_ratio": ratios[-1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-8b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, help="override the number of layers (quick runs)")
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-len", type=int, default=5422)
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved (bare, measured) pairs; the summary is the median pair")
    ap.add_argument("--full-stats", default="paper", choices=["paper", "all"],
                    help="points with quantiles + Sun criterion: the published files' set, or every point")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one measured batch (torch.profiler) and print the top GPU kernels")
    a = ap.parse_args(argv)

    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.kernels import describe as statistics_kernel
    from maxact.measurement.settings import full_kinds, resolve_dtype

    fk = full_kinds(a.full_stats)

    dev = torch.device(a.device)
    dtype = resolve_dtype(a.dtype, dev)
    model = build(a.preset, dtype, dev, a.layers)
    lengths, samples, batches, collated = workload(model.config.vocab_size, a.samples, a.max_len, a.batch_size,
                                                   a.max_batch_tokens)
    bb = model.model
    n_tok = sum(lengths)

    warmup_s = warm_up(model, bb, samples, batches, collated, dev, fk)

    host_syncs = {}
    if dev.type == "cuda":
        # Host synchronisations (.item(), D2H copies, nonzero, ...) on one batch, bare and measured:
        # the measurement must add none (torch's sync debug mode reports each one as a warning).
        import warnings

        def count_syncs(fn):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fn()
                    sync(dev)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            return [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]

        one = collated[0]
        bare_syncs = count_syncs(lambda: bare_forward(bb, [one], dev))
        m1 = Measurement(model, len(samples), dev, full_kinds=fk)
        meas_syncs = count_syncs(lambda: run_batches(m1, samples, [batches[0]], 0))
        m1.remove()
        host_syncs = {"bare": len(bare_syncs), "measured": len(meas_syncs), "measured_examples": sorted(set(meas_syncs))[:5]}
        print(f"host syncs on one batch: bare forward {len(bare_syncs)}, measured {len(meas_syncs)} {host_syncs['measured_examples']}", flush=True)

    res = {"preset": a.preset, "full_stats": a.full_stats, "kernel_backend": statistics_kernel(dev, dtype), "layers": model.config.num_hidden_layers, "dtype": str(dtype), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "samples": len(samples), "tokens": n_tok, "batches": len(batches), "mean_len": float(np.mean(lengths)),
           "min_len": min(lengths), "max_len": max(lengths), "warmup_s": warmup_s, "host_syncs": host_syncs}
    res.update(interleaved_pairs(model, bb, samples, batches, collated, dev, fk, a.repeats))
    if a.profile and dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        meas = Measurement(model, len(samples), dev, full_kinds=fk)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_batches(meas, samples, [batches[0]], 0)
            sync(dev)
        meas.remove()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=60), flush=True)
    print(f"ratio (measured/bare) over {a.repeats} interleaved pairs: median {res['median_ratio']:.3f} "
          f"(min {res['min_ratio']:.3f}, max {res['max_ratio']:.3f}); kernel backend {res['kernel_backend']}", flush=True)
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

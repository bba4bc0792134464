"""Where the measurement's overhead over the bare forward goes: the same batches run with parts of
the per-point update switched off, interleaved with bare forwards, in one process.

    python benchmarks/overhead.py --preset qwen3-8b --samples 48 [--profile]

Variants (each a whole pass over the batches; the ratio is bare time / variant time):
  hooks      hooks registered, each returning at once (Python hook cost only)
  kernel     the fused row-statistics kernel only      kernel_x2   the kernel twice (its cost in place)
  no_topk    everything but the top-k merge          no_sun      everything but the Sun criterion
  no_sample  everything but the per-sample extremes
  immediate  every point folded at once instead of with the others at the end of the batch
  full       the real measurement
A diagnostic, not a result: the variants monkeypatch maxact.measurement.statistics / maxact.measurement.hooks in this process.
``--profile`` also prints the GPU time per kernel category for one bare and one measured batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PRESETS, bare_forward, build, sync, workload  # noqa: E402

VARIANTS = ("hooks", "kernel", "kernel_x2", "no_topk", "no_sun", "no_sample", "immediate", "full")


@contextlib.contextmanager
def variant(name: str):
    from maxact.measurement import hooks as E
    from maxact.measurement import kernels as K
    from maxact.measurement import statistics as S

    saved = []

    def patch(obj, attr, value):
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    if name == "hooks":
        patch(E.Measurement, "_record", lambda self, name, x, info=None: None)
    elif name in ("kernel", "kernel_x2"):
        def update(self, x, info, defer=None):
            x = x.reshape(-1, x.shape[-1])
            for _ in range(2 if name == "kernel_x2" else 1):
                K.row_stats(x, info.valid.reshape(-1), self.hist if self.full else None, want_median=self.full)
        patch(S.PointStats, "update", update)
    elif name == "no_topk":
        patch(S, "_fold_topk", lambda *a: None)
    elif name == "no_sun":
        patch(S, "_fold_sun", lambda *a: None)
    elif name == "no_sample":
        patch(S, "_fold_per_sample", lambda *a: None)
    elif name == "immediate":
        def record(self, name, x, info=None):
            info = self._info_for(x) if info is None else info
            self._stats(name, x.device).update(x, self._on(info, x.device))
        patch(E.Measurement, "_record", record)
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def categorize(name: str) -> str:
    n = name.lower()
    if "maxact_row_stats" in n or "_row_stats_kernel" in n:  # the CUDA kernel, the Triton one
        return "stats kernel"
    if "column_stats" in n:
        return "calibration kernel"
    if n.startswith("triton_") and "flex" not in n:  # inductor's generated kernels (compiled layers)
        return "inductor fused"
    if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "sm90_", "cublas")):
        return "matmul"
    if any(k in n for k in ("fmha", "flash", "attention", "attn", "softmax")):
        return "attention"
    if any(k in n for k in ("topk", "sort", "radix")):
        return "topk/sort"
    if any(k in n for k in ("reduce", "amax", "amin")):
        return "reductions"
    if any(k in n for k in ("index", "gather", "scatter")):
        return "indexing"
    if any(k in n for k in ("copy", "memcpy", "memset", "fill")):
        return "copy/fill"
    return "other elementwise"


def profile_batch(fn, timing: dict | None = None) -> dict:
    """GPU ms and kernel count per category while ``fn`` runs; ``timing["wall_ms"]``: its wall time under the profiler
    (from a synchronised start to the end of its GPU work, without the profiler's start and stop)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if timing is not None:
            timing["wall_ms"] = (time.perf_counter() - t) * 1e3
    cats: dict = {}
    for ev in prof.key_averages():
        t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if t <= 0:
            continue
        c = cats.setdefault(categorize(ev.key), [0.0, 0])
        c[0] += t / 1e3
        c[1] += ev.count
    return cats


def timeline(fn, label: str, out_dir: str | None) -> dict:
    """GPU busy time vs span of one batch from a profiler trace, and the largest idle gaps between kernels."""
    import gzip
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        raw = path.read_bytes()
    if out_dir:
        (Path(out_dir) / f"trace_{label}.json.gz").write_bytes(gzip.compress(raw))
    evs = [e for e in json.loads(raw)["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    evs.sort(key=lambda e: e["ts"])
    busy, gaps, end, prev = 0.0, [], None, None
    for e in evs:
        if end is not None and e["ts"] > end:
            gaps.append((e["ts"] - end, prev["name"][:60], e["name"][:60]))
        busy += e["dur"]
        if end is None or e["ts"] + e["dur"] > end:
            end, prev = e["ts"] + e["dur"], e
    span = end - evs[0]["ts"]
    gaps.sort(reverse=True)
    big = [g for g in gaps if g[0] > 20]
    print(f"\ntimeline {label}: span {span / 1e3:.1f} ms, kernels {len(evs)}, busy {busy / 1e3:.1f} ms, idle {sum(g[0] for g in gaps) / 1e3:.1f} ms "
          f"(gaps > 20 us: {len(big)}, {sum(g[0] for g in big) / 1e3:.1f} ms)")
    for g in gaps[:8]:
        print(f"  gap {g[0] / 1e3:7.2f} ms after {g[1]!r} before {g[2]!r}")
    return {"span_ms": span / 1e3, "busy_ms": busy / 1e3, "kernels": len(evs), "idle_ms": sum(g[0] for g in gaps) / 1e3,
            "idle_gt20us_ms": sum(g[0] for g in big) / 1e3}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-8b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--max-len", type=int, default=5422)
    ap.add_argument("--full-stats", default="all", choices=["paper", "all"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--timeline", nargs="*", choices=("bare",) + VARIANTS,
                    help="GPU busy time and idle gaps of batch 0 for these variants (profiler trace)")
    ap.add_argument("--trace-dir", help="also write the traces (gzipped) here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.settings import full_kinds, resolve_dtype

    fk = full_kinds(a.full_stats)
    dev = torch.device(a.device)
    model = build(a.preset, resolve_dtype("auto", dev), dev, a.layers)
    lengths, samples, batches, collated = workload(model.config.vocab_size, a.samples, a.max_len, 64, a.max_batch_tokens)

    def bare(which=None):
        bare_forward(model.model, collated if which is None else [collated[which]], dev)

    def measured(which=None):
        meas = Measurement(model, len(samples), dev, full_kinds=fk)
        run_batches(meas, samples, batches if which is None else [batches[which]], 0)
        meas.host_state()
        meas.remove()

    def timed(fn):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        return time.perf_counter() - t

    bare()
    for v in a.variants:  # compile / warm every variant's kernels
        with variant(v):
            measured(0)
    times: dict = {"bare": []}
    for _ in range(a.repeats):
        for v in a.variants:
            times["bare"].append(timed(bare))
            with variant(v):
                times.setdefault(v, []).append(timed(measured))
    t_bare = statistics.median(times["bare"])
    n_tok = sum(lengths)
    print(f"bare: {n_tok / t_bare:,.0f} tok/s ({t_bare:.3f} s; runs {[round(t, 3) for t in times['bare']]})")
    res = {"preset": a.preset, "full_stats": a.full_stats, "tokens": n_tok, "bare_s": times["bare"], "variants": {}}
    for v in a.variants:
        t = statistics.median(times[v])
        res["variants"][v] = {"s": times[v], "ratio": t_bare / t, "overhead_ms_per_batch": (t - t_bare) * 1e3 / len(batches)}
        print(f"{v:12s} ratio {t_bare / t:.3f}  overhead {1e3 * (t - t_bare) / len(batches):7.1f} ms/batch  runs {[round(x, 3) for x in times[v]]}")
    if a.profile and dev.type == "cuda":
        for label, fn in (("bare", lambda: bare(0)), ("measured", lambda: measured(0))):
            cats = profile_batch(fn)
            total = sum(v[0] for v in cats.values())
            print(f"\nprofile of batch 0, {label}: {total:.1f} ms GPU time, {sum(v[1] for v in cats.values())} kernels")
            for k, (ms, n) in sorted(cats.items(), key=lambda kv: -kv[1][0]):
                print(f"  {k:20s} {ms:9.1f} ms  {n:7d} kernels")
            res[f"profile_{label}"] = cats
    for v in a.timeline or ():
        if v == "bare":
            res["timeline_bare"] = timeline(lambda: bare(0), "bare", a.trace_dir)
        else:
            with variant(v):
                res[f"timeline_{v}"] = timeline(lambda: measured(0), v, a.trace_dir)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Time the fused row-statistics kernels (CUDA and Triton) against their torch reference on a GPU, check they agree.

    python benchmarks/bench_kernels.py                      # [65536, 4096] and [65536, 12288] bf16
    python benchmarks/bench_kernels.py --sweep              # also try BLOCK / num_warps / programs per SM
    python benchmarks/bench_kernels.py --check              # also the test grid (tests/test_kernels.py) on CUDA

Prints milliseconds per call (CUDA events, mean over --iters after warm-up) for: reading the tensor once
(``x.amax()``, the floor), ``row_stats`` with median and histogram, without them, and
``row_stats_reference``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from maxact.measurement import kernels as K  # noqa: E402


def cuda_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def make_activation(n: int, c: int, dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, device="cuda", generator=g, dtype=torch.float32)
    x *= 10.0 ** (torch.rand(n, 1, device="cuda", generator=g) * 2 - 1)
    x[:, 7] *= 300.0  # a massive-activation channel
    x = x.to(dtype)
    x[torch.rand(n, c, device="cuda", generator=g) < 0.01] = 0.0
    x[torch.rand(n, c, device="cuda", generator=g) < 1e-5] = float("nan")
    x[torch.rand(n, c, device="cuda", generator=g) < 1e-5] = float("inf")
    valid = torch.rand(n, device="cuda", generator=g) < 0.9
    return x, valid


def agree(got: dict, ref: dict, hg: torch.Tensor, hr: torch.Tensor) -> str:
    msgs = []
    for k in ("max", "min", "count", "nan", "inf", "zero", "median"):
        if k in ref and not torch.equal(got[k], ref[k]):
            msgs.append(f"{k}: {int((got[k] != ref[k]).sum())} rows differ")
    for k in ("sum", "sumsq", "abssum"):
        mag = ref["sumsq"] if k == "sumsq" else ref["abssum"]
        err = ((got[k].double() - ref[k].double()).abs() / (mag.double() + 1e-30)).max().item()
        if err > 1e-5:
            msgs.append(f"{k}: rel err {err:.2e}")
    if hg is not None:
        d = (hg - hr).abs()
        if int(hg.sum()) != int(hr.sum()):
            msgs.append(f"hist totals {int(hg.sum())} vs {int(hr.sum())}")
        if int(d.sum()):
            msgs.append(f"hist: {int(d.sum()) // 2} element(s) in a neighbouring bin (max {int(d.max())} per bin)")
    return "; ".join(msgs) if msgs else "agree"


def bench_shape(n: int, c: int, dtype, iters: int, sweep: bool) -> None:
    x, valid = make_activation(n, c, dtype)
    hist = torch.zeros(512, dtype=torch.int64, device="cuda")
    cfg = K.default_config(c, dtype)
    print(f"\n[{n}, {c}] {dtype}  auto backend: {K.backend_for(x)}; Triton default config {cfg}")
    floor = cuda_ms(lambda: x.amax(), iters)
    print(f"  read once (x.amax)                      {floor:8.3f} ms")
    hr = torch.zeros(512, dtype=torch.int64, device="cuda")
    want = K.row_stats_reference(x, valid, hr, True)
    for backend in ("cuda", "triton"):
        if K.backend_for(x, backend) != backend:
            print(f"  {backend}: not available for this input")
            continue
        for label, h, med in (("median+hist", hist, True), ("median, no hist", None, True),
                              ("hist, no median", hist, False), ("basic (no med/hist)", None, False)):
            ms = cuda_ms(lambda: K.row_stats(x, valid, h, med, backend=backend), iters)
            print(f"  {backend:6s} row_stats {label:20s} {ms:8.3f} ms  ({floor / ms:.2f} of read-once speed)")
        hg = torch.zeros(512, dtype=torch.int64, device="cuda")
        got = K.row_stats(x, valid, hg, True, backend=backend)
        print(f"  {backend:6s} check: {agree(got, want, hg, hr)}")
    ref = cuda_ms(lambda: K.row_stats_reference(x, valid, hist, True), max(3, iters // 4), warmup=1)
    print(f"  row_stats_reference (torch)             {ref:8.3f} ms")
    if K.backend_for(x, "cuda") == "cuda":
        from maxact.measurement.kernels import cuda as CK

        d = CK.defines(CK.DTYPES[dtype], c, c % 8 == 0, True, True)
        print(f"  cuda kernel {d}: {CK.kernel_attributes(CK._kernel(d, x.device))}")
        def cuda_variant(attr: str, value) -> tuple[float, str]:
            """Time and check the CUDA kernel with one module setting changed (restored afterwards)."""
            default = getattr(CK, attr)
            setattr(CK, attr, value)
            try:
                ms = cuda_ms(lambda: K.row_stats(x, valid, hist, True, backend="cuda"), iters)
                hg = torch.zeros(512, dtype=torch.int64, device="cuda")
                return ms, agree(K.row_stats(x, valid, hg, True, backend="cuda"), want, hg, hr)
            finally:
                setattr(CK, attr, default)

        for half in (False, True):  # the median's integer SIMD compares against packed fp16 compares
            ms, ok = cuda_variant("_HALF_CMP", half)
            print(f"  cuda   median compares {'fp16x2' if half else 'int   '}: median+hist {ms:8.3f} ms  check: {ok}")
        if c > 8192:  # elements a thread holds for wide rows (MAXACT_CUDA_ELEMS)
            best = None
            for e in (32, 48, 64):
                ms, ok = cuda_variant("_ELEMS_WIDE", e)
                print(f"  cuda   elems/thread {e}: median+hist {ms:8.3f} ms  {CK.launch_shape(c, e)}  check: {ok}")
                if ok == "agree" and (best is None or ms < best[0]):
                    best = (ms, e)
            print(f"BEST_ELEMS {c} {best[1] if best else 32}")
    if sweep:
        results = []
        for kw in sweep_configs(c):
            try:
                ms = cuda_ms(lambda: K.row_stats(x, valid, hist, True, **kw), max(5, iters // 2))
                ms_m = cuda_ms(lambda: K.row_stats(x, valid, None, True, **kw), max(5, iters // 2))
                ms_h = cuda_ms(lambda: K.row_stats(x, valid, hist, False, **kw), max(5, iters // 2))
            except Exception as e:  # noqa: BLE001 (resource limits of a config)
                print(f"  {kw}: {type(e).__name__}: {str(e)[:200]}")
                continue
            print(f"  sweep {kw}: median+hist {ms:7.3f}  median {ms_m:7.3f}  hist {ms_h:7.3f} ms", flush=True)
            results.append((ms, kw))
        results.sort(key=lambda r: r[0])
        ms, kw = results[0]
        hg = torch.zeros(512, dtype=torch.int64, device="cuda")
        got = K.row_stats(x, valid, hg, True, **kw)
        print(f"  best {kw} {ms:.3f} ms; check: {agree(got, want, hg, hr)}")


def sweep_configs(c: int) -> list[dict]:
    p2 = 1 << (c - 1).bit_length()
    out = []
    for method in (1, 0):
        for copies in (1, 4, 8):
            if method == 0 and copies != 1:
                continue
            out.append(dict(median_method=method, hist_copies=copies))
    default = tuple(K.default_config(c, torch.bfloat16)[k] for k in ("block", "num_warps"))
    for block, warps in ((p2, 4), (p2, 8), (p2, 16), (4096, 4), (4096, 8), (2048, 4), (2048, 8)):
        if block > 16384 or block // (32 * warps) > 64 or (block, warps) == default:
            continue
        for pps in (4, 16):
            out.append(dict(block=block, num_warps=warps, programs_per_sm=pps))
    return out


def check_grid() -> None:
    """The unit test's cases (tests/test_kernels.py) on CUDA: each kernel vs the reference."""
    import test_kernels as T

    problems, cases = [], 0
    for dtype in T.DTYPES:
        for n in (7, 300):
            cs = (5, 640, 1536, 4096, 4097, 12288, 40000)
            for c in cs if dtype != torch.float32 else (64, 4097, 30000):
                x, valid = T.make_case(n, c, dtype)
                x, valid = x.cuda(), valid.cuda()
                variants = [(True, True, {}), (False, False, {}), (True, True, dict(backend="triton"))]
                for want_median, with_hist, kw in variants:
                    hg = torch.full((512,), 3, dtype=torch.int64, device="cuda") if with_hist else None
                    hr = hg.clone() if with_hist else None
                    got = K.row_stats(x, valid, hg, want_median, **kw)
                    ref = K.row_stats_reference(x, valid, hr, want_median)
                    used = K.backend_for(x, kw.get("backend", "triton" if kw else None))
                    problems += T.compare(got, ref, hg, hr, f"[{used}] {dtype} {n}x{c} med={want_median} hist={with_hist} {kw}")
                    cases += 1
                # A strided (non-contiguous) view and an unaligned start take the scalar-load path.
                if dtype != torch.float32 and n > 1:
                    wide = torch.zeros(n, c + 3, dtype=dtype, device="cuda")
                    wide[:, 1:c + 1] = x
                    xv = wide[:, 1:c + 1]
                    hg = torch.zeros(512, dtype=torch.int64, device="cuda")
                    hr = hg.clone()
                    problems += T.compare(K.row_stats(xv, valid, hg, True), K.row_stats_reference(x, valid, hr, True),
                                          hg, hr, f"[{K.backend_for(xv)}] {dtype} {n}x{c} unaligned view")
                    cases += 1
    for p in problems[:40]:
        print("  " + p)
    print(f"check grid: {cases} cases, {len(problems)} problem(s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--channels", type=int, nargs="+", default=[4096, 12288])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    assert K.TRITON_AVAILABLE, "needs triton"
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    if a.check:
        check_grid()
    for c in a.channels:
        bench_shape(a.tokens, c, getattr(torch, a.dtype), a.iters, a.sweep)


if __name__ == "__main__":
    main()

"""Fused row-statistics kernel (maxact.measurement.kernels.triton) against its plain-torch reference.

The kernels run through the backend dispatch :func:`maxact.measurement.kernels.row_stats`.

The Triton kernel runs on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).  The interpreter
flag must be set before Triton decorates the kernels, so those checks run in a subprocess (this file
executed as a script); they are skipped with a reason where Triton or its interpreter is missing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXACT_KEYS = ("max", "min", "count", "nan", "inf", "zero", "median")
SUM_KEYS = ("sum", "sumsq", "abssum")
SHAPES_N = (1, 7, 33)
SHAPES_C = (5, 64, 1000, 4097)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def make_case(n: int, c: int, dtype: torch.dtype, seed: int = 0):
    """Activations with per-row scales over many decades, planted NaN/Inf/zeros/ties, invalid rows.

    Values within 1e-3 of a histogram bin edge are replaced by 0.5, so the histogram must match
    exactly even where log10 differs from torch's by an ulp.
    """
    g = torch.Generator().manual_seed(seed * 1000 + n * 17 + c)
    scale = 10.0 ** (torch.rand(n, 1, generator=g) * 8 - 4)
    x = torch.randn(n, c, generator=g) * scale
    # A few massive activations and tiny values; heavy ties from rounding.
    x[torch.rand(n, c, generator=g) < 0.01] *= 1e4
    x[torch.rand(n, c, generator=g) < 0.01] *= 1e-9
    ties = torch.rand(n, c, generator=g) < 0.2
    x[ties] = torch.round(x[ties])
    x = x.to(dtype)
    x[torch.rand(n, c, generator=g) < 0.05] = 0.0
    x[torch.rand(n, c, generator=g) < 0.02] = -0.0
    x[torch.rand(n, c, generator=g) < 0.02] = float("nan")
    x[torch.rand(n, c, generator=g) < 0.01] = float("inf")
    x[torch.rand(n, c, generator=g) < 0.01] = float("-inf")
    if n >= 3:
        x[1] = float("nan")  # a row without any finite element
        x[2, : c // 2 + 1] = 0.0  # a row whose median is 0
    a = x.float().abs()
    pos = (torch.log10(a.clamp_min(1e-30)) + 8.0) * 32.0
    near_edge = torch.isfinite(a) & (a > 0) & ((pos - pos.round()).abs() < 1e-3)
    x[near_edge] = 0.5
    valid = torch.rand(n, generator=g) < 0.8
    if n >= 2:
        valid[0] = True
        valid[-1] = False
    return x, valid


def compare(got: dict, ref: dict, hist_got, hist_ref, tag: str) -> list[str]:
    errs = []
    for k in EXACT_KEYS:
        if k not in ref:
            continue
        g, r = got[k], ref[k]
        if g.dtype != r.dtype or g.shape != r.shape:
            errs.append(f"{tag} {k}: dtype/shape {g.dtype}{tuple(g.shape)} vs {r.dtype}{tuple(r.shape)}")
        elif not torch.equal(g, r):
            bad = (g != r).nonzero().flatten()[:5].tolist()
            errs.append(f"{tag} {k}: rows {bad}: {g[bad].tolist()} vs {r[bad].tolist()}")
    for k in SUM_KEYS:
        g, r = got[k].double(), ref[k].double()
        if g.dtype != r.dtype or g.shape != r.shape or got[k].dtype != torch.float32:
            errs.append(f"{tag} {k}: dtype/shape")
            continue
        # float32 partials summed in a different order: relative to the row's magnitude.
        mag = ref["abssum"].double() if k != "sumsq" else ref["sumsq"].double()
        if not torch.all((g - r).abs() <= 1e-5 * mag + 1e-30):
            errs.append(f"{tag} {k}: max err {(g - r).abs().max().item()}")
    if hist_ref is not None and not torch.equal(hist_got, hist_ref):
        d = (hist_got - hist_ref).abs()
        errs.append(f"{tag} hist: {int(d.sum())} counts differ (totals {int(hist_got.sum())} vs {int(hist_ref.sum())})")
    return errs


def run_interpreter_checks() -> list[str]:
    """All kernel-vs-reference checks; call only where TRITON_INTERPRET=1 was set before importing triton."""
    from maxact.measurement import kernels as K
    from maxact.measurement.kernels import triton as T

    assert T.TRITON_AVAILABLE and T.INTERPRET
    errs = []
    for dtype in DTYPES:
        for n in SHAPES_N:
            for c in SHAPES_C:
                if dtype == torch.float16 and (n == 1 or c in (5, 1000)):
                    continue  # fp16 shares the bf16 code path but its exponent mask; keep the test fast
                x, valid = make_case(n, c, dtype)
                variants = ((True, True), (False, False)) if n == 7 else ((True, True),)
                for want_median, with_hist in variants:
                    h_got = torch.full((512,), 3, dtype=torch.int64) if with_hist else None
                    h_ref = h_got.clone() if with_hist else None
                    got = K.row_stats(x, valid, h_got, want_median)
                    ref = K.row_stats_reference(x, valid, h_ref, want_median)
                    if not want_median and "median" in got:
                        errs.append(f"{dtype} {n}x{c}: median returned without want_median")
                    errs += compare(got, ref, h_got, h_ref, f"{dtype} {n}x{c} med={want_median}")
        # Multi-block rows (row longer than BLOCK) with a config override; the radix-select median and the
        # privatised histogram copies (non-default options): one shape per dtype each.
        for (n, c, seed), options, label in (((9, 1000, 1), {"block": 256, "num_warps": 4, "programs_per_sm": 1}, "block=256"),
                                             ((7, 300, 3), {"block": 128, "median_method": 0, "hist_copies": 4},
                                              "radix median, 4 hist copies")):
            x, valid = make_case(n, c, dtype, seed=seed)
            h_got = torch.zeros(512, dtype=torch.int64)
            h_ref = h_got.clone()
            got = K.row_stats(x, valid, h_got, True, **options)
            ref = K.row_stats_reference(x, valid, h_ref, True)
            errs += compare(got, ref, h_got, h_ref, f"{dtype} {n}x{c} {label}")
        # Non-contiguous input and an integer validity mask.
        xt, valid = make_case(24, 10, dtype, seed=2)
        xt = xt.t()  # [10, 24], strided
        v = valid[:10].to(torch.int64)
        got = K.row_stats(xt, v, None, True)
        ref = K.row_stats_reference(xt, v.bool(), None, True)
        errs += compare(got, ref, None, None, f"{dtype} transposed")
    return errs


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language as tl

        return hasattr(tl, "histogram")
    except Exception:
        return False


@pytest.mark.timeout(300)
def test_kernel_matches_reference_in_interpreter():
    if not _triton_importable():
        pytest.skip("triton (with tl.histogram) is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=290)
    out = proc.stdout + proc.stderr
    if proc.returncode == 3:
        pytest.skip(f"Triton interpreter unavailable here: {out.strip().splitlines()[-1] if out.strip() else ''}")
    assert proc.returncode == 0, out[-6000:]


# ------------------------------------------------------------------- reference (no Triton needed)
def test_reference_matches_float64_and_kthvalue():
    x, valid = make_case(33, 1000, torch.bfloat16)
    from maxact.measurement.kernels.common import row_stats_reference

    ref = row_stats_reference(x, valid, None, True)
    xd = x.double()
    ok = torch.isfinite(xd) & valid[:, None]
    xz = torch.where(ok, xd, 0.0)
    assert torch.equal(ref["count"], ok.sum(-1).int())
    assert torch.equal(ref["nan"], (torch.isnan(xd) & valid[:, None]).sum(-1).int())
    assert torch.equal(ref["inf"], (torch.isinf(xd) & valid[:, None]).sum(-1).int())
    assert torch.equal(ref["zero"], (ok & (xd == 0)).sum(-1).int())
    torch.testing.assert_close(ref["sum"].double(), xz.sum(-1), rtol=1e-5, atol=1e-5 * float(xz.abs().sum(-1).max()))
    srt = xz.abs().sort(-1).values
    assert torch.equal(ref["median"].double(), srt[:, (1000 + 1) // 2 - 1])
    assert ref["max"][~valid].eq(-math.inf).all() and ref["min"][~valid].eq(math.inf).all()
    assert ref["max"][1].item() == -math.inf  # all-NaN row


def test_reference_agrees_with_pointstats():
    """The reference's histogram, counts and sums aggregate to PointStats.update's on the same data."""
    from maxact.measurement.kernels.common import row_stats_reference
    from maxact.measurement.statistics import PointStats, TokenInfo

    x, valid = make_case(33, 257, torch.bfloat16)
    n = x.shape[0]
    ps = PointStats("p", n_samples=n, device="cpu", full=True)
    info = TokenInfo(valid=valid, sample=torch.arange(n), position=torch.zeros(n, dtype=torch.int64),
                     token_id=torch.zeros(n, dtype=torch.int64))
    ps.update(x, info)
    hist = torch.zeros(512, dtype=torch.int64)
    ref = row_stats_reference(x, valid, hist, True)
    assert torch.equal(hist, ps.hist)
    assert int(ref["count"].sum()) == int(ps.count)
    assert int(ref["nan"].sum()) == int(ps.n_nan)
    assert int(ref["inf"].sum()) == int(ps.n_inf)
    assert int(ref["zero"].sum()) == int(ps.n_zero)
    assert math.isclose(float(ref["sum"].double().sum()), float(ps.sum), rel_tol=1e-5, abs_tol=1e-3)
    assert float(ref["max"].max()) == float(ps.max) and float(ref["min"].min()) == float(ps.min)


def test_row_stats_falls_back_on_cpu_without_interpreter():
    """Outside the interpreter a CPU tensor takes the reference path (import never fails)."""
    from maxact.measurement import kernels as K
    from maxact.measurement.kernels import triton as T

    if T.INTERPRET:
        pytest.skip("interpreter mode is on in this process")
    x, valid = make_case(7, 64, torch.float32)
    h1, h2 = torch.zeros(512, dtype=torch.int64), torch.zeros(512, dtype=torch.int64)
    got = K.row_stats(x, valid, h1, True)
    ref = K.row_stats_reference(x, valid, h2, True)
    assert not compare(got, ref, h1, h2, "fallback")


if __name__ == "__main__":  # the interpreter worker
    try:
        import triton  # noqa: F401
        import triton.language as tl  # noqa: F401

        from maxact.measurement.kernels import triton as T

        if not (T.TRITON_AVAILABLE and T.INTERPRET):
            raise RuntimeError("triton imported but interpreter mode / tl.histogram not available")
    except Exception as e:  # noqa: BLE001
        print(f"interpreter unavailable: {type(e).__name__}: {e}")
        sys.exit(3)
    problems = run_interpreter_checks()
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)

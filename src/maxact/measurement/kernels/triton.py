"""Fused per-row activation statistics: one Triton kernel reads each token row once.

The row-statistics contract (:func:`maxact.measurement.kernels.row_stats`, every backend):
``row_stats(x, row_valid, hist, want_median)`` returns, per row of a ``[N, C]`` activation:

* ``max`` / ``min`` (float32) over the row's finite elements (``-inf`` / ``+inf`` for invalid rows or
  rows without a finite element);
* ``sum`` / ``sumsq`` / ``abssum`` (float32 partials) over the finite elements of valid rows;
* ``count`` / ``nan`` / ``inf`` / ``zero`` (int32) element counts of valid rows;
* ``median`` (float32, with ``want_median``): the lower median (k-th smallest, ``k = (C+1)//2``) of
  ``|a|`` over all C channels, non-finite elements and invalid rows counting as 0 -- exactly
  ``torch.where(isfinite(x) & row_valid[:, None], x.float(), 0).abs().kthvalue(k, -1).values``;

and, with ``hist`` (int64 ``[512]``), adds the log10|a| histogram of the finite nonzero elements of
valid rows in place (the same bins as ``torch.histc`` in :mod:`maxact.measurement.statistics`).

The median is an exact select on the bit pattern of ``|a|`` (non-negative IEEE floats order like their
bit patterns).  Default (``median_method=1``): bisection one key bit at a time, each bit one counting
reduction over the row, which stays in registers when the row fits one block (15 steps for 16-bit
inputs, 31 for float32; longer rows are re-read per step, mostly from L2).  ``median_method=0``: radix
select with ``tl.histogram`` digit histograms (2 passes for 16-bit, 3 for float32) -- exact too, but
3.5x slower on an H200 with Triton 3.6, whose ``tl.histogram`` costs grow with the number of bins.

Measured on an H200 (torch 2.11, Triton 3.6, [65536, 4096] bf16, 10% padding rows): reading the
tensor once 0.17 ms; row_stats without median/histogram 0.58 ms, with median 1.6-1.9 ms, with the
512-bin histogram 2.5 ms, everything 5.5 ms; row_stats_reference 30 ms.  The histogram (tl.histogram,
512 bins) is the most expensive part.

Importing this module never fails: without Triton (or without a CUDA tensor and without
``TRITON_INTERPRET=1``) :func:`supports` is false and the dispatch falls back to
:func:`~maxact.measurement.kernels.common.row_stats_reference`.

Which backend runs (this Triton kernel, the CUDA kernel of :mod:`maxact.measurement.kernels.cuda`, or the
torch reference) is chosen by :func:`maxact.measurement.kernels.row_stats`: 16-bit inputs with at most
32,768 channels on CUDA go to the CUDA kernel (5.7x faster than this Triton kernel with median and
histogram on [65536, 4096] bf16: 0.78 vs 4.4 ms on an H200); other CUDA inputs to the Triton kernel
here; the rest to the torch reference.  ``MAXACT_KERNEL`` (auto, cuda, triton, torch) or ``backend=``
overrides it.  This module's :func:`row_stats` is the Triton launch alone.
"""

from __future__ import annotations

import os

import torch

from maxact.measurement.kernels.common import (
    DTYPE_KIND,
    EXP_ALL,
    FLOAT_KEYS,
    HIST_BINS,
    INT_KEYS,
    MAX_ELEMS_PER_LAUNCH,
    outputs,
    sm_count,
)

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    try:
        from triton.language.extra import libdevice as _libdevice  # triton >= 3.0
    except Exception:  # pragma: no cover
        _libdevice = None
    TRITON_AVAILABLE = hasattr(tl, "histogram")
except Exception:  # pragma: no cover
    triton = None
    tl = None
    _libdevice = None
    TRITON_AVAILABLE = False

# Triton's interpreter (TRITON_INTERPRET=1, read by Triton at import): the kernel then runs on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ------------------------------------------------------------------------------------------- kernel
if TRITON_AVAILABLE:

    # The interpreter does not implement libdevice (Triton 3.9): there log10 = log2 * log10(2), which
    # can differ from torch's log10 by an ulp (matters only for values on a bin edge).
    if _libdevice is not None and hasattr(_libdevice, "log10") and not INTERPRET:

        @triton.jit
        def _log10(a):
            return _libdevice.log10(a)

    else:  # pragma: no cover

        @triton.jit
        def _log10(a):
            return tl.log2(a) * 0.30102999566398120

    @triton.jit
    def _abs_bits(x, KIND: tl.constexpr):
        """Bit pattern of |x| as non-negative int32 (KIND 0: bf16, 1: fp16, 2: fp32)."""
        if KIND == 2:
            return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        else:
            return x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF

    @triton.jit
    def _key_to_float(key, KIND: tl.constexpr):
        if KIND == 0:
            return (key << 16).to(tl.float32, bitcast=True)
        elif KIND == 1:
            return key.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            return key.to(tl.float32, bitcast=True)

    @triton.jit
    def _pick(h, k):
        """Digit holding the k-th smallest (1-based) of histogram h, and k within that digit."""
        cum = tl.cumsum(h, 0)
        below_m = cum < k
        digit = tl.sum(below_m.to(tl.int32), 0)
        below = tl.sum(tl.where(below_m, h, 0), 0)
        return digit, k - below

    @triton.jit
    def _select_pass(row_ptr, C, c_lim, key_regs, prefix, k,
                     PREFIX_SHIFT: tl.constexpr, SHIFT: tl.constexpr, WIDTH: tl.constexpr,
                     KIND: tl.constexpr, EXP_ALL: tl.constexpr, BLOCK: tl.constexpr,
                     SINGLE_BLOCK: tl.constexpr):
        """Histogram of digit (key >> SHIFT) & (2**WIDTH - 1) over the row's elements whose bits above
        PREFIX_SHIFT equal prefix; returns the digit holding the k-th element and the new k."""
        cols = tl.arange(0, BLOCK)
        h = tl.zeros([1 << WIDTH], dtype=tl.int32)
        if SINGLE_BLOCK:
            inb = cols < C
            m = inb & ((key_regs >> PREFIX_SHIFT) == prefix)
            h += tl.histogram((key_regs >> SHIFT) & ((1 << WIDTH) - 1), 1 << WIDTH, mask=m)
        else:
            for start in range(0, C, BLOCK):
                cc = start + cols
                inb = cc < C
                x = tl.load(row_ptr + cc, mask=cc < c_lim, other=0.0)
                bits = _abs_bits(x, KIND)
                key = tl.where(bits < EXP_ALL, bits, 0)
                m = inb & ((key >> PREFIX_SHIFT) == prefix)
                h += tl.histogram((key >> SHIFT) & ((1 << WIDTH) - 1), 1 << WIDTH, mask=m)
        return _pick(h, k)

    @triton.jit
    def _bisect_median(row_ptr, C, c_lim, key_regs, K, KIND: tl.constexpr, EXP_ALL: tl.constexpr,
                       KEY_BITS: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr):
        """Largest key p with #(key < p) < K, i.e. the K-th smallest key, one bit at a time (MSB first):
        each bit is one counting reduction over the row (held in registers when it fits one block)."""
        cols = tl.arange(0, BLOCK)
        p = tl.zeros([], dtype=tl.int32)
        for i in tl.static_range(KEY_BITS):
            cand = p | (1 << (KEY_BITS - 1 - i))
            if SINGLE_BLOCK:
                cnt = tl.sum((key_regs < cand).to(tl.int32), 0)
            else:
                cnt = tl.zeros([], dtype=tl.int32)
                for start in range(0, C, BLOCK):
                    cc = start + cols
                    x = tl.load(row_ptr + cc, mask=cc < c_lim, other=0.0)
                    bits = _abs_bits(x, KIND)
                    key = tl.where(bits < EXP_ALL, bits, 0)
                    cnt += tl.sum(((key < cand) & (cc < C)).to(tl.int32), 0)
            p = tl.where(cnt < K, cand, p)
        return p

    @triton.jit
    def _row_stats_kernel(
        x_ptr, valid_ptr, max_ptr, min_ptr, sum_ptr, sumsq_ptr, abssum_ptr,
        count_ptr, nan_ptr, inf_ptr, zero_ptr, med_ptr, hist_ptr,
        N, C, stride_row, K,
        KIND: tl.constexpr, EXP_ALL: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
        WANT_MEDIAN: tl.constexpr, WANT_HIST: tl.constexpr, NPASS: tl.constexpr,
        MEDIAN_METHOD: tl.constexpr, KEY_BITS: tl.constexpr, HIST_COPIES: tl.constexpr, VEC: tl.constexpr,
        S0: tl.constexpr, W0: tl.constexpr, S1: tl.constexpr, W1: tl.constexpr,
        S2: tl.constexpr, W2: tl.constexpr,
    ):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        cols = tl.arange(0, BLOCK)
        lhist = tl.zeros([512 * HIST_COPIES], dtype=tl.int32)
        # Histogram copy per group of lanes (by column; the layout decides the real lane): fewer
        # same-address shared-memory atomics.  Correctness does not depend on the mapping.
        copy = (cols // VEC) % HIST_COPIES
        for row in range(pid, N, nprog):
            row_ptr = x_ptr + row * stride_row  # < 2**31: launches are chunked
            rv = tl.load(valid_ptr + row) != 0
            c_lim = tl.where(rv, C, 0)  # columns to read: none for invalid rows
            mx = tl.full([], float("-inf"), tl.float32)
            mn = tl.full([], float("inf"), tl.float32)
            s1 = tl.zeros([], dtype=tl.float32)
            s2 = tl.zeros([], dtype=tl.float32)
            sa = tl.zeros([], dtype=tl.float32)
            n_fin = tl.zeros([], dtype=tl.int32)
            n_nan = tl.zeros([], dtype=tl.int32)
            n_inf = tl.zeros([], dtype=tl.int32)
            n_zero = tl.zeros([], dtype=tl.int32)
            h0 = tl.zeros([1 << W0], dtype=tl.int32)
            key_regs = tl.zeros([BLOCK], dtype=tl.int32)
            for start in range(0, C, BLOCK):
                cc = start + cols
                inb = cc < C
                m = cc < c_lim
                x = tl.load(row_ptr + cc, mask=m, other=0.0)
                bits = _abs_bits(x, KIND)
                finite = bits < EXP_ALL
                valid = finite & m
                xf = x.to(tl.float32)
                xz = tl.where(valid, xf, 0.0)
                s1 += tl.sum(xz, 0)
                s2 += tl.sum(xz * xz, 0)
                sa += tl.sum(tl.abs(xz), 0)
                mx = tl.maximum(mx, tl.max(tl.where(valid, xf, float("-inf")), 0))
                mn = tl.minimum(mn, tl.min(tl.where(valid, xf, float("inf")), 0))
                nonzero = valid & (bits != 0)
                n_fin += tl.sum(valid.to(tl.int32), 0)
                n_zero += tl.sum((valid & (bits == 0)).to(tl.int32), 0)
                n_nan += tl.sum(((bits > EXP_ALL) & m).to(tl.int32), 0)
                n_inf += tl.sum(((bits == EXP_ALL) & m).to(tl.int32), 0)
                if WANT_MEDIAN:
                    key = tl.where(valid, bits, 0)
                    if SINGLE_BLOCK:
                        key_regs = tl.where(inb, key, 0x7FFFFFFF)
                    if MEDIAN_METHOD == 0:
                        h0 += tl.histogram(key >> S0, 1 << W0, mask=inb)
                if WANT_HIST:
                    a = tl.abs(xz)
                    la = _log10(tl.maximum(a, 1e-30))
                    la = tl.minimum(tl.maximum(la, -8.0), 8.0 - 1e-6)
                    b = ((la + 8.0) * 512.0 / 16.0).to(tl.int32)
                    b = tl.minimum(tl.maximum(b, 0), 511)
                    if HIST_COPIES == 1:
                        lhist += tl.histogram(b, 512, mask=nonzero)
                    else:
                        lhist += tl.histogram(b * HIST_COPIES + copy, 512 * HIST_COPIES, mask=nonzero)
            tl.store(max_ptr + row, mx)
            tl.store(min_ptr + row, mn)
            tl.store(sum_ptr + row, s1)
            tl.store(sumsq_ptr + row, s2)
            tl.store(abssum_ptr + row, sa)
            tl.store(count_ptr + row, n_fin)
            tl.store(nan_ptr + row, n_nan)
            tl.store(inf_ptr + row, n_inf)
            tl.store(zero_ptr + row, n_zero)
            if WANT_MEDIAN and MEDIAN_METHOD == 1:
                med = _bisect_median(row_ptr, C, c_lim, key_regs, K, KIND, EXP_ALL, KEY_BITS, BLOCK,
                                     SINGLE_BLOCK)
                tl.store(med_ptr + row, _key_to_float(med, KIND))
            if WANT_MEDIAN and MEDIAN_METHOD == 0:
                d0, k1 = _pick(h0, K)
                prefix = d0
                d1, k2 = _select_pass(row_ptr, C, c_lim, key_regs, prefix, k1, S0, S1, W1,
                                      KIND, EXP_ALL, BLOCK, SINGLE_BLOCK)
                prefix = (prefix << W1) | d1
                if NPASS == 3:
                    d2, k3 = _select_pass(row_ptr, C, c_lim, key_regs, prefix, k2, S1, S2, W2,
                                          KIND, EXP_ALL, BLOCK, SINGLE_BLOCK)
                    prefix = (prefix << W2) | d2
                tl.store(med_ptr + row, _key_to_float(prefix, KIND))
        if WANT_HIST:
            offs = tl.arange(0, 512 * HIST_COPIES)
            tl.atomic_add(hist_ptr + offs, lhist, mask=lhist != 0)


# ------------------------------------------------------------------------------------------ wrapper
# Radix digits (shift, width) per pass: 16-bit keys have 15 significant bits, float32 keys 31.
_DIGITS = {
    0: ((5, 10), (0, 5), (0, 1)),
    1: ((5, 10), (0, 5), (0, 1)),
    2: ((20, 11), (10, 10), (0, 10)),
}


def default_config(c: int, dtype: torch.dtype) -> dict:
    """BLOCK / num_warps / programs per SM heuristic (override any of them via row_stats kwargs)."""
    # Measured on an H200 (triton 3.6, bf16, 65536 rows): C=4096 as one 4096-wide block held in
    # registers (the median's bisection never reloads it) with 4 warps was best; for C=12288 one
    # 16384-wide block (16 warps) was slower than looping over 4096-wide blocks with 8 warps.
    p2 = 1 << max(0, (c - 1).bit_length())
    if p2 <= 8192:
        block = max(16, p2)
        num_warps = min(8, max(1, block // 1024))
    else:
        block, num_warps = 4096, 8
    return {"block": block, "num_warps": num_warps, "programs_per_sm": max(8, 32 // num_warps),
            "median_method": 1, "hist_copies": 1}


def supports(x: torch.Tensor) -> bool:
    """Whether the Triton kernel can run on ``x`` (Triton importable, CUDA tensor or interpreter, dtype)."""
    return TRITON_AVAILABLE and (x.is_cuda or INTERPRET) and x.dtype in DTYPE_KIND


@torch.no_grad()
def row_stats(x: torch.Tensor, row_valid_u8: torch.Tensor, hist: torch.Tensor | None, want_median: bool, *,
              block: int | None = None, num_warps: int | None = None, programs_per_sm: int | None = None,
              median_method: int | None = None, hist_copies: int | None = None) -> dict:
    """The row_stats contract with the Triton kernel; ``row_valid_u8`` is uint8 [N], ``hist`` int64 [512].

    Call :func:`maxact.measurement.kernels.row_stats` (which checks :func:`supports`) rather than this.
    """
    n, c = x.shape
    rv = row_valid_u8
    x = x.contiguous()
    kind = DTYPE_KIND[x.dtype]
    cfg = default_config(c, x.dtype)
    if block is not None:
        cfg["block"] = block
    if num_warps is not None:
        cfg["num_warps"] = num_warps
    if programs_per_sm is not None:
        cfg["programs_per_sm"] = programs_per_sm
    if median_method is not None:
        cfg["median_method"] = median_method
    if hist_copies is not None:
        cfg["hist_copies"] = hist_copies
    blk = cfg["block"]
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    i32 = dict(dtype=torch.int32, device=dev)
    out = outputs(torch.empty(len(FLOAT_KEYS), n, **f32), torch.empty(len(INT_KEYS), n, **i32))
    med = torch.empty(n, **f32) if want_median else torch.empty(1, **f32)
    copies = cfg["hist_copies"]
    scratch = torch.zeros(HIST_BINS * copies, **i32) if hist is not None else torch.empty(1, **i32)
    (s0, w0), (s1, w1), (s2, w2) = _DIGITS[kind]
    npass = 3 if kind == 2 else 2
    rows_per_launch = max(1, MAX_ELEMS_PER_LAUNCH // c)
    for r0 in range(0, n, rows_per_launch):
        r1 = min(n, r0 + rows_per_launch)
        nr = r1 - r0
        grid = (max(1, min(nr, sm_count(dev) * cfg["programs_per_sm"])),)
        _row_stats_kernel[grid](
            x[r0:r1], rv[r0:r1], out["max"][r0:], out["min"][r0:], out["sum"][r0:], out["sumsq"][r0:],
            out["abssum"][r0:], out["count"][r0:], out["nan"][r0:], out["inf"][r0:], out["zero"][r0:],
            med[r0:] if want_median else med, scratch,
            nr, c, x.stride(0), (c + 1) // 2,
            KIND=kind, EXP_ALL=EXP_ALL[kind], BLOCK=blk, SINGLE_BLOCK=c <= blk,
            WANT_MEDIAN=want_median, WANT_HIST=hist is not None, NPASS=npass,
            MEDIAN_METHOD=cfg["median_method"], KEY_BITS=31 if kind == 2 else 15, HIST_COPIES=copies,
            VEC=16 // x.element_size(),
            S0=s0, W0=w0, S1=s1, W1=w1, S2=s2, W2=w2,
            num_warps=cfg["num_warps"],
        )
    if hist is not None:
        hist += scratch.view(HIST_BINS, copies).sum(1, dtype=hist.dtype)
    if want_median:
        out["median"] = med
    return out

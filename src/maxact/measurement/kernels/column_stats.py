"""Per-channel (column) statistics of a linear layer's input, optionally per group of rows (MoE experts).

The contract (:func:`column_stats`, both implementations): for rows ``x[rows[s]]`` (or ``x[s]``) of a
``[M, C]`` activation, ``s < S``, those with ``valid[s]``, each belonging to group ``groups[s]`` in
``[0, G)`` (or all to group 0):

* ``max_abs`` [G, C] float32: max |x| over the finite elements (0 where none);
* ``sumsq`` / ``sumabs`` [G, C] float32: sums of x^2 and |x| over the finite elements (partials of one
  batch; the running totals are float64);
* ``nonfinite`` [] int64: NaN/Inf elements of the counted rows (left out of every statistic).

With ``groups`` the rows come sorted by group (non-decreasing ``groups``), as the callers sort them.

The Triton kernels read each row once (no float32 copy): without groups a program takes a block of channels
and a contiguous range of rows and writes its partials to its own row of a [chunks, C] buffer, which torch then
reduces; with groups (rows sorted by group, what :mod:`maxact.measurement.linear_inputs` passes for MoE experts) a
program takes a block of channels of one group's rows and writes that group's row. No float atomics: the same
input gives the same bits on every run, so a sharded measurement merges to the unsharded one bit for bit
(:mod:`maxact.measurement.shards`). The torch reference materialises float32 copies (the CPU path). Neither
synchronises the device or branches on values on the host.
"""

from __future__ import annotations

import contextlib
import os

import torch

from maxact.measurement.kernels.common import sm_count
from maxact.measurement.kernels.triton import INTERPRET, TRITON_AVAILABLE, tl, triton

# Launch configurations (rows per tile, channels per program, warps, programs per SM; the grouped kernel runs one
# program per channel block and group, so it does not use the last), chosen by benchmarks/bench_column_stats.py on an
# H200 for the earlier kernel, which added partials with atomics (benchmarks/measured/h200-2026-12-02b/). The
# deterministic kernels ran within 0.84-1.20x of its time on the same shapes on an H100
# (benchmarks/measured/h100-2026-12-06-shards/column_stats_deterministic.txt). MAXACT_COLUMN_STATS overrides both.
CONFIG = (16, 128, 8, 8)
CONFIG_GROUPED = (32, 64, 4, 8)
if os.environ.get("MAXACT_COLUMN_STATS"):
    CONFIG = CONFIG_GROUPED = tuple(int(v) for v in os.environ["MAXACT_COLUMN_STATS"].split(","))


def supports(x: torch.Tensor) -> bool:
    return TRITON_AVAILABLE and (x.is_cuda or INTERPRET) and x.dtype in (torch.bfloat16, torch.float16, torch.float32)


if TRITON_AVAILABLE:

    @triton.jit
    def _tile(x_ptr, rows_ptr, valid_ptr, r, rmask, cols, cmask, stride_x,
              HAS_ROWS: tl.constexpr, HAS_VALID: tl.constexpr):
        """|x| of rows ``r`` (finite elements; 0 elsewhere) and the non-finite mask of the counted ones."""
        if HAS_VALID:
            rmask = rmask & (tl.load(valid_ptr + r, mask=rmask, other=0) != 0)
        if HAS_ROWS:
            src = tl.load(rows_ptr + r, mask=rmask, other=0).to(tl.int64)
        else:
            src = r.to(tl.int64)
        m = rmask[:, None] & cmask[None, :]
        a = tl.abs(tl.load(x_ptr + src[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32))
        fin = a < float("inf")  # false for NaN and Inf
        return tl.where(fin, a, 0.0), m & ~fin

    @triton.jit
    def _column_stats_kernel(x_ptr, rows_ptr, offsets_ptr, valid_ptr, max_ptr, sq_ptr, abs_ptr, nonfinite_ptr,
                             S, C, stride_x, rows_per_prog,
                             HAS_ROWS: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_VALID: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program (c, p) reduces one range of rows over one block of channels and writes row p of its outputs
        (one writer per element: no float atomics). Without groups, range p is rows ``p * rows_per_prog`` onward
        and row p of [chunks, C] partial buffers; with groups (rows sorted by group), range p is group p's rows
        ``offsets[p]:offsets[p + 1]`` and row p of the [G, C] outputs."""
        pid_c = tl.program_id(0)
        pid_r = tl.program_id(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        if HAS_GROUPS:
            start = tl.load(offsets_ptr + pid_r)
            end = tl.load(offsets_ptr + pid_r + 1)
        else:
            start = pid_r * rows_per_prog
            end = tl.minimum(start + rows_per_prog, S)
        # Element-wise running accumulators: the reductions over rows happen once, at the end.
        acc_mx = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        acc_sq = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        acc_ab = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        nonfinite = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.int32)
        for r0 in range(start, end, BLOCK_N):
            r = r0 + tl.arange(0, BLOCK_N)
            a, bad = _tile(x_ptr, rows_ptr, valid_ptr, r, r < end, cols, cmask, stride_x, HAS_ROWS, HAS_VALID)
            nonfinite += bad.to(tl.int32)
            acc_mx = tl.maximum(acc_mx, a)
            acc_sq += a * a
            acc_ab += a
        off = pid_r.to(tl.int64) * C + cols
        tl.store(max_ptr + off, tl.max(acc_mx, axis=0), mask=cmask)
        tl.store(sq_ptr + off, tl.sum(acc_sq, axis=0), mask=cmask)
        tl.store(abs_ptr + off, tl.sum(acc_ab, axis=0), mask=cmask)
        tl.atomic_add(nonfinite_ptr, tl.sum(tl.sum(nonfinite, axis=1), axis=0))  # an integer: any order


def column_stats_reference(x, rows=None, groups=None, n_groups: int = 1, valid=None):
    """The contract in plain torch (float32 copies of the rows)."""
    xs = x if rows is None else x.index_select(0, rows)
    xf = xs.float()
    finite = torch.isfinite(xf)
    keep = finite if valid is None else finite & valid[:, None]
    a = torch.where(keep, xf, 0.0).abs_()
    bad = ~finite if valid is None else ~finite & valid[:, None]
    shape = (n_groups, x.shape[1])
    if groups is None:
        return a.amax(0, keepdim=True) if len(a) else a.new_zeros(shape), a.square().sum(0, keepdim=True), a.sum(0, keepdim=True), bad.sum()
    ids = groups.long()
    mx = a.new_zeros(shape).index_reduce_(0, ids, a, "amax", include_self=True)
    return mx, a.new_zeros(shape).index_add_(0, ids, a.square()), a.new_zeros(shape).index_add_(0, ids, a), bad.sum()


@torch.no_grad()
def column_stats(x: torch.Tensor, rows=None, groups=None, n_groups: int = 1, valid=None, config=None):
    """(max_abs, sumsq, sumabs, nonfinite) as in the module docstring; the kernel where it runs
    (``config``: (rows per tile, channels per program, warps, programs per SM), default :data:`CONFIG`, or
    :data:`CONFIG_GROUPED` with groups)."""
    block_n, block_c, num_warps, programs_per_sm = config or (CONFIG if groups is None else CONFIG_GROUPED)
    s = x.shape[0] if rows is None else rows.shape[0]
    if not supports(x) or s == 0 or x.shape[1] == 0:
        return column_stats_reference(x, rows, groups, n_groups, valid)
    if x.stride(-1) != 1:
        x = x.contiguous()
    c = x.shape[1]
    nonfinite = torch.zeros((), dtype=torch.int32, device=x.device)
    n_cblocks = triton.cdiv(c, block_c)
    dummy = nonfinite  # an unused pointer argument
    valid_u8 = None if valid is None else valid.reshape(s).to(torch.uint8)
    flags = dict(HAS_ROWS=rows is not None, HAS_GROUPS=groups is not None, HAS_VALID=valid is not None, BLOCK_N=block_n,
                 BLOCK_C=block_c, num_warps=num_warps)
    if groups is None:  # programs over contiguous row ranges; their partials added by torch below
        target = max(1, programs_per_sm * sm_count(x.device) // n_cblocks) if x.is_cuda else 2
        chunks = max(1, min(triton.cdiv(s, block_n), target))
        rows_per_prog = triton.cdiv(triton.cdiv(s, chunks), block_n) * block_n
        n_prog = triton.cdiv(s, rows_per_prog)
        offsets = dummy
    else:  # one program per group: each group's first row in the sorted ids (searchsorted: no host sync, unlike bincount)
        n_prog, rows_per_prog = n_groups, 0
        bounds = torch.arange(n_groups + 1, device=x.device, dtype=groups.dtype)
        offsets = torch.searchsorted(groups.reshape(-1).contiguous(), bounds).to(torch.int32)
    out = torch.empty((3, n_prog, c), dtype=torch.float32, device=x.device)
    # Triton launches on the current device and stream: on x's (a model split over GPUs calls this for any).
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _column_stats_kernel[(n_cblocks, n_prog)](
            x, rows if rows is not None else dummy, offsets, valid_u8 if valid_u8 is not None else dummy,
            out[0], out[1], out[2], nonfinite, s, c, x.stride(0), rows_per_prog, **flags)
    if groups is None:  # the chunks' partials added in a fixed order: the same input gives the same bits
        return out[0].amax(0, keepdim=True), out[1].sum(0, keepdim=True), out[2].sum(0, keepdim=True), nonfinite.long()
    return out[0], out[1], out[2], nonfinite.long()

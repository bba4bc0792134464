"""Streaming activation statistics that live on the measurement device.

Every update is a fixed sequence of tensor ops: no ``.item()``, no ``.cpu()``, no branch on a
tensor's value, so hooks never synchronise the GPU.  ``finalize`` moves everything to the host once.

Rows of an activation are *tokens*; the last dimension is channels.  Each update gets a
:class:`TokenInfo` telling, per token row, whether it is real (padding never counts), which corpus
sample and position it came from and its token id.

An update has two halves.  While the activation exists (in the hook): one pass over its rows (fused
kernel, or chunked torch) and the rows holding the largest |a| (top-k candidates).  Then
:func:`fold` turns those per-row results into the running statistics with batched ops; the
measurement defers it to the end of the batch (:class:`Deferred`), where every point with the same
token rows folds together and all state changes are committed at once.  On an H200 (Qwen3-8B shape,
every point and statistic) folding each point on its own cost about 0.05 of the bare forward's
throughput more than folding them together (``benchmarks/overhead.py``, variant ``immediate``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from maxact.measurement import kernels
from maxact.measurement.exactsum import dd_add, dd_add_foreach_

warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)

# The published files' histogram: 512 log-spaced bins over |a| in [1e-8, 1e8] (defined with the kernel).
HIST_BINS = kernels.HIST_BINS
HIST_LOG10_LO = kernels.HIST_LOG10_LO
HIST_LOG10_HI = kernels.HIST_LOG10_HI
# Sun et al. 2024 massive-activation criterion: |a| > 100 and |a| / median|a| of its token > 1000.
SUN_T_VAL = 100.0
SUN_T_RATIO = 1000.0
TOPK = 100
QUANTILES = {"abs_q25": 0.25, "abs_median": 0.5, "abs_q75": 0.75, "abs_q90": 0.90, "abs_q99": 0.99, "abs_q999": 0.999}
# Rows per update chunk are chosen so that a chunk holds at most this many elements.  On CPU a small
# chunk keeps the float32 temporaries in the L2 cache and out of fresh (page-faulting) allocations:
# on [3072, 2048] with 20% padding rows, 2-core Xeon, one update with everything on took 230 ms in
# chunks of 2**26 elements and 120-150 ms in chunks of 2**18 (benchmarks/profile_stats.py --device cpu).
_CHUNK_ELEMENTS = 1 << 26
_CHUNK_ELEMENTS_CPU = 1 << 18
# torch.compile fuses the elementwise passes into a few kernels on CUDA (set MAXACT_COMPILE=0 to disable).
_COMPILE = os.environ.get("MAXACT_COMPILE", "1") != "0"


def _row_lower_median(a: torch.Tensor, k: int) -> torch.Tensor:
    """k-th smallest per row. On CPU numpy's introselect is ~10x faster than torch.kthvalue (same values)."""
    if a.is_cuda:
        return a.kthvalue(k, dim=-1).values.float()
    import numpy as np

    arr = a.float().numpy()
    return torch.from_numpy(np.ascontiguousarray(np.partition(arr, k - 1, axis=-1)[:, k - 1]))


def _fused_partials(x: torch.Tensor, tok_valid: torch.Tensor, full: bool):
    """Per-chunk partial sums and per-token extremes of a [rows, channels] activation.

    Returns (n_nan, n_inf, count, sum, sumsq, abs_sum, token_max, token_min, n_zero, log10|a| for
    the histogram (out-of-range marker where excluded), |a| (zero where excluded)).
    """
    in_dtype = x.dtype
    x = x.float()
    tv = tok_valid[:, None]
    finite = torch.isfinite(x)
    valid = finite & tv
    n_nan = (torch.isnan(x) & tv).sum()
    n_inf = (~finite & tv).sum() - n_nan
    count = valid.sum()
    xz = torch.where(valid, x, 0.0)
    a = xz.abs()
    # Row sums in float32 (a row is at most a few ten-thousand channels), accumulated in float64.
    s1 = xz.sum(-1).sum(dtype=torch.float64)
    s2 = xz.square().sum(-1).sum(dtype=torch.float64)
    sa = a.sum(-1).sum(dtype=torch.float64)
    tmax = torch.where(valid, x, -math.inf).amax(-1)
    tmin = torch.where(valid, x, math.inf).amin(-1)
    if not full:
        return n_nan, n_inf, count, s1, s2, sa, tmax, tmin, None, None, None
    n_zero = (valid & (a == 0)).sum()
    # Out-of-range magnitudes go to the end bins (as in the published histogram); excluded elements
    # are pushed outside histc's range so they are not counted.
    la = torch.log10(a.clamp_min(1e-30)).clamp(HIST_LOG10_LO, HIST_LOG10_HI - 1e-6)
    la = torch.where(valid & (a > 0), la, HIST_LOG10_HI + 100.0)
    # |a| in the activation's own dtype (exact for bf16/fp16) halves the median's memory traffic.
    return n_nan, n_inf, count, s1, s2, sa, tmax, tmin, n_zero, la, a.to(in_dtype)


_fused_partials_compiled = torch.compile(_fused_partials, dynamic=True) if hasattr(torch, "compile") else _fused_partials


def _cpu_partials(x: torch.Tensor, full: bool):
    """:func:`_fused_partials` for the CPU on real rows only (padding removed beforehand): no per-element
    validity masks, and the NaN/Inf-aware extremes only for the (usually no) rows that hold a non-finite
    value.  Same outputs; the host has no device to synchronise, so row selection by value is free."""
    in_dtype = x.dtype
    x = x.float()
    c = x.shape[-1]
    finite = torch.isfinite(x)
    fin_rows = finite.sum(-1)
    count = fin_rows.sum()
    n_nan = torch.isnan(x).sum()
    n_inf = (x.numel() - count) - n_nan
    xz = torch.where(finite, x, 0.0)
    s1 = xz.sum(-1).sum(dtype=torch.float64)
    s2 = torch.linalg.vecdot(xz, xz).sum(dtype=torch.float64)
    a = xz.abs()
    sa = a.sum(-1).sum(dtype=torch.float64)
    tmax, tmin = x.amax(-1), x.amin(-1)
    bad = (fin_rows != c).nonzero().flatten()
    xb, fb = x.index_select(0, bad), finite.index_select(0, bad)
    tmax.index_copy_(0, bad, torch.where(fb, xb, -math.inf).amax(-1))
    tmin.index_copy_(0, bad, torch.where(fb, xb, math.inf).amin(-1))
    if not full:
        return n_nan, n_inf, count, s1, s2, sa, tmax, tmin, None, None, None
    n_zero = (a == 0).sum() - (x.numel() - count)  # zeros among the finite values
    la = torch.log10(a.clamp_min(1e-30)).clamp_(HIST_LOG10_LO, HIST_LOG10_HI - 1e-6)
    la = torch.where(a > 0, la, HIST_LOG10_HI + 100.0)  # zeros and non-finite values are not counted
    return n_nan, n_inf, count, s1, s2, sa, tmax, tmin, n_zero, la, a.to(in_dtype)


def _cat(parts: list, like: torch.Tensor) -> torch.Tensor:
    if not parts:  # no real row at all
        return torch.empty(0, dtype=torch.float32, device=like.device)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@dataclass
class TokenInfo:
    """Per-token-row facts for one activation, flattened to ``[N]``.

    The optional layout fields let the per-sample extremes be plain reductions instead of scattered
    atomics (``index_reduce_`` serialises on the GPU when thousands of rows share a sample):
    ``batch_shape`` (B, T) with ``batch_samples`` [B] (distinct) says the rows are a [B, T] batch,
    or, with ``rows`` [N], the real tokens of one packed at those flat row indices;
    ``unknown_origin`` marks rows that are routed copies of tokens (all in the 'unknown' slot).
    """

    valid: torch.Tensor  # bool [N]
    sample: torch.Tensor  # int64 [N]: row in the per-sample table (n_samples = 'unknown')
    position: torch.Tensor  # int64 [N]
    token_id: torch.Tensor  # int64 [N], -1 where unknown
    batch_shape: tuple[int, int] | None = None
    batch_samples: torch.Tensor | None = None  # int64 [B], distinct
    rows: torch.Tensor | None = None  # int64 [N]: flat index in the [B * T] batch of each row
    unknown_origin: bool = False

    def to(self, device) -> "TokenInfo":
        def mv(t):
            return t.to(device, non_blocking=True) if t is not None else None

        return TokenInfo(mv(self.valid), mv(self.sample), mv(self.position), mv(self.token_id), self.batch_shape,
                         mv(self.batch_samples), mv(self.rows), self.unknown_origin)


class PointStats:
    """All statistics of one hook point.

    ``full`` adds the |a| histogram (quantiles) and the Sun et al. per-token criterion; the basic
    set (count, mean, std, rms, abs_mean, max, min, NaN/Inf, per-sample extremes, top-k and peak
    provenance) is always on.
    """

    def __init__(self, name: str, n_samples: int, device, full: bool = True, topk: int = TOPK):
        self.name = name
        self.full = full
        self.topk = topk
        self.n_samples = n_samples
        dev = torch.device(device)
        self.device = dev
        f64 = dict(dtype=torch.float64, device=dev)
        i64 = dict(dtype=torch.int64, device=dev)
        f32 = dict(dtype=torch.float32, device=dev)
        self.count = torch.zeros((), **i64)
        self.n_nan = torch.zeros((), **i64)
        self.n_inf = torch.zeros((), **i64)
        self.sum = torch.zeros((), **f64)
        self.sumsq = torch.zeros((), **f64)
        self.abs_sum = torch.zeros((), **f64)
        # The float64 sums' low words (maxact.measurement.exactsum): their order of addition does not change them.
        self.sum_lo, self.sumsq_lo, self.abs_sum_lo = (torch.zeros((), **f64) for _ in range(3))
        self.max = torch.full((), -math.inf, **f32)
        self.min = torch.full((), math.inf, **f32)
        # One extra slot for rows whose sample is unknown (expert-internal rows).
        self.sample_max = torch.full((n_samples + 1,), -math.inf, **f32)
        self.sample_min = torch.full((n_samples + 1,), math.inf, **f32)
        # Top-k |a| over everything seen: value (signed), sample, position, token id, channel.
        self.top_abs = torch.full((topk,), -1.0, **f32)
        self.top_val = torch.zeros((topk,), **f32)
        self.top_loc = torch.full((topk, 4), -1, **i64)
        self.top_median = torch.zeros((topk,), **f32)  # median |a| of the token holding each top value
        self.n_tokens = torch.zeros((), **i64)
        if full:
            self.hist = torch.zeros((HIST_BINS,), **i64)
            self.n_zero = torch.zeros((), **i64)
            self.sun_n_pass = torch.zeros((), **i64)
            self.sun_n_ratio = torch.zeros((), **i64)
            self.sun_ratio_sum = torch.zeros((), **f64)
            self.sun_ratio_sumsq = torch.zeros((), **f64)
            self.sun_ratio_sum_lo, self.sun_ratio_sumsq_lo = torch.zeros((), **f64), torch.zeros((), **f64)
            self.sun_max_ratio = torch.full((), -1.0, **f32)
            self.sun_max_ratio_abs = torch.zeros((), **f32)
            self.sun_max_ratio_median = torch.zeros((), **f32)

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, x: torch.Tensor, info: TokenInfo, defer: "Deferred | None" = None) -> None:
        """Fold one activation ``[..., C]`` into the statistics.

        The per-row pass (fused kernel, or chunked torch on CPU) and the top-k candidate rows run now,
        while ``x`` exists; the rest (totals, extremes, per-sample table, Sun criterion, top-k merge) is a
        :class:`RowUpdate` folded by :func:`fold` -- at once, or with ``defer`` at the end of the batch
        together with every other point that has the same token rows (one set of batched ops instead of
        about 80 small ones per point).
        """
        if x.device != self.device:  # e.g. state restored onto another GPU than this layer's
            self.device = x.device
            self.load_state_dict(self.state_dict())
        c = x.shape[-1]
        x = x.reshape(-1, c)
        n = x.shape[0]
        tok_valid = info.valid.reshape(n)
        # The fused kernels (CUDA or Triton) on CUDA; MAXACT_TRITON=0 or MAXACT_KERNEL=torch: the torch path below.
        if kernels.fused_enabled() and x.is_cuda and kernels.fused_available(x):
            # One fused kernel reads each row once (see maxact.measurement.kernels).
            hist = torch.zeros_like(self.hist) if self.full else None  # added to self.hist at the commit
            r = kernels.row_stats(x, tok_valid, hist, want_median=self.full)
            u = self._row_update(x, tok_valid, r["max"], r["min"], r.get("median"), info,
                                 sums=r["sums_block"], counts=r["counts_block"], hist=hist)
        else:
            u = self._update_unfused(x, tok_valid, info)
        if defer is not None:
            defer.add(self, u)
        else:
            fold([self], [u])

    def _update_unfused(self, x: torch.Tensor, tok_valid: torch.Tensor, info: TokenInfo) -> "RowUpdate":
        n, c = x.shape
        # Row chunks bound the float32 temporaries (memory stays near the bare forward's).
        rows = max(1, (_CHUNK_ELEMENTS if x.is_cuda else _CHUNK_ELEMENTS_CPU) // c)
        tmax_parts, tmin_parts, med_parts = [], [], []
        tot = [0] * 7  # nan, inf, count, sum, sumsq, abssum, zero: committed with the rest (fold)
        hist = torch.zeros_like(self.hist) if self.full else None
        real_rows = None
        if not x.is_cuda:  # CPU: statistics of the real rows only; padding rows get -inf/+inf/0 below
            real_rows = tok_valid.nonzero().flatten()
            x_all, x = x, x.index_select(0, real_rows)
            n = x.shape[0]
        partials = (_fused_partials_compiled if _COMPILE else _fused_partials) if x.is_cuda else None
        for start in range(0, n, rows):
            xc, vc = x[start : start + rows], tok_valid[start : start + rows]
            if partials is None:
                n_nan, n_inf, count, s1, s2, sa, tmax, tmin, n_zero, la, a = _cpu_partials(xc, self.full)
            else:
                n_nan, n_inf, count, s1, s2, sa, tmax, tmin, n_zero, la, a = partials(xc, vc, self.full)
            for j, v in enumerate((n_nan, n_inf, count, s1, s2, sa) + ((n_zero,) if self.full else ())):
                tot[j] = tot[j] + v
            tmax_parts.append(tmax)
            tmin_parts.append(tmin)
            if self.full:
                kernels.histc_accumulate(hist, la)
                # Lower median over channels (torch.median's convention); padding rows are all-zero.
                med_parts.append(_row_lower_median(a, (c + 1) // 2))
        tmax = _cat(tmax_parts, x)
        tmin = _cat(tmin_parts, x)
        med = _cat(med_parts, x) if self.full else None
        if real_rows is not None:  # back to every row: padding rows are -inf / +inf / median 0
            x = x_all
            n_all = x.shape[0]
            tmax = tmax.new_full((n_all,), -math.inf).index_copy_(0, real_rows, tmax)
            tmin = tmin.new_full((n_all,), math.inf).index_copy_(0, real_rows, tmin)
            med = med.new_zeros((n_all,)).index_copy_(0, real_rows, med) if med is not None else None
        dev = x.device
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=dev) for v in tot[3:6]])
        counts = torch.stack([torch.as_tensor(v, dtype=torch.int64, device=dev) for v in (tot[2], tot[0], tot[1], tot[6])])
        return self._row_update(x, tok_valid, tmax, tmin, med, info, sums=sums, counts=counts, hist=hist)

    def _row_update(self, x, tok_valid, tmax, tmin, med, info: TokenInfo, sums, counts, hist=None) -> "RowUpdate":
        # The top-k elements lie in the top-k tokens by token max |a|: keep only those rows of x.
        tabs = torch.maximum(tmax, -tmin)  # -inf for padding rows
        kt = min(self.topk, x.shape[0])
        tok_rank = tabs.topk(kt).indices  # [kt]
        return RowUpdate(tmax, tmin, med if self.full else None, tok_rank, x.index_select(0, tok_rank), info,
                         sums, counts, hist)

    # ---------------------------------------------------------------- merge (shards)
    #: How each statistic of two disjoint parts of a corpus combines into the statistic of the whole.
    MERGE: ClassVar[dict[str, str]] = {
        "count": "add", "n_nan": "add", "n_inf": "add", "sum": "add", "sumsq": "add", "abs_sum": "add", "n_tokens": "add",
        "max": "max", "min": "min", "sample_max": "max", "sample_min": "min", "hist": "add", "n_zero": "add",
        "sun_n_pass": "add", "sun_n_ratio": "add", "sun_ratio_sum": "add", "sun_ratio_sumsq": "add",
        **{f"{k}_lo": "low word" for k in ("sum", "sumsq", "abs_sum", "sun_ratio_sum", "sun_ratio_sumsq")},
    }

    @classmethod
    def merge_states(cls, states: list[dict[str, torch.Tensor]], topk: int) -> dict[str, torch.Tensor]:
        """The state of the whole corpus from the states of its parts, ``states`` in batch order (shard 1 first).

        Counts, sums and histograms add; extremes and per-sample extremes take the max/min; the top-k is merged by
        :func:`fold`'s own rule (|a| descending, exact ties to the smallest sample, position, channel), so it is the
        top-k of the whole; the Sun criterion's largest ratio keeps the earliest part holding it, as a run over the
        batches in order does (a later batch replaces it only when strictly larger)."""
        out: dict[str, torch.Tensor] = {}
        for key in states[0]:
            rule = cls.MERGE.get(key)
            if rule == "add" and f"{key}_lo" in states[0]:  # float64 sums: exactly (double-double, exactsum)
                hi, lo = states[0][key].clone(), states[0][f"{key}_lo"].clone()
                for s in states[1:]:
                    hi, lo = dd_add(hi, lo, s[key], s[f"{key}_lo"])
                out[key], out[f"{key}_lo"] = hi, lo
            elif rule == "add":  # integers exactly
                out[key] = states[0][key].clone()
                for s in states[1:]:
                    out[key] = out[key] + s[key]
            elif rule == "low word":  # set with its sum
                continue
            elif rule == "max":
                out[key] = torch.stack([s[key] for s in states]).amax(0)
            elif rule == "min":
                out[key] = torch.stack([s[key] for s in states]).amin(0)
        all_abs = torch.cat([s["top_abs"] for s in states])[None]
        all_loc = torch.cat([s["top_loc"] for s in states])[None]
        loc_key = (all_loc[..., 0] * (1 << 21) + all_loc[..., 1]) * (1 << 21) + all_loc[..., 3]
        by_loc = loc_key.argsort(dim=1, stable=True)
        keep = by_loc.gather(1, (-all_abs.gather(1, by_loc)).argsort(dim=1, stable=True)[:, :topk])[0]
        out["top_abs"] = all_abs[0][keep]
        out["top_loc"] = all_loc[0][keep]
        out["top_val"] = torch.cat([s["top_val"] for s in states])[keep]
        out["top_median"] = torch.cat([s["top_median"] for s in states])[keep]
        if "sun_max_ratio" in states[0]:
            best = states[0]
            for s in states[1:]:
                if s["sun_max_ratio"] > best["sun_max_ratio"]:
                    best = s
            for k in ("sun_max_ratio", "sun_max_ratio_abs", "sun_max_ratio_median"):
                out[k] = best[k].clone()
        missing = set(states[0]) - set(out)
        if missing:
            raise ValueError(f"no merge rule for statistic(s) {sorted(missing)} of point {cls.__name__}")
        return out

    # ---------------------------------------------------------------- finalize
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.device))

    def finalize(self, state: dict[str, torch.Tensor] | None = None) -> dict:
        """Host-side summary in the published files' key names (plus extras).

        ``state``: this point's state already on the host (see ``Measurement.host_state``).
        """
        s = {k: v.detach().cpu() for k, v in (state or self.state_dict()).items()}
        n = int(s["count"])
        out: dict = {"count": float(n)}
        if n:
            mean = float(s["sum"]) / n
            ms = float(s["sumsq"]) / n
            out.update(
                mean=mean,
                std=math.sqrt(max(ms - mean * mean, 0.0)),
                abs_mean=float(s["abs_sum"]) / n,
                rms=math.sqrt(ms),
                max=float(s["max"]),
                min=float(s["min"]),
            )
        else:
            out.update(mean=None, std=None, abs_mean=None, rms=None, max=None, min=None)
        out["nan_count"] = float(s["n_nan"])
        out["inf_count"] = float(s["n_inf"])
        out["n_tokens"] = float(s["n_tokens"])
        keep = s["top_abs"] >= 0
        tops = [
            {"value": float(v), "sample": int(l[0]), "position": int(l[1]), "token_id": int(l[2]), "channel": int(l[3])}
            for v, l in zip(s["top_val"][keep], s["top_loc"][keep])
        ]
        out["top_abs"] = tops
        if self.full and n:
            tmed = float(s["top_median"][0]) if tops else 0.0
            peak_abs = float(s["top_abs"][0]) if tops else 0.0
            nr = int(s["sun_n_ratio"])
            rmean = float(s["sun_ratio_sum"]) / nr if nr else 0.0
            rvar = float(s["sun_ratio_sumsq"]) / nr - rmean * rmean if nr else 0.0
            out.update(
                sun_peak_abs=peak_abs,
                sun_peak_token_median=tmed,
                sun_peak_token_ratio=peak_abs / tmed if tmed > 0 else None,
                sun_max_ratio=float(s["sun_max_ratio"]) if nr else None,
                sun_max_ratio_abs=float(s["sun_max_ratio_abs"]),
                sun_max_ratio_median=float(s["sun_max_ratio_median"]),
                sun_mean_ratio=rmean,
                sun_std_ratio=math.sqrt(max(rvar, 0.0)),
                sun_n_tokens=float(s["n_tokens"]),
                sun_n_pass=float(s["sun_n_pass"]),
                sun_t_val=SUN_T_VAL,
                sun_t_ratio=SUN_T_RATIO,
            )
            out.update(hist_quantiles(s["hist"], int(s["n_zero"])))
            out["abs_hist_count"] = float(n)
            out["abs_hist_zero_frac"] = int(s["n_zero"]) / n
        return out

    def per_sample(self, state: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample signed max and min (``[n_samples]``; ±inf where a sample had no row here)."""
        s = state or self.state_dict()
        return s["sample_max"][:-1].detach().cpu(), s["sample_min"][:-1].detach().cpu()


@dataclass
class RowUpdate:
    """One point's per-row results for one activation, waiting to be folded into its statistics."""

    tmax: torch.Tensor  # float32 [N]: per-row max (-inf where padding or no finite value)
    tmin: torch.Tensor  # float32 [N]
    med: torch.Tensor | None  # float32 [N]: lower median |a| per row (points with the full set)
    tok_rank: torch.Tensor  # int64 [kt]: the rows with the largest max |a|
    rows: torch.Tensor  # [kt, C]: those rows of the activation
    info: TokenInfo
    sums: torch.Tensor  # sum, sumsq, abssum: float32 [3, M] partials (fused kernels) or float64 [3] totals
    counts: torch.Tensor  # count, nan, inf, zero: int32 [4, M] partials or int64 [4] totals
    hist: torch.Tensor | None = None  # int64 [512]: this activation's |a| histogram (full points)


class Deferred:
    """The row updates of one batch, folded at its end: points with the same token rows together
    (:func:`fold`), and every state change in one commit after all of them are computed.  A batch that
    fails before or during the fold (out of memory) therefore changes no statistic: nothing to undo.

    A point updated more than once in a batch (a module called again, e.g. an expert activation run
    once per expert) has its updates concatenated row-wise (:func:`merge_updates`) and folded once.
    """

    def __init__(self):
        self.pending: dict = {}  # id(point) -> (point, RowUpdate)
        self.after: list = []  # other state changes of the batch (e.g. expert routing counts)

    def add(self, ps: PointStats, u: RowUpdate) -> None:
        prev = self.pending.get(id(ps))
        self.pending[id(ps)] = (ps, u if prev is None else merge_updates(prev[1], u))

    def flush(self) -> None:
        pending, after, self.pending, self.after = self.pending, self.after, {}, []
        groups: dict = {}
        for ps, u in pending.values():
            key = (id(u.info), u.rows.shape[-1], u.rows.dtype, ps.full, ps.topk, u.sums.dim())
            grp = groups.setdefault(key, ([], []))
            grp[0].append(ps)
            grp[1].append(u)
        writes: list = []
        for points, updates in groups.values():
            writes += fold(points, updates, apply=False)
        commit(writes)
        for fn in after:
            fn()


def merge_updates(a: RowUpdate, b: RowUpdate) -> RowUpdate:
    """One update holding the rows of both (same point, same batch): rows concatenated, the token facts
    too (per-sample extremes then by sample index), top-k candidate rows of both, partials joined."""
    n_a = a.tmax.numel()

    def cat(x, y):
        return torch.cat([x.reshape(-1), y.reshape(-1)])

    info = TokenInfo(cat(a.info.valid, b.info.valid), cat(a.info.sample, b.info.sample),
                     cat(a.info.position, b.info.position), cat(a.info.token_id, b.info.token_id),
                     unknown_origin=a.info.unknown_origin and b.info.unknown_origin)

    def totals(t, dtype):
        return t.sum(-1, dtype=dtype) if t.dim() == 2 else t

    if a.sums.dim() == 2 and b.sums.dim() == 2:  # per-row partials of both: keep them per row
        sums, counts = torch.cat([a.sums, b.sums], 1), torch.cat([a.counts, b.counts], 1)
    else:
        sums = totals(a.sums, torch.float64) + totals(b.sums, torch.float64)
        counts = totals(a.counts, torch.int64) + totals(b.counts, torch.int64)
    return RowUpdate(
        torch.cat([a.tmax, b.tmax]), torch.cat([a.tmin, b.tmin]),
        torch.cat([a.med, b.med]) if a.med is not None else None,
        torch.cat([a.tok_rank, b.tok_rank + n_a]), torch.cat([a.rows, b.rows]), info, sums, counts,
        a.hist + b.hist if a.hist is not None else None,
    )


def _stacked(points, name: str) -> torch.Tensor:
    return torch.stack([getattr(p, name) for p in points])


def commit(writes: list) -> None:
    """Apply ``(points, state name, op, [P, ...] values)`` in place, one multi-tensor op each (float64 sums: a few,
    as double-double with their low words, so that shards merge to the unsharded sums bit for bit)."""
    for points, name, op, new in writes:
        dst, src = [getattr(p, name) for p in points], list(new.unbind(0))
        if op == "add" and new.dtype == torch.float64:
            dd_add_foreach_(dst, [getattr(p, f"{name}_lo") for p in points], src)
        elif op == "add":
            torch._foreach_add_(dst, src)
        else:
            torch._foreach_copy_(dst, src)


@torch.no_grad()
def fold(points: list[PointStats], updates: list[RowUpdate], apply: bool = True) -> list:
    """Fold the row updates of P points that share their token rows (same TokenInfo, same width) into
    their statistics with batched ops over ``[P, N]``: totals, histogram, signed extremes, per-sample
    extremes, token count, the Sun et al. criterion and the top-k merge.  No host synchronisation.

    With ``apply=False`` nothing is changed: the state writes are returned for :func:`commit`.
    """
    u0 = updates[0]
    info = u0.info
    p_n = len(points)
    tv = info.valid.reshape(-1)
    full = points[0].full
    writes: list = []
    sums = torch.stack([u.sums for u in updates])
    counts = torch.stack([u.counts for u in updates])
    if sums.dim() == 3:  # fused kernels' per-row partials: totalled here in two reductions
        sums, counts = sums.sum(-1, dtype=torch.float64), counts.sum(-1)
    for j, name in enumerate(("sum", "sumsq", "abs_sum")):
        writes.append((points, name, "add", sums[:, j]))
    for j, name in enumerate(("count", "n_nan", "n_inf") + (("n_zero",) if full else ())):
        writes.append((points, name, "add", counts[:, j]))
    if full:
        writes.append((points, "hist", "add", torch.stack([u.hist for u in updates])))
    tmax = torch.stack([u.tmax for u in updates])  # [P, N]
    tmin = torch.stack([u.tmin for u in updates])
    # Token-level signed extremes; every other extreme derives from these.
    gmax, gmin = tmax.amax(1), tmin.amin(1)
    writes.append((points, "max", "copy", torch.maximum(_stacked(points, "max"), gmax)))
    writes.append((points, "min", "copy", torch.minimum(_stacked(points, "min"), gmin)))
    writes += _fold_per_sample(points, tmax, tmin, gmax, gmin, info)
    writes.append((points, "n_tokens", "add", tv.sum().expand(p_n)))
    med = torch.stack([u.med for u in updates]) if full else None
    if full:
        writes += _fold_sun(points, torch.maximum(tmax, -tmin), med, tv)
    writes += _fold_topk(points, updates, med, info)
    if apply:
        commit(writes)
        return []
    return writes


def _fold_per_sample(points, tmax, tmin, gmax, gmin, info: TokenInfo) -> list:
    smax, smin = _stacked(points, "sample_max"), _stacked(points, "sample_min")  # [P, S+1]
    if info.unknown_origin:
        smax[:, -1] = torch.maximum(smax[:, -1], gmax)
        smin[:, -1] = torch.minimum(smin[:, -1], gmin)
    elif info.batch_shape is None or info.batch_samples is None:
        smax.index_reduce_(1, info.sample, tmax, "amax")
        smin.index_reduce_(1, info.sample, tmin, "amin")
    else:
        b, t = info.batch_shape
        p_n = tmax.shape[0]
        if info.rows is not None:  # packed real tokens: back to their [B, T] places (padding: -inf/+inf)
            tmax = tmax.new_full((p_n, b * t), -math.inf).index_copy_(1, info.rows, tmax)
            tmin = tmin.new_full((p_n, b * t), math.inf).index_copy_(1, info.rows, tmin)
        idx = info.batch_samples
        # One reduction per batch row; the rows are distinct samples, so the write has no conflicts.
        smax[:, idx] = torch.maximum(smax[:, idx], tmax.view(p_n, b, t).amax(2))
        smin[:, idx] = torch.minimum(smin[:, idx], tmin.view(p_n, b, t).amin(2))
    return [(points, "sample_max", "copy", smax), (points, "sample_min", "copy", smin)]


def _fold_sun(points, tabs, med, tv) -> list:
    has_ratio = tv & (med > 0)
    ratio = torch.where(has_ratio, tabs / torch.where(has_ratio, med, 1.0), 0.0)
    passed = tv & (tabs > SUN_T_VAL) & (ratio > SUN_T_RATIO)
    r = torch.where(has_ratio, ratio, -1.0)
    i = r.argmax(1, keepdim=True)
    ri, ti, mi = (v.gather(1, i)[:, 0] for v in (r, tabs, med))
    old = _stacked(points, "sun_max_ratio")
    better = ri > old
    return [
        (points, "sun_n_ratio", "add", has_ratio.sum(1)),
        (points, "sun_ratio_sum", "add", ratio.sum(1, dtype=torch.float64)),
        (points, "sun_ratio_sumsq", "add", ratio.double().square().sum(1)),
        (points, "sun_n_pass", "add", passed.sum(1)),
        (points, "sun_max_ratio", "copy", torch.where(better, ri, old)),
        (points, "sun_max_ratio_abs", "copy", torch.where(better, ti, _stacked(points, "sun_max_ratio_abs"))),
        (points, "sun_max_ratio_median", "copy", torch.where(better, mi, _stacked(points, "sun_max_ratio_median"))),
    ]


def _fold_topk(points, updates, med, info: TokenInfo) -> list:
    p_n = len(points)
    k = points[0].topk
    tok_rank = torch.stack([u.tok_rank for u in updates])  # [P, kt]
    xr = torch.stack([u.rows for u in updates]).float()  # [P, kt, C]
    kt, c = xr.shape[1], xr.shape[2]
    rows_valid = info.valid.reshape(-1)[tok_rank][:, :, None] & torch.isfinite(xr)
    rows_abs = torch.where(rows_valid, xr.abs(), -1.0).reshape(p_n, kt * c)
    ke = min(k, kt * c)
    cand_abs, flat = rows_abs.topk(ke, dim=1)  # [P, ke]
    row = tok_rank.gather(1, flat // c)
    chan = flat % c
    cand_val = xr.reshape(p_n, kt * c).gather(1, flat)
    cand_loc = torch.stack([info.sample[row], info.position[row], info.token_id[row], chan], dim=2)  # [P, ke, 4]
    cand_med = med.gather(1, row) if med is not None else torch.zeros_like(cand_abs)
    all_abs = torch.cat([_stacked(points, "top_abs"), cand_abs], 1)
    all_loc = torch.cat([_stacked(points, "top_loc"), cand_loc], 1)
    # Ties in |a| (common in bf16) go to the smallest (sample, position, channel), so the peak's
    # location does not depend on batching.
    loc_key = (all_loc[..., 0] * (1 << 21) + all_loc[..., 1]) * (1 << 21) + all_loc[..., 3]
    by_loc = loc_key.argsort(dim=1, stable=True)
    keep = by_loc.gather(1, (-all_abs.gather(1, by_loc)).argsort(dim=1, stable=True)[:, :k])
    return [
        (points, "top_abs", "copy", all_abs.gather(1, keep)),
        (points, "top_val", "copy", torch.cat([_stacked(points, "top_val"), cand_val], 1).gather(1, keep)),
        (points, "top_loc", "copy", all_loc.gather(1, keep[..., None].expand(-1, -1, 4))),
        (points, "top_median", "copy", torch.cat([_stacked(points, "top_median"), cand_med], 1).gather(1, keep)),
    ]


def hist_edges() -> torch.Tensor:
    return torch.logspace(HIST_LOG10_LO, HIST_LOG10_HI, HIST_BINS + 1, dtype=torch.float64)


def hist_quantiles(hist: torch.Tensor, n_zero: int) -> dict[str, float]:
    """|a| quantiles from the log histogram (exact zeros counted apart), log-linear within a bin."""
    counts = hist.double()
    total = float(counts.sum()) + n_zero
    out = {}
    if total <= 0:
        return {k: None for k in QUANTILES}
    edges = hist_edges()
    cum = torch.cumsum(counts, 0) + n_zero
    for key, q in QUANTILES.items():
        target = q * total
        if target <= n_zero:
            out[key] = 0.0
            continue
        b = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)).clamp(max=HIST_BINS - 1))
        before = float(cum[b - 1]) if b > 0 else float(n_zero)
        frac = (target - before) / float(counts[b]) if counts[b] > 0 else 0.0
        lo, hi = math.log10(float(edges[b])), math.log10(float(edges[b + 1]))
        out[key] = 10 ** (lo + frac * (hi - lo))
    return out

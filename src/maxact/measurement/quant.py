"""The paper's INT-8 sanity check, plus per-channel and per-token scaling as mitigations.

Symmetric INT-8 of the hidden state at the checkpoint's peak layer.  Per-tensor thresholds come
from calibration samples by two policies, ``max_abs`` (largest |a|) and ``clip_q0.999`` (the 0.999
quantile of |a|); errors are measured on held-out samples.

Two definitions (``int8.definition``):

- ``paper``: the paper's ``quant_sanity_check.py`` (public repository clx1415926/Max_act_llm), point by point:
  the quantile threshold is the lower edge of the bin holding the value ranked ceil(q n) in a 2,048-bin histogram
  over [0, calibration max] (a second calibration pass); the value is clamped to the threshold, rounded, then
  clamped to +-127; squared and absolute errors and clip counts are summed over all evaluation tokens and one
  ratio is formed per metric (SQNR is the dB of the pooled ratio). Its float32 operations are the paper's, in its
  order, so that the numbers match the paper's script on the same samples.
- ``exact``: the exact order statistic for the quantile, round then clamp, and metrics averaged over evaluation
  samples (each sample weighs the same; SQNR is a mean of dB values).

Either way the samples are a seeded shuffle of the corpus (the paper took the first and the next lines of its
own data file, whose order is not published).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch

QMAX = 127
POLICIES = ("max_abs", "clip_q0.999", "per_channel", "per_token")


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric INT-8 quantize-dequantize with (broadcastable) ``scale`` = threshold / 127."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).clamp_min(torch.finfo(x.dtype).tiny)
    return torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale


def error_metrics(x: torch.Tensor, xq: torch.Tensor, threshold: torch.Tensor) -> dict[str, float]:
    x = x.double()
    err = x - xq.double()
    sig = x.square().sum()
    noise = err.square().sum()
    sqnr = 10 * math.log10(float(sig) / float(noise)) if float(noise) > 0 else math.inf
    return {
        "sqnr_db": sqnr,
        "rel_rmse": math.sqrt(float(noise) / float(sig)) if float(sig) > 0 else 0.0,
        "rel_mae": float(err.abs().mean() / x.abs().mean()) if float(x.abs().mean()) > 0 else 0.0,
        "clip_rate": float((x.abs() > torch.as_tensor(threshold, dtype=torch.float64, device=x.device)).double().mean()),
    }


class Calibration:
    """Streaming thresholds over calibration activations ``[tokens, channels]``."""

    def __init__(self, total_elements: int, q: float = 0.999):
        self.q = q
        self.total = total_elements
        # The 0.999 quantile is an upper order statistic: keeping the k largest |a| gives it exactly.
        self.k = max(1, total_elements - math.ceil(q * total_elements) + 1)
        self.top: torch.Tensor | None = None
        self.max_abs = None
        self.channel_max = None
        self.seen = 0

    def update(self, x: torch.Tensor) -> None:
        a = x.float().abs()
        self.seen += a.numel()
        m = a.amax()
        cm = a.amax(0)
        self.max_abs = m if self.max_abs is None else torch.maximum(self.max_abs, m)
        self.channel_max = cm if self.channel_max is None else torch.maximum(self.channel_max, cm)
        flat = a.reshape(-1)
        cand = flat.topk(min(self.k, flat.numel())).values
        self.top = cand if self.top is None else torch.cat([self.top, cand]).topk(min(self.k, self.top.numel() + cand.numel())).values

    def thresholds(self) -> dict[str, torch.Tensor]:
        k = min(self.k, self.top.numel())
        return {
            "max_abs": self.max_abs,
            "clip_q0.999": self.top[k - 1],
            "per_channel": self.channel_max,
        }


def quantize_policy(x: torch.Tensor, policy: str, thr: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (dequantized x, the threshold(s) used)."""
    x = x.float()
    if policy in ("max_abs", "clip_q0.999"):
        t = thr[policy]
    elif policy == "per_channel":
        t = thr["per_channel"][None, :]
    elif policy == "per_token":
        t = x.abs().amax(-1, keepdim=True)
    else:
        raise ValueError(f"unknown INT-8 policy {policy!r}; known: {POLICIES}")
    return fake_quant(x, t / QMAX), t


def split_samples(n: int, n_calib: int, n_eval: int, seed: int = 0) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    if n < 2:
        raise ValueError("the INT-8 check needs at least 2 samples (calibration and evaluation)")
    n_calib = min(n_calib, max(1, n // 3))
    n_eval = min(n_eval, n - n_calib)
    return sorted(idx[:n_calib]), sorted(idx[n_calib : n_calib + n_eval])


def run_int8_check(
    capture: Callable[[Sequence[int]], list[torch.Tensor]],
    calib: Sequence[int],
    evals: Sequence[int],
    total_calib_elements: int,
    policies: Sequence[str] = POLICIES,
) -> dict:
    """``capture(indices)`` returns, per sample, the activation ``[real tokens, channels]``."""
    cal = Calibration(total_calib_elements)
    for x in capture(calib):
        cal.update(x)
    thr = cal.thresholds()
    per_policy: dict[str, list[dict]] = {p: [] for p in policies}
    for x in capture(evals):
        for p in policies:
            xq, t = quantize_policy(x, p, thr)
            per_policy[p].append(error_metrics(x, xq, t))
    out = {}
    for p, rows in per_policy.items():
        agg = {f"mean_{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        if p in ("max_abs", "clip_q0.999"):
            agg["threshold"] = float(thr[p])
        out[p] = agg
    return {"policies": out, "calibration_max_abs": float(thr["max_abs"]), "n_calib": len(calib), "n_eval": len(evals)}


# --------------------------------------------------------------------------- the paper's definition

DEFINITIONS = ("paper", "exact")
DEFINITION_NOTES = {
    "paper": "the paper's quant_sanity_check.py: 2,048-bin histogram quantile (lower bin edge), clamp-round-clamp, "
             "errors pooled over all evaluation tokens",
    "exact": "exact order-statistic quantile, round then clamp, metrics averaged over evaluation samples",
}
PAPER_BINS = 2048
PAPER_Q = 0.999


def paper_histogram_threshold(hist: torch.Tensor, upper: float, q: float = PAPER_Q) -> float:
    """The paper's quantile: the lower edge of the bin holding the value ranked ceil(q n) (HistCollector.quantiles)."""
    bins = hist.numel()
    total = int(hist.sum().item())
    target = max(1, math.ceil(q * total))
    idx = int(torch.searchsorted(torch.cumsum(hist, dim=0), torch.tensor(target)).item())
    return upper * idx / max(1, bins - 1)


def paper_histogram(vals: torch.Tensor, upper: float, bins: int = PAPER_BINS) -> torch.Tensor:
    """Counts of |a| (float32, flat) in ``bins`` bins over [0, upper], the paper's bin rule (HistCollector._add)."""
    idx = torch.clamp((vals / upper * (bins - 1)).floor().long(), 0, bins - 1)
    return torch.bincount(idx.cpu(), minlength=bins).to(torch.int64)


class PooledErrors:
    """Sums over every evaluation value of one policy (the paper's ErrorCollector); the ratios at the end."""

    KEYS = ("count", "sum_abs", "sum_sq", "err_abs", "err_sq", "clipped")

    def __init__(self):
        self.s = dict.fromkeys(self.KEYS, 0.0)

    def add(self, vals: torch.Tensor, dequant: torch.Tensor, threshold) -> None:
        err = dequant - vals
        self.s["count"] += vals.numel()
        self.s["sum_abs"] += float(vals.abs().sum().item())
        self.s["sum_sq"] += float((vals * vals).sum().item())
        self.s["err_abs"] += float(err.abs().sum().item())
        self.s["err_sq"] += float((err * err).sum().item())
        self.s["clipped"] += int((vals.abs() > threshold).sum().item())

    def metrics(self) -> dict:
        s = self.s
        count = max(1, int(s["count"]))
        rms = math.sqrt(s["sum_sq"] / count) if s["sum_sq"] > 0 else 0.0
        rmse, mae, abs_mean = math.sqrt(s["err_sq"] / count), s["err_abs"] / count, s["sum_abs"] / count
        sqnr = 10.0 * math.log10(s["sum_sq"] / s["err_sq"]) if s["err_sq"] > 0 and s["sum_sq"] > 0 else math.inf
        # The paper's summary weighs finite SQNR by the token count over its layers and counts an infinite one as 0
        # (no error at all): with one layer, mean_sqnr_db is the SQNR, or 0 where the error was exactly 0.
        return {"mean_sqnr_db": sqnr if math.isfinite(sqnr) else 0.0, "sqnr_db": sqnr,
                "mean_rel_rmse": rmse / rms if rms > 0 else 0.0, "mean_rel_mae": mae / abs_mean if abs_mean > 0 else 0.0,
                "mean_clip_rate": s["clipped"] / count, "count": int(s["count"]), "rmse": rmse, "mae": mae}


def paper_quantize(vals: torch.Tensor, threshold, qmax: int = QMAX) -> torch.Tensor:
    """Clamp to +-threshold, round, clamp to +-qmax, dequantize: the paper's order (a float or per-channel tensor)."""
    if isinstance(threshold, torch.Tensor):  # per channel or token; a zero threshold quantizes to 0
        positive = threshold > 0
        scale = torch.where(positive, threshold / qmax, torch.ones_like(threshold))
        q = torch.round(torch.clamp(vals, -threshold, threshold) / scale).clamp(-qmax, qmax) * scale
        return torch.where(positive, q, torch.zeros_like(q))
    scale = threshold / qmax
    return torch.round(vals.clamp(-threshold, threshold) / scale).clamp(-qmax, qmax) * scale


def run_int8_check_paper(capture: Callable[[Sequence[int]], list[torch.Tensor]], calib: Sequence[int], evals: Sequence[int],
                         policies: Sequence[str] = POLICIES, bins: int = PAPER_BINS, q: float = PAPER_Q) -> dict:
    """The paper's definition (module docstring). ``capture(indices)`` yields each sample's activation
    ``[real tokens, channels]``; the calibration samples are captured twice (max, then histogram)."""
    max_abs, channel_max = 0.0, None
    for x in capture(calib):
        a = x.float().abs()
        if a.numel():
            max_abs = max(max_abs, float(a.max().item()))
            cm = a.amax(0)
            channel_max = cm if channel_max is None else torch.maximum(channel_max, cm)
    hist = torch.zeros(bins, dtype=torch.int64)
    if max_abs > 0:
        for x in capture(calib):
            hist += paper_histogram(x.float().abs().reshape(-1), max_abs, bins)
    thr = {"max_abs": max_abs, "clip_q0.999": paper_histogram_threshold(hist, max_abs, q) if max_abs > 0 else 0.0,
           "per_channel": channel_max}
    pooled = {p: PooledErrors() for p in policies}
    for x in capture(evals):
        x = x.float()
        vals = x.reshape(-1)
        for p in policies:
            if p in ("max_abs", "clip_q0.999"):
                if thr[p] <= 0:
                    continue  # the paper skips a policy with no positive threshold
                pooled[p].add(vals, paper_quantize(vals, thr[p]), thr[p])
            elif p == "per_channel":
                if thr["per_channel"] is None:
                    continue  # no calibration values at all
                pooled[p].add(x, paper_quantize(x, thr["per_channel"][None, :]), thr["per_channel"][None, :])
            elif p == "per_token":
                t = x.abs().amax(-1, keepdim=True)
                pooled[p].add(x, paper_quantize(x, t), t)
            else:
                raise ValueError(f"unknown INT-8 policy {p!r}; known: {POLICIES}")
    out = {}
    for p in policies:
        if pooled[p].s["count"] == 0:
            out[p] = {"undefined": "no positive threshold from the calibration samples (the paper's check skips it)"}
            continue
        out[p] = pooled[p].metrics()
        if p in ("max_abs", "clip_q0.999"):
            out[p]["threshold"] = float(thr[p])
    return {"policies": out, "calibration_max_abs": max_abs, "n_calib": len(calib), "n_eval": len(evals),
            "histogram_bins": bins, "quantile": q}

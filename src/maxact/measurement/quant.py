"""The paper's INT-8 sanity check, plus per-channel and per-token scaling as mitigations.

Symmetric INT-8 of the hidden state at the checkpoint's peak layer.  Per-tensor thresholds come
from calibration samples by two policies, ``max_abs`` (largest |a|) and ``clip_q0.999`` (the 0.999
quantile of |a|); errors are measured on held-out samples and averaged over them.
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

"""Float64 running sums kept as an unevaluated pair ``hi + lo`` (double-double), so that their order does not matter.

A sharded run adds the same per-batch float64 sums as the unsharded run, in another grouping: ((b1 + b2) + (b3 + b4))
instead of (((b1 + b2) + b3) + b4). Plain float64 addition rounds at each step, so the two differ in the last bits.
Here each addition is error-free (Knuth's TwoSum: ``s + e == a + b`` exactly) and the error terms are kept in ``lo``;
``hi`` is always the float64 nearest to ``hi + lo``. While the exact total of all the additions spans at most about
104 bits (from its leading bit down to the smallest bit of any addend; per-batch sums of one statistic span far less),
``hi + lo`` is that exact total, whatever the order, so ``hi`` is its correctly rounded value: the sharded and the
unsharded runs agree bit for bit. Beyond that the error stays near 2^-104 relative. Each step is a few elementwise
ops on the state (a scalar or one value per channel), never on the activations.
"""

from __future__ import annotations

import torch


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e == a + b`` exactly (round to nearest, no overflow)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def dd_add(hi: torch.Tensor, lo: torch.Tensor, b: torch.Tensor, b_lo: torch.Tensor | None = None):
    """``(hi, lo) + (b, b_lo)`` as a normalised pair (``hi`` the float64 nearest to the sum). An infinite sum (an
    overflow, or an infinite addend) stays infinite with a zero low word, as a plain float64 sum would; NaN stays NaN."""
    s, e = two_sum(hi, b)
    e = e + lo
    if b_lo is not None:
        e = e + b_lo
    h, low = two_sum(s, e)
    finite = torch.isfinite(s)  # where s is not, TwoSum's error terms are inf - inf = NaN
    return torch.where(finite, h, s), torch.where(finite, low, 0.0)


def dd_add_(hi: torch.Tensor, lo: torch.Tensor, b: torch.Tensor, b_lo: torch.Tensor | None = None) -> None:
    """In place: ``hi + lo += b (+ b_lo)``."""
    h, low = dd_add(hi, lo, b, b_lo)
    hi.copy_(h)
    lo.copy_(low)


def dd_add_foreach_(his: list[torch.Tensor], los: list[torch.Tensor], bs: list[torch.Tensor],
                    b_los: list[torch.Tensor] | None = None) -> None:
    """:func:`dd_add_` over lists of tensors (each ``his[i]`` at most once), a few ops per device: the tensors are
    concatenated, added as pairs and copied back."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(his):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():
        def flat(ts):
            return torch.cat([ts[i].reshape(-1) for i in idx])

        h, low = dd_add(flat(his), flat(los), flat(bs), flat(b_los) if b_los is not None else None)
        sizes = [his[i].numel() for i in idx]
        torch._foreach_copy_([his[i] for i in idx], [x.view_as(his[i]) for x, i in zip(h.split(sizes), idx)])
        torch._foreach_copy_([los[i] for i in idx], [x.view_as(los[i]) for x, i in zip(low.split(sizes), idx)])

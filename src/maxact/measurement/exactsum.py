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
    """``(hi, lo) + (b, b_lo)`` as a normalised pair (``hi`` the float64 nearest to the sum)."""
    s, e = two_sum(hi, b)
    e = e + lo
    if b_lo is not None:
        e = e + b_lo
    return two_sum(s, e)


def dd_add_(hi: torch.Tensor, lo: torch.Tensor, b: torch.Tensor, b_lo: torch.Tensor | None = None) -> None:
    """In place: ``hi + lo += b (+ b_lo)``."""
    h, l = dd_add(hi, lo, b, b_lo)
    hi.copy_(h)
    lo.copy_(l)


def dd_add_foreach_(his: list[torch.Tensor], los: list[torch.Tensor], bs: list[torch.Tensor],
                    b_los: list[torch.Tensor] | None = None) -> None:
    """:func:`dd_add_` over lists of tensors (one multi-tensor op per step; each ``his[i]`` at most once)."""
    if not his:
        return
    s = torch._foreach_add(his, bs)
    bb = torch._foreach_sub(s, his)
    e = torch._foreach_add(torch._foreach_sub(his, torch._foreach_sub(s, bb)), torch._foreach_sub(bs, bb))
    torch._foreach_add_(e, los)
    if b_los is not None:
        torch._foreach_add_(e, b_los)
    h = torch._foreach_add(s, e)
    hb = torch._foreach_sub(h, s)
    low = torch._foreach_add(torch._foreach_sub(s, torch._foreach_sub(h, hb)), torch._foreach_sub(e, hb))
    torch._foreach_copy_(his, h)
    torch._foreach_copy_(los, low)

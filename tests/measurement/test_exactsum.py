"""Double-double running sums: the float64 value is the correctly rounded exact sum (math.fsum, computed apart),
whatever the grouping of the additions, where plain float64 addition is not."""

from __future__ import annotations

import math
import random

import torch

from maxact.measurement.exactsum import dd_add, dd_add_, dd_add_foreach_, two_sum


def _values(seed: int, n: int = 400) -> list[float]:
    rng = random.Random(seed)
    # per-batch sums of one statistic: signed, over about 40 binary orders of magnitude
    return [rng.choice((-1.0, 1.0)) * rng.random() * 2.0 ** rng.randint(-20, 20) for _ in range(n)]


def test_two_sum_is_error_free():
    for a, b in [(1.0, 2.0**-60), (1e16, 1.0), (0.1, 0.2), (-3.5, 3.5)]:
        s, e = two_sum(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        assert math.fsum([float(s), float(e)]) == math.fsum([a, b]) and float(s) == a + b


def test_any_grouping_gives_the_correctly_rounded_sum():
    for seed in range(5):
        vals = _values(seed)
        exact = math.fsum(vals)
        t = torch.tensor(vals, dtype=torch.float64)
        # in order, one at a time (an unsharded run's batches)
        hi, lo = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for v in t:
            dd_add_(hi, lo, v)
        assert float(hi) == exact
        # in 2..7 contiguous parts each summed apart, then the parts added in order (shards, then the merge)
        for parts in range(2, 8):
            cuts = sorted(random.Random(seed * 10 + parts).sample(range(1, len(vals)), parts - 1))
            pairs = []
            for a, b in zip([0, *cuts], [*cuts, len(vals)]):
                h, low = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
                for v in t[a:b]:
                    h, low = dd_add(h, low, v)
                pairs.append((h, low))
            h, low = pairs[0]
            for ph, pl in pairs[1:]:
                h, low = dd_add(h, low, ph, pl)
            assert float(h) == exact, (seed, parts)
        # the plain float64 running sum is not the exact one for every grouping: what the pair is for
        plain = [sum(vals[:k]) + sum(vals[k:]) for k in range(1, len(vals))]
        assert any(p != exact for p in plain)


def test_vectors_add_per_channel():
    vals = [_values(s, 50) for s in range(3)]  # three channels
    t = torch.tensor(vals, dtype=torch.float64).T  # [50, 3]
    hi, lo = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for row in t.flip(0):  # reversed order
        dd_add_(hi, lo, row)
    assert hi.tolist() == [math.fsum(v) for v in vals]


def test_the_multi_tensor_form_gives_the_same_pairs():
    vals = [_values(s, 60) for s in range(4)]  # four tensors of one value, as the per-point states
    his = [torch.zeros((), dtype=torch.float64) for _ in vals]
    los = [torch.zeros((), dtype=torch.float64) for _ in vals]
    for step in range(60):
        dd_add_foreach_(his, los, [torch.tensor(v[step], dtype=torch.float64) for v in vals])
    assert [float(h) for h in his] == [math.fsum(v) for v in vals]


def test_an_infinite_sum_stays_infinite_and_nan_stays_nan():
    f64 = dict(dtype=torch.float64)
    hi, lo = torch.tensor([1.0, 1.0, 1e308, 2.0], **f64), torch.zeros(4, **f64)
    dd_add_(hi, lo, torch.tensor([math.inf, -math.inf, 1e308, math.nan], **f64))  # inf addends, an overflow, NaN
    assert hi[:3].tolist() == [math.inf, -math.inf, math.inf] and math.isnan(hi[3]) and lo[:3].tolist() == [0.0] * 3
    dd_add_(hi, lo, torch.ones(4, **f64))  # a finite addend to an infinite sum: still infinite, as in float64
    assert hi[:3].tolist() == [math.inf, -math.inf, math.inf] and lo[:3].tolist() == [0.0] * 3
    his, los = [torch.tensor(1e308, **f64), torch.ones(3, **f64)], [torch.zeros((), **f64), torch.zeros(3, **f64)]
    dd_add_foreach_(his, los, [torch.tensor(1e308, **f64), torch.tensor([1.0, math.inf, 2.0], **f64)])
    assert float(his[0]) == math.inf and his[1].tolist() == [2.0, math.inf, 3.0] and float(los[0]) == 0.0

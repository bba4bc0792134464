"""Statistics accumulators against independent float64 references on small padded tensors."""

import math

import pytest
import torch

from maxact.measurement.statistics import HIST_BINS, PointStats, TokenInfo, hist_quantiles


def _info(mask: torch.Tensor, sample_index: torch.Tensor, ids: torch.Tensor) -> TokenInfo:
    b, t = mask.shape
    return TokenInfo(
        valid=mask.reshape(-1).bool(),
        sample=sample_index[:, None].expand(b, t).reshape(-1),
        position=torch.arange(t).expand(b, t).reshape(-1),
        token_id=ids.reshape(-1),
    )


def _padded_batches(seed=0, n_samples=5, channels=7):
    g = torch.Generator().manual_seed(seed)
    lengths = [4, 1, 6, 3, 5][:n_samples]
    samples = [torch.randn(L, channels, generator=g) * (1 + 3 * i) for i, L in enumerate(lengths)]
    # A planted massive activation with a known location.
    samples[2][3, 5] = -250.0
    return samples


def _run(samples, groups):
    ps = PointStats("p", len(samples), "cpu", full=True, topk=10)
    for grp in groups:
        t = max(samples[i].shape[0] for i in grp)
        c = samples[0].shape[1]
        x = torch.full((len(grp), t, c), 1e6)  # padding holds garbage that must never count
        mask = torch.zeros(len(grp), t, dtype=torch.bool)
        for r, i in enumerate(grp):
            L = samples[i].shape[0]
            x[r, :L] = samples[i]
            mask[r, :L] = True
        ids = torch.arange(len(grp) * t).reshape(len(grp), t) + 1000 * torch.tensor(grp)[:, None]
        ps.update(x, _info(mask, torch.tensor(grp), ids))
    return ps


@pytest.mark.parametrize("groups", [[[0, 1, 2, 3, 4]], [[2, 0], [4, 1, 3]], [[0], [1], [2], [3], [4]]])
def test_basic_statistics_match_float64_reference(groups):
    samples = _padded_batches()
    ps = _run(samples, groups)
    out = ps.finalize()
    ref = torch.cat(samples).double()
    n = ref.numel()
    assert out["count"] == n
    assert out["mean"] == pytest.approx(ref.mean().item(), rel=1e-6, abs=1e-9)
    assert out["std"] == pytest.approx(ref.std(unbiased=False).item(), rel=1e-6)
    assert out["rms"] == pytest.approx(ref.square().mean().sqrt().item(), rel=1e-6)
    assert out["abs_mean"] == pytest.approx(ref.abs().mean().item(), rel=1e-6)
    assert out["max"] == pytest.approx(ref.max().item())
    assert out["min"] == pytest.approx(-250.0)
    assert out["nan_count"] == 0 and out["inf_count"] == 0
    # Peak provenance: sample 2, position 3, channel 5.
    top = out["top_abs"][0]
    assert (top["sample"], top["position"], top["channel"], top["value"]) == (2, 3, 5, -250.0)
    # Top-k values are the k largest |a| with their signs.
    ref_top = ref.reshape(-1)[ref.reshape(-1).abs().argsort(descending=True)[:10]]
    assert [t["value"] for t in out["top_abs"]] == pytest.approx(ref_top.tolist())


def test_per_sample_extremes_and_padding_independence():
    samples = _padded_batches()
    a = _run(samples, [[0, 1, 2, 3, 4]])
    b = _run(samples, [[4], [3, 1], [0, 2]])
    for ps in (a, b):
        mx, mn = ps.per_sample()
        for i, s in enumerate(samples):
            assert mx[i].item() == pytest.approx(s.max().item())
            assert mn[i].item() == pytest.approx(s.min().item())
    fa, fb = a.finalize(), b.finalize()
    for k in ("count", "max", "min", "sun_max_ratio", "sun_n_pass", "abs_median", "abs_q99"):
        assert fa[k] == pytest.approx(fb[k], rel=1e-6), k


def test_sun_criterion_reference():
    samples = _padded_batches()
    out = _run(samples, [[0, 1, 2, 3, 4]]).finalize()
    toks = torch.cat(samples).double().abs()
    tmax = toks.max(dim=1).values
    # Lower median over channels (torch.median's convention), computed by sorting.
    med = toks.sort(dim=1).values[:, (toks.shape[1] - 1) // 2]
    ratio = tmax / med
    assert out["sun_max_ratio"] == pytest.approx(ratio.max().item(), rel=1e-5)
    assert out["sun_mean_ratio"] == pytest.approx(ratio.mean().item(), rel=1e-5)
    assert out["sun_std_ratio"] == pytest.approx(ratio.std(unbiased=False).item(), rel=1e-4)
    assert out["sun_n_pass"] == float(((tmax > 100) & (ratio > 1000)).sum())
    i = int(tmax.argmax())
    assert out["sun_peak_abs"] == pytest.approx(250.0)
    assert out["sun_peak_token_median"] == pytest.approx(med[i].item(), rel=1e-6)


def test_massive_activation_counted_by_sun_criterion():
    x = torch.full((1, 3, 2001), 0.01)
    x[0, 1, 7] = 5000.0  # |a| > 100 and ratio 5000/0.01 > 1000
    ps = PointStats("p", 1, "cpu")
    ps.update(x, _info(torch.ones(1, 3, dtype=torch.bool), torch.tensor([0]), torch.zeros(1, 3, dtype=torch.long)))
    out = ps.finalize()
    assert out["sun_n_pass"] == 1
    assert out["sun_max_ratio"] == pytest.approx(5000 / 0.01, rel=1e-5)


def test_nonfinite_counted_never_a_max():
    x = torch.tensor([[[1.0, float("nan"), -2.0], [float("inf"), 3.0, 0.5]]])
    ps = PointStats("p", 1, "cpu")
    ps.update(x, _info(torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]), torch.zeros(1, 2, dtype=torch.long)))
    out = ps.finalize()
    assert out["nan_count"] == 1 and out["inf_count"] == 1
    assert out["max"] == 3.0 and out["min"] == -2.0 and out["count"] == 4


def test_histogram_quantiles_against_exact_quantiles():
    g = torch.Generator().manual_seed(1)
    x = torch.exp(torch.randn(1, 4000, 16, generator=g) * 2)  # log-normal magnitudes over decades
    x[0, :10] = 0.0
    ps = PointStats("p", 1, "cpu")
    ps.update(x, _info(torch.ones(1, 4000, dtype=torch.bool), torch.tensor([0]), torch.zeros(1, 4000, dtype=torch.long)))
    out = ps.finalize()
    a = x.double().abs().reshape(-1)
    assert out["abs_hist_zero_frac"] == pytest.approx(160 / a.numel())
    bin_ratio = 10 ** (16 / HIST_BINS)  # one bin's width in ratio
    for key, q in [("abs_median", 0.5), ("abs_q90", 0.9), ("abs_q99", 0.99)]:
        exact = torch.quantile(a, q).item()
        assert exact / bin_ratio <= out[key] <= exact * bin_ratio, key


def test_hist_quantiles_all_zero_and_empty():
    assert hist_quantiles(torch.zeros(HIST_BINS, dtype=torch.long), 5)["abs_median"] == 0.0
    assert hist_quantiles(torch.zeros(HIST_BINS, dtype=torch.long), 0)["abs_median"] is None


def test_expert_rows_of_unknown_origin_go_to_spare_slot():
    ps = PointStats("p", 2, "cpu")
    x = torch.tensor([[1.0, -9.0], [2.0, 3.0]])
    ps.update(x, TokenInfo(torch.ones(2, dtype=torch.bool), torch.full((2,), 2), torch.arange(2), torch.full((2,), -1)))
    mx, _ = ps.per_sample()
    assert torch.isinf(mx).all()  # no real sample got a value
    assert ps.finalize()["min"] == -9.0
    assert math.isfinite(ps.finalize()["rms"])


def test_per_sample_extremes_from_batch_layout_equal_scattered_reduction():
    """The [B, T] / packed-rows / unknown-origin layouts give the same per-sample table as index_reduce."""
    g = torch.Generator().manual_seed(7)
    b, t, c, n_samples = 3, 6, 5, 8
    x = torch.randn(b, t, c, generator=g) * 10
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    samples = torch.tensor([5, 1, 6])
    ids = torch.arange(b * t).reshape(b, t)
    plain = _info(mask, samples, ids)
    # Reference: per-sample max/min of real tokens, by hand in float64.
    want_max = torch.full((n_samples,), -math.inf, dtype=torch.float64)
    want_min = torch.full((n_samples,), math.inf, dtype=torch.float64)
    for r in range(b):
        real = x[r][mask[r]].double()
        want_max[samples[r]] = real.max()
        want_min[samples[r]] = real.min()
    laid_out = TokenInfo(plain.valid, plain.sample, plain.position, plain.token_id, batch_shape=(b, t), batch_samples=samples)
    rows = mask.reshape(-1).nonzero().flatten()
    packed = TokenInfo(torch.ones(rows.numel(), dtype=torch.bool), plain.sample[rows], plain.position[rows],
                       plain.token_id[rows], batch_shape=(b, t), batch_samples=samples, rows=rows)
    for info, xs in ((plain, x), (laid_out, x), (packed, x.reshape(-1, c)[rows])):
        ps = PointStats("p", n_samples, "cpu", full=False)
        ps.update(xs, info)
        smax, smin = ps.per_sample()
        assert torch.equal(smax.double(), want_max.float().double())
        assert torch.equal(smin.double(), want_min.float().double())
    # Routed copies of tokens: everything lands in the 'unknown' slot, never in a sample's row.
    n = 10
    unknown = TokenInfo(torch.ones(n, dtype=torch.bool), torch.full((n,), n_samples), torch.arange(n),
                        torch.full((n,), -1), unknown_origin=True)
    ps = PointStats("p", n_samples, "cpu", full=False)
    xe = torch.randn(n, c, generator=g)
    ps.update(xe, unknown)
    assert torch.isinf(ps.per_sample()[0]).all()
    assert float(ps.sample_max[-1]) == float(xe.max()) and float(ps.sample_min[-1]) == float(xe.min())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_partials_equal_masked_partials_on_real_rows(dtype):
    """The CPU fast path (real rows only, non-finite rows fixed up) equals the masked reference partials."""
    from maxact.measurement import statistics as S

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(9, 33, generator=g) * 50).to(dtype)
    x[1, 3] = float("nan")
    x[2] = float("nan")  # no finite value at all
    x[4, 0] = float("inf")
    x[5, 7] = float("-inf")
    x[6, :5] = 0.0
    x[7, 2] = -0.0
    want = S._fused_partials(x, torch.ones(9, dtype=torch.bool), True)
    got = S._cpu_partials(x, True)
    for i, (w, o) in enumerate(zip(want, got)):
        if i in (3, 4, 5):  # float64 totals of float32 row sums: summation order may differ
            assert float(o) == pytest.approx(float(w), rel=1e-6), i
        else:
            assert torch.equal(o, w), (i, o, w)
    basic = S._cpu_partials(x, False)
    assert basic[8:] == (None, None, None) and torch.equal(basic[6], want[6]) and torch.equal(basic[7], want[7])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _assert_same_state(got, want):
    """Every state tensor equal; float64 totals (summed in another order) to 1e-12."""
    g, w = got.state_dict(), want.state_dict()
    assert g.keys() == w.keys()
    for k in w:
        if w[k].dtype == torch.float64:
            assert torch.allclose(g[k], w[k], rtol=1e-12, atol=0), (want.name, k)
        else:
            assert torch.equal(g[k], w[k]), (want.name, k)


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_fold_of_many_points_equals_each_point_alone(device):
    """Points sharing their token rows are folded together at the end of a batch (stats.Deferred): the
    statistics equal those of folding each point on its own, over batches of every layout."""
    from maxact.measurement import statistics as S

    g = torch.Generator().manual_seed(3)
    b, t, n_samples = 3, 9, 7
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    widths = [16, 16, 24, 16]
    fulls = [True, True, True, False]
    alone = [S.PointStats(f"p{i}", n_samples, device, full=f, topk=5) for i, f in enumerate(fulls)]
    together = [S.PointStats(f"p{i}", n_samples, device, full=f, topk=5) for i, f in enumerate(fulls)]
    for batch, samples in enumerate(([0, 3, 5], [6, 1, 2])):
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[1, 5 + batch:] = False
        mask[2, 2:] = False
        sidx = torch.tensor(samples)
        ids = torch.arange(b * t).reshape(b, t) + 100 * batch
        base = _info(mask, sidx, ids)
        laid = TokenInfo(base.valid, base.sample, base.position, base.token_id, batch_shape=(b, t), batch_samples=sidx)
        laid = laid.to(device)
        xs = [(torch.randn(b, t, c, generator=g) * (1 + 40 * i)) for i, c in enumerate(widths)]
        xs[1][0, 2, 3] = 1e4  # a massive activation
        xs[0][2, 1, :] = 0.0
        xs = [x.to(dtype).to(device) for x in xs]
        d = S.Deferred()
        for ps_a, ps_t, x in zip(alone, together, xs):
            ps_a.update(x, laid)
            ps_t.update(x, laid, defer=d)
        assert len(d.pending) == 4
        d.flush()
    for ps_a, ps_t in zip(alone, together):
        _assert_same_state(ps_t, ps_a)


@pytest.mark.parametrize("device", DEVICES)
def test_point_updated_twice_in_a_batch_counts_both(device):
    """A hooked module called more than once per forward (e.g. an expert activation run per expert):
    the deferred fold merges the calls' rows and equals folding each call in turn."""
    from maxact.measurement import statistics as S

    g = torch.Generator().manual_seed(5)
    n_samples, c = 4, 12
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    base = _info(mask, torch.tensor([2, 0]), torch.arange(10).reshape(2, 5))
    dense = TokenInfo(base.valid, base.sample, base.position, base.token_id, batch_shape=(2, 5),
                      batch_samples=torch.tensor([2, 0])).to(device)

    def unknown(n):  # routed expert rows, as the engine builds them (one object per row count)
        return TokenInfo(torch.ones(n, dtype=torch.bool), torch.full((n,), n_samples), torch.arange(n),
                         torch.full((n,), -1), unknown_origin=True).to(device)

    same = unknown(6)
    calls = [("expert", torch.randn(6, c, generator=g) * 3, same), ("expert", torch.randn(6, c, generator=g) * 50, same),
             ("expert", torch.randn(3, c, generator=g), unknown(3)), ("dense", torch.randn(2, 5, c, generator=g), dense),
             ("dense", torch.randn(2, 5, c, generator=g) * 7, dense)]
    seq = {k: S.PointStats(k, n_samples, device, topk=8) for k in ("expert", "dense")}
    dfr = {k: S.PointStats(k, n_samples, device, topk=8) for k in ("expert", "dense")}
    d = S.Deferred()
    for name, x, info in calls:
        x = x.to(dtype).to(device)
        seq[name].update(x, info)
        dfr[name].update(x, info, defer=d)
    d.flush()
    for name in seq:
        _assert_same_state(dfr[name], seq[name])
    assert int(dfr["expert"].n_tokens) == 15 and int(dfr["dense"].n_tokens) == 16

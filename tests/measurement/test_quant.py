"""INT-8 metrics and thresholds against hand-computed float64 references."""

import math

import numpy as np
import pytest
import torch

from maxact.measurement.quant import Calibration, error_metrics, fake_quant, quantize_policy, run_int8_check, split_samples


def test_fake_quant_known_values():
    x = torch.tensor([0.0, 0.5, -1.0, 1.0, 2.0, -3.0])
    # threshold 1.0 -> scale 1/127: values beyond +-1 clip to +-127 steps
    q = fake_quant(x, torch.tensor(1.0 / 127))
    assert q.tolist() == pytest.approx([0.0, round(0.5 * 127) / 127, -1.0, 1.0, 1.0, -1.0])


def _ref_metrics(x, thr):
    x = np.asarray(x, dtype=np.float64)
    s = thr / 127.0
    q = np.clip(np.round(x / s), -127, 127) * s
    e = x - q
    return {
        "sqnr_db": 10 * math.log10((x**2).sum() / (e**2).sum()),
        "rel_rmse": math.sqrt((e**2).mean() / (x**2).mean()),
        "rel_mae": np.abs(e).mean() / np.abs(x).mean(),
        "clip_rate": (np.abs(x) > thr).mean(),
    }


def test_error_metrics_match_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    x[3, 4] = 80.0  # an outlier dominates the max_abs scale
    for thr in (80.0, 2.5):
        xq, t = quantize_policy(x.double(), "max_abs", {"max_abs": torch.tensor(thr, dtype=torch.float64)})
        got = error_metrics(x, xq, t)
        ref = _ref_metrics(x.numpy(), thr)
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k
    # The paper's pattern: the outlier's max_abs scale crushes small values (high relative MAE),
    # while clipping keeps them but loses the outlier's energy (low SQNR).
    full = error_metrics(x, *quantize_policy(x, "max_abs", {"max_abs": torch.tensor(80.0)}))
    clip = error_metrics(x, *quantize_policy(x, "clip_q0.999", {"clip_q0.999": torch.tensor(2.5)}))
    assert clip["rel_mae"] < full["rel_mae"] and clip["sqnr_db"] < full["sqnr_db"]


def test_per_token_and_per_channel_scaling():
    x = torch.tensor([[1.0, -2.0], [100.0, 0.5]])
    xq, t = quantize_policy(x, "per_token", {})
    assert t.squeeze(-1).tolist() == [2.0, 100.0]
    xq, t = quantize_policy(x, "per_channel", {"per_channel": torch.tensor([100.0, 2.0])})
    assert xq[:, 1].tolist() == pytest.approx([-2.0, round(0.5 / (2 / 127)) * 2 / 127])


def test_calibration_quantile_is_exact_upper_order_statistic():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(50, 40, generator=g) for _ in range(3)]
    a = torch.cat(chunks).abs().reshape(-1).double().sort().values
    n = a.numel()
    cal = Calibration(n)
    for c in chunks:
        cal.update(c)
    thr = cal.thresholds()
    assert float(thr["max_abs"]) == pytest.approx(a[-1].item())
    k = n - math.ceil(0.999 * n) + 1
    assert float(thr["clip_q0.999"]) == pytest.approx(a[n - k].item())
    assert torch.allclose(thr["per_channel"], torch.cat(chunks).abs().amax(0))


def test_run_int8_check_averages_over_eval_samples():
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(10, 8, generator=g) * (i + 1) for i in range(6)]
    calib, evals = [0, 1], [2, 3, 4, 5]
    out = run_int8_check(lambda idx: (data[i] for i in idx), calib, evals, sum(data[i].numel() for i in calib))
    thr = torch.cat([data[i] for i in calib]).abs().max().item()
    ref = [_ref_metrics(data[i].numpy(), thr) for i in evals]
    assert out["policies"]["max_abs"]["mean_sqnr_db"] == pytest.approx(np.mean([r["sqnr_db"] for r in ref]), rel=1e-5)
    assert out["policies"]["max_abs"]["mean_clip_rate"] == pytest.approx(np.mean([r["clip_rate"] for r in ref]))
    assert set(out["policies"]) == {"max_abs", "clip_q0.999", "per_channel", "per_token"}


def test_split_samples_disjoint_and_seeded():
    c, e = split_samples(100, 10, 20, seed=3)
    assert len(c) == 10 and len(e) == 20 and not set(c) & set(e)
    assert split_samples(100, 10, 20, seed=3) == (c, e)
    with pytest.raises(ValueError):
        split_samples(1, 1, 1)


# --------------------------------------------------------------------------- the paper's definition (int8.definition: paper)

from maxact.measurement.quant import (  # noqa: E402
    paper_histogram,
    paper_histogram_threshold,
    paper_quantize,
    run_int8_check_paper,
)


def test_paper_quantile_is_the_lower_edge_of_the_bin_of_rank_ceil_qn():
    """|a| = 0.25, 0.5, 1, 2, 3, 4 over [0, 4] in 2,048 bins: bin = floor(v / 4 * 2047) = 127, 255, 511, 1023,
    1535, 2047. q = 0.5: rank ceil(0.5 * 6) = 3 -> the bin of 1.0 (511) -> 4 * 511 / 2047, below the exact value 1."""
    vals = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0, 0.25])
    hist = paper_histogram(vals, 4.0, 2048)
    assert hist.sum() == 6 and torch.nonzero(hist).flatten().tolist() == [127, 255, 511, 1023, 1535, 2047]
    assert paper_histogram_threshold(hist, 4.0, 0.5) == pytest.approx(4 * 511 / 2047, rel=1e-12)
    assert paper_histogram_threshold(hist, 4.0, 0.999) == pytest.approx(4.0, rel=1e-12)  # ceil(5.994) = 6: the top bin
    assert paper_histogram_threshold(hist, 4.0, 0.1) == pytest.approx(4 * 127 / 2047, rel=1e-12)  # rank 1


def test_paper_clamps_to_the_threshold_then_rounds_then_clamps():
    # threshold 4, scale 4/127: 0.1 -> 3.175 -> 3 steps; -5 -> clamped to -4 -> -127; 2 -> 63.5 -> 64 (half to even); 0 -> 0
    x = torch.tensor([0.1, -5.0, 2.0, 0.0])
    s = 4 / 127
    assert paper_quantize(x, 4.0).tolist() == pytest.approx([3 * s, -127 * s, 64 * s, 0.0], rel=1e-6)
    # per channel: thresholds [4, 0]; a zero threshold quantizes its channel to 0
    x2 = torch.tensor([[0.1, 0.3], [-5.0, -0.2]])
    out = paper_quantize(x2, torch.tensor([[4.0, 0.0]]))
    assert out.flatten().tolist() == pytest.approx([3 * s, 0.0, -127 * s, 0.0], rel=1e-6)


def test_paper_pools_errors_over_all_evaluation_tokens():
    """Calibration: |a| max 4. Evaluation: two samples of different lengths; every metric is one ratio of sums over
    all their values (computed here in float64 by hand), not a mean of per-sample metrics."""
    calib = [torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([[-4.0, 0.25]])]
    evals = [torch.tensor([[0.1, -5.0], [2.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    samples = {0: calib[0], 1: calib[1], 2: evals[0], 3: evals[1]}

    def capture(indices):
        for i in indices:
            yield samples[i]

    out = run_int8_check_paper(capture, [0, 1], [2, 3], policies=("max_abs", "clip_q0.999"))
    s = 4 / 127
    vals = [0.1, -5.0, 2.0, 0.0, 1.0, 1.0]
    deq = [3 * s, -127 * s, 64 * s, 0.0, 32 * s, 32 * s]  # 1 / s = 31.75 -> 32
    err = [d - v for d, v in zip(deq, vals)]
    sum_sq, err_sq = sum(v * v for v in vals), sum(e * e for e in err)
    m = out["policies"]["max_abs"]
    assert m["threshold"] == 4.0 and m["count"] == 6
    assert m["mean_sqnr_db"] == pytest.approx(10 * math.log10(sum_sq / err_sq), rel=1e-5)
    assert m["mean_rel_rmse"] == pytest.approx(math.sqrt(err_sq / sum_sq), rel=1e-5)
    assert m["mean_rel_mae"] == pytest.approx(sum(abs(e) for e in err) / sum(abs(v) for v in vals), rel=1e-5)
    assert m["mean_clip_rate"] == pytest.approx(1 / 6)
    # 6 calibration values, rank ceil(0.999 * 6) = 6: the top bin, whose lower edge is the max itself
    assert out["policies"]["clip_q0.999"]["threshold"] == pytest.approx(4.0)
    # a mean over the two samples would differ: the definitions are not the same number
    per_sample = [10 * math.log10(sum(v * v for v in vals[:4]) / sum(e * e for e in err[:4])),
                  10 * math.log10(sum(v * v for v in vals[4:]) / sum(e * e for e in err[4:]))]
    assert abs(sum(per_sample) / 2 - m["mean_sqnr_db"]) > 1.0

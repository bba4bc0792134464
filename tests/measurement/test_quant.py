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

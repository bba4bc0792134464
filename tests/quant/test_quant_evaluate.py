"""The evaluation's metrics against values computed here independently, on tiny checkpoints saved to a folder and
loaded by the real loader: the unquantized control's ΔNLL is exactly 0, each format's ΔNLL, rel L2 and top-1 equal
a direct float64 computation of the same forwards, the clip counts equal a count of the inputs above the
calibrated max, and no weight is left changed."""

from __future__ import annotations

import pytest
import torch

from maxact.calibration import exports as X
from maxact.quant.evaluate import evaluate
from maxact.quant.formats import applied, fingerprint

pytest.importorskip("compressed_tensors")

SAMPLES = [[5, 17, 33, 8, 61, 2, 40, 12, 9], [70, 3, 3, 3, 44, 90, 21], [11, 12]]


def _load(model_type, folder, seed=0):
    from maxact.models.checkpoints import load_model
    from tiny_models import save_tiny_checkpoint

    save_tiny_checkpoint(model_type, folder, seed=seed)
    model, _ = load_model({"name": model_type, "source": "local", "load_path": str(folder)}, torch.float32)
    return model.eval()


def _observed_max(model, names):
    """max |x| per module over SAMPLES (what a calibration would have seen)."""
    got = {n: torch.zeros(m.in_features) for n, m in model.named_modules() if n in names}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: got.__setitem__(n, torch.maximum(got[n], a[0].detach().abs().amax((0, 1)))))
             for n, m in model.named_modules() if n in names]
    with torch.no_grad():
        for s in SAMPLES:
            model(input_ids=torch.tensor([s]))
    for h in hooks:
        h.remove()
    return got


def _write(folder, maxima):
    mods = {n: {"max_abs": mx.clamp_min(1e-3), "sumsq": mx.double() ** 2, "sumabs": mx.double(), "count": torch.tensor(9),
                "mean_abs": mx.double(), "fused": None, "expert": None} for n, mx in maxima.items()}
    report = {"uncovered": [], "filled": {}, "fill_policy": "none"}
    X.write_input_scales(folder, mods, report, {"checkpoint": "t"})
    X.write_act_scales(folder / "act_scales.pt", mods, report, {"checkpoint": "t"})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    model = _load("llama", d / "model", seed=4)
    names = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n)
    maxima = _observed_max(model, names)
    # one layer calibrated at 60% of what the held-out text reaches: its static scales clip
    clipped = "model.layers.1.mlp.down_proj"
    maxima[clipped] = maxima[clipped] * 0.6
    cal = d / "cal"
    cal.mkdir()
    _write(cal, maxima)
    return model, names, cal, clipped


def _nll(logits, ids):
    lp = torch.log_softmax(logits.double(), -1)
    return -lp[:-1].gather(1, ids[1:, None]).sum()


def test_metrics_equal_a_direct_computation(llama):
    model, names, cal, clipped = llama
    before = fingerprint(model)
    formats = ["fp8_static", "int8_static", "int8_dynamic", "smoothquant_w8a8"]
    doc = evaluate(model, SAMPLES, formats, names, cal)
    assert fingerprint(model) == before
    assert doc["formats"]["unquantized"]["delta_nll_per_token"] == 0.0
    assert doc["formats"]["unquantized"]["logits_rel_l2"] == 0.0 and doc["formats"]["unquantized"]["top1_agreement"] == 1.0
    n_pred = sum(len(s) - 1 for s in SAMPLES)
    n_pos = sum(len(s) for s in SAMPLES)
    assert doc["predicted_tokens"] == n_pred and doc["tokens"] == n_pos

    def run():
        out = []
        with torch.no_grad():
            for s in SAMPLES:
                ids = torch.tensor([s])
                o = model(input_ids=ids)
                out.append((o.logits[0].double(), None, ids[0]))
        return out

    ref = run()
    ref_nll = sum(float(_nll(lg, ids)) for lg, _, ids in ref)
    assert doc["reference_nll_per_token"] == pytest.approx(ref_nll / n_pred, rel=1e-9)
    for f in formats:
        with applied(model, f, names, cal):
            q = run()
        e = doc["formats"][f]
        assert e["status"] == "measured", e
        nll = sum(float(_nll(lg, ids)) for lg, _, ids in q)
        assert e["delta_nll_per_token"] == pytest.approx((nll - ref_nll) / n_pred, rel=1e-6, abs=1e-9)
        err = sum(float((a[0] - b[0]).pow(2).sum()) for a, b in zip(q, ref))
        den = sum(float(b[0].pow(2).sum()) for b in ref)
        assert e["logits_rel_l2"] == pytest.approx((err / den) ** 0.5, rel=1e-6)
        agree = sum(int((a[0].argmax(-1) == b[0].argmax(-1)).sum()) for a, b in zip(q, ref))
        assert e["top1_agreement"] == pytest.approx(agree / n_pos)
        assert e["delta_nll_per_token"] != 0.0  # the formats really quantize
    assert doc["formats"]["smoothquant_w8a8"]["smoothing_identity_logits_rel_l2"] < 1e-5


def test_clip_counts_equal_a_direct_count(llama):
    model, names, cal, clipped = llama
    from maxact.quant.formats import read_amax

    doc = evaluate(model, SAMPLES, ["int8_static"], names, cal)
    amax = read_amax(cal / "input_scales_int8.safetensors")
    over_vals = over_rows = 0
    named = dict(model.named_modules())
    counts = {}

    def hook(n):
        def h(m, a):
            x = a[0].detach().abs()
            counts[n] = counts.get(n, 0) + int((x > amax[n]).sum())
            nonlocal over_vals, over_rows
            over_vals += int((x > amax[n]).sum())
            over_rows += int((x > amax[n]).any(-1).sum())
        return h

    hs = [named[n].register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for s in SAMPLES:
            model(input_ids=torch.tensor([s]))
    for h in hs:
        h.remove()
    clip = doc["formats"]["int8_static"]["clip"]
    assert clip["values_over"] == over_vals > 0 and clip["token_rows_over"] == over_rows
    assert clip["token_rows"] == sum(len(s) for s in SAMPLES) * len(names)
    assert {d["module"] for d in clip["largest_overshoot"]} == {n for n, c in counts.items() if c}
    assert clip["largest_overshoot"][0]["module"] == clipped and clip["largest_overshoot"][0]["ratio"] > 1.5


def test_gemma_smoothquant_not_covered_and_weights_unchanged(tmp_path):
    model = _load("gemma3_text", tmp_path / "g", seed=2)
    names = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n)
    cal = tmp_path / "cal"
    cal.mkdir()
    _write(cal, _observed_max(model, names))
    before = fingerprint(model)
    doc = evaluate(model, SAMPLES[:2], ["int8_dynamic", "smoothquant_w8a8"], names, cal)
    sq = doc["formats"]["smoothquant_w8a8"]
    assert sq["status"] == "not_covered" and "1 + weight" in sq["reason"], sq
    assert sq["weights_unchanged"] is True and fingerprint(model) == before
    assert doc["formats"]["int8_dynamic"]["status"] == "measured"


def test_an_unmapped_architecture_is_not_covered(tmp_path):
    """A family llm-compressor has no mapping for and whose layers match none of its default names."""
    from maxact.quant.formats import QuantEvalError, smooth

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    m = Odd()
    before = fingerprint(m)
    with pytest.raises(QuantEvalError, match="SmoothQuant"):
        smooth(m, {"fc": torch.ones(4)}, 0.5)
    assert fingerprint(m) == before



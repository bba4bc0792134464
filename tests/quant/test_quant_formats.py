"""Each quantized format's simulated forward (compressed-tensors' own, llm-compressor's smoothing) against a direct
implementation in float64: quantize, dequantize, matmul, written here from the formats' definitions.

A tiny Llama (and a tiny Gemma 3, whose norm multiplies by 1 + weight) saved to a folder and loaded by the real
loader; maxact's calibration files written by maxact's own writers from chosen per-channel maxima.
"""

from __future__ import annotations

import math

import pytest
import torch

from maxact.calibration import exports as X
from maxact.quant.formats import FORMATS, applied, changed, fingerprint, short_module

pytest.importorskip("compressed_tensors")

INT8_QMIN, INT8_QMAX = -128, 127
E4M3_MAX = 448.0


def _round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # torch.round rounds half to even, as compressed-tensors' round does


def _div(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale with float32 operands, as the format stores and divides them (a value at exactly +-127.5 steps,
    the weight's own max, sits on a rounding tie that float32 and float64 quotients break differently); the rest of
    the reference is float64."""
    return (x.float() / scale.float()).double()


def int8_qdq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(_round_half_even(_div(x, scale)), INT8_QMIN, INT8_QMAX) * scale.float().double()


def e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values to the nearest FP8 E4M3 value (ties to even), saturating at +-448: 3 mantissa bits,
    exponent from -6 (subnormals below 2^-6 have the fixed step 2^-9)."""
    a = v.abs().clamp(max=E4M3_MAX)
    e = torch.floor(torch.log2(a.clamp_min(2.0 ** -6)))
    step = torch.pow(2.0, e - 3)
    q = _round_half_even(a / step) * step
    return torch.sign(v) * q.clamp(max=E4M3_MAX)


def fp8_qdq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return e4m3_round(_div(x, scale)) * scale.float().double()


def _direct(fmt: str, x: torch.Tensor, w: torch.Tensor, input_scale: torch.Tensor | None) -> torch.Tensor:
    """The format's linear layer from its definition (scales as float32 values, as stored; float64 arithmetic)."""
    x, w = x.double(), w.double()
    if fmt == "fp8_static":
        wq = fp8_qdq(w, w.abs().max() / E4M3_MAX)
        xq = fp8_qdq(x, input_scale)
    elif fmt == "int8_static":
        wq = int8_qdq(w, w.abs().amax(1, keepdim=True) / 127.5)
        xq = int8_qdq(x, input_scale)
    elif fmt in ("int8_dynamic", "smoothquant_w8a8"):
        wq = int8_qdq(w, w.abs().amax(1, keepdim=True) / 127.5)
        xq = int8_qdq(x, x.abs().amax(-1, keepdim=True) / 127.5)
    elif fmt == "fp8_dynamic":
        wq = fp8_qdq(w, w.abs().amax(1, keepdim=True) / E4M3_MAX)
        xq = fp8_qdq(x, x.abs().amax(-1, keepdim=True) / E4M3_MAX)
    else:
        raise AssertionError(fmt)
    return xq @ wq.T


def test_e4m3_reference_rounds_like_the_format():
    # the reference itself: known E4M3 values (1.0, 1.125 steps; 448 saturates; 2^-9 is the smallest subnormal)
    v = torch.tensor([1.0, 1.0624, 1.0626, 1.1875, 300.0, 449.0, 1e4, 2.0 ** -9, 0.0], dtype=torch.float64)
    assert e4m3_round(v).tolist() == [1.0, 1.0, 1.125, 1.25, 288.0, 448.0, 448.0, 2.0 ** -9, 0.0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from maxact.models.checkpoints import load_model
    from tiny_models import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_checkpoint("llama", folder, seed=3)
    model, _ = load_model({"name": "tiny-llama", "source": "local", "load_path": str(folder)}, torch.float32)
    return model.eval()


def _calibration(model, folder, seed=0):
    """maxact's files from chosen per-channel maxima (their own writers), and those maxima."""
    g = torch.Generator().manual_seed(seed)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    modules = {}
    for n in names:
        width = dict(model.named_modules())[n].in_features
        mx = (torch.rand(width, generator=g) * 3 + 0.5).float()
        modules[n] = {"max_abs": mx, "sumsq": mx.double() ** 2, "sumabs": mx.double(), "count": torch.tensor(10),
                      "mean_abs": mx.double() / 2, "fused": None, "expert": None}
    report = {"uncovered": [], "filled": {}, "fill_policy": "none"}
    X.write_input_scales(folder, modules, report, {"checkpoint": "tiny"})
    X.write_act_scales(folder / "act_scales.pt", modules, report, {"checkpoint": "tiny"})
    return names, {n: float(m["max_abs"].max()) for n, m in modules.items()}


@pytest.mark.parametrize("fmt", ["fp8_static", "int8_static", "int8_dynamic", "fp8_dynamic"])
def test_each_format_matches_a_float64_direct_implementation(llama, tmp_path, fmt):
    from safetensors.torch import load_file

    names, amax = _calibration(llama, tmp_path)
    file = FORMATS[fmt][1]
    scales = load_file(str(tmp_path / file)) if file else None
    named = dict(llama.named_modules())
    g = torch.Generator().manual_seed(1)
    with applied(llama, fmt, names, tmp_path) as ap, torch.no_grad():
        assert sorted(ap.modules) == sorted(names)
        for n in names:
            m = named[n]
            # inputs that reach past the calibrated max too (static formats clip them)
            # [batch, tokens, features] as inside the model (compressed-tensors' per-token scales reduce the last
            # dimension of a 3-d input; a 2-d input gets one scale); values reach past the calibrated max too
            x = torch.randn(1, 5, m.in_features, generator=g) * amax[n] * 0.6
            got = m(x).double()
            stored = scales[f"{n}.input_scale"] if scales else None  # maxact's file, as the format reads it
            want = _direct(fmt, x, m.weight.detach(), stored)
            scale = want.abs().max()
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(scale)), (fmt, n, float((got - want).abs().max()))
    # undone: the plain layer again
    x = torch.randn(3, named[names[0]].in_features)
    assert torch.equal(named[names[0]](x), torch.nn.functional.linear(x, named[names[0]].weight, named[names[0]].bias))
    assert not hasattr(named[names[0]], "input_scale") and not hasattr(named[names[0]], "quantization_scheme")


def test_static_scales_are_read_from_maxacts_files(llama, tmp_path):
    from safetensors.torch import load_file

    names, amax = _calibration(llama, tmp_path, seed=5)
    named = dict(llama.named_modules())
    for fmt, file, div in (("int8_static", "input_scales_int8.safetensors", 127.5), ("fp8_static", "input_scales_fp8.safetensors", 448.0)):
        want = load_file(str(tmp_path / file))
        with applied(llama, fmt, names, tmp_path):
            for n in names:
                assert torch.equal(named[n].input_scale.float().reshape(1), want[f"{n}.input_scale"].reshape(1))
                assert math.isclose(float(named[n].input_scale) * div, amax[n], rel_tol=1e-6)


def test_smoothquant_is_the_papers_formula_then_w8a8(llama, tmp_path):
    """alpha 0.5: s_j = max|X_j|^a / max|W_j|^(1-a) over the layers sharing the input; the norm's weight / s, the
    balance layers' columns * s; then W8A8 of the smoothed layer; and every weight back afterwards."""
    names, _ = _calibration(llama, tmp_path, seed=7)
    act = torch.load(tmp_path / "act_scales.pt", weights_only=True)
    named = dict(llama.named_modules())
    before = fingerprint(llama)
    layer = "model.layers.0"
    qkv = [f"{layer}.self_attn.{p}_proj" for p in "qkv"]
    w_orig = {n: named[n].weight.detach().double().clone() for n in qkv}
    norm_orig = named[f"{layer}.input_layernorm"].weight.detach().double().clone()
    a = torch.stack([act[n].double() for n in qkv]).amax(0)
    wmax = torch.cat([w_orig[n].abs() for n in qkv], 0).amax(0)
    s = a.pow(0.5) / wmax.pow(0.5)
    g = torch.Generator().manual_seed(2)
    with applied(model=llama, fmt="smoothquant_w8a8", module_names=names, calib_dir=tmp_path, alpha=0.5) as ap:
        assert ap.smoothing["tensors_changed"] == 7 * 2  # per layer: 2 norms, q, k, v, gate, up
        assert ap.smoothing["smooth_layer_output_scales"] is True
        assert torch.allclose(named[f"{layer}.input_layernorm"].weight.double(), norm_orig / s, rtol=1e-5)
        for n in qkv:
            assert torch.allclose(named[n].weight.double(), w_orig[n] * s[None, :], rtol=1e-5)
            x = torch.randn(1, 4, named[n].in_features, generator=g) * 2
            want = _direct("smoothquant_w8a8", x, named[n].weight.detach(), None)
            with torch.no_grad():
                got = named[n](x).double()
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert changed(before, fingerprint(llama)) == []


def test_smoothing_alone_leaves_the_function(llama, tmp_path):
    names, _ = _calibration(llama, tmp_path, seed=9)
    ids = torch.tensor([[5, 17, 33, 8, 61, 2, 40]])
    with torch.no_grad():
        ref = llama(input_ids=ids).logits.double()
        with applied(llama, "smoothquant_w8a8", names, tmp_path, alpha=0.8, quantize=False):
            sm = llama(input_ids=ids).logits.double()
    assert float((sm - ref).norm() / ref.norm()) < 1e-5


def test_gemma_norm_is_reported_not_silently_smoothed(tmp_path):
    """Gemma's RMSNorm multiplies by 1 + weight: llm-compressor's default mapping changes such a model; the check
    sees it, and the weights come back bit for bit."""
    from tiny_models import tiny_model

    model = tiny_model("gemma3_text", seed=1)
    names, _ = _calibration(model, tmp_path, seed=11)
    before = fingerprint(model)
    with applied(model, "smoothquant_w8a8", names, tmp_path, quantize=False) as ap:
        assert ap.smoothing["smooth_layer_output_scales"] is False
        assert ap.smoothing["smooth_layer_class"] == "Gemma3RMSNorm"
        assert changed(before, fingerprint(model))  # it did change them while inside
    assert changed(before, fingerprint(model)) == []


def test_fingerprint_sees_one_changed_value(llama):
    before = fingerprint(llama)
    p = dict(llama.named_parameters())["model.layers.1.mlp.up_proj.weight"]
    old = p.data[3, 4].item()
    with torch.no_grad():
        p.data[3, 4] = torch.nextafter(torch.tensor(old), torch.tensor(math.inf))
    try:
        assert changed(before, fingerprint(llama)) == ["model.layers.1.mlp.up_proj.weight"]
    finally:
        with torch.no_grad():
            p.data[3, 4] = old
    assert changed(before, fingerprint(llama)) == []


def test_missing_file_names_the_export(llama, tmp_path):
    from maxact.quant.formats import QuantEvalError

    names = [n for n, m in llama.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    with pytest.raises(QuantEvalError, match="add input_scales to measure.exports"):
        with applied(llama, "int8_static", names, tmp_path):
            pass
    with pytest.raises(QuantEvalError, match="another checkpoint"):
        with applied(llama, "int8_dynamic", ["model.layers.9.mlp.up_proj"], tmp_path):
            pass


def test_format_table_and_names():
    assert set(FORMATS) == {"fp8_static", "int8_static", "int8_dynamic", "fp8_dynamic", "smoothquant_w8a8"}
    assert short_module("model.layers.11.mlp.down_proj") == "layer_11 mlp.down_proj"
    assert short_module("lm_head") == "lm_head"


def test_a_2d_input_keeps_per_token_scales(llama, tmp_path):
    """MoE shared experts call their projections on hidden_states.view(-1, H): a 2-d input. compressed-tensors'
    per-token scales reduce the last dimension of a 3-d input only; applied() feeds a 2-d one as a batch of one,
    so each row still gets its own scale (one huge row does not flatten the others)."""
    names, _ = _calibration(llama, tmp_path, seed=13)
    m = dict(llama.named_modules())[names[0]]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, m.in_features, generator=g)
    x[0] *= 1000.0
    with applied(llama, "int8_dynamic", names, tmp_path), torch.no_grad():
        got = m(x).double()
        assert got.shape == (4, m.out_features)
        want = _direct("int8_dynamic", x, m.weight.detach(), None)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    rows = ((got - x.double() @ m.weight.detach().double().T).norm(dim=-1) / want.norm(dim=-1))
    assert float(rows[1:].max()) < 0.1  # per-tensor scales would zero these rows (relative error 1)


def test_the_norm_probe_holds_in_bfloat16(tmp_path):
    from tiny_models import tiny_model

    model = tiny_model("llama", seed=2, dtype=torch.bfloat16)
    names, _ = _calibration(model, tmp_path, seed=17)
    with applied(model, "smoothquant_w8a8", names, tmp_path, quantize=False) as ap:
        assert ap.smoothing["smooth_layer_output_scales"] is True


def test_a_non_finite_result_gets_no_verdict_of_degree():
    from maxact.stages.quant_eval import verdict

    v = verdict({"format": "int8_static", "status": "measured", "delta_nll_per_token": float("nan")}, 0.05, 0.5)
    assert v["level"] == "not finite"
    assert verdict({"format": "fp8_static", "status": "measured", "delta_nll_per_token": 0.01}, 0.05, 0.5)["level"] == "safe"

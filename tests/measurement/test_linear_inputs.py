"""Linear-layer input statistics (calibration data) against a float64 reference: the same saved tiny
checkpoint loaded by transformers in float64 with eager experts, plain forward pre-hooks on every nn.Linear
and on fused experts (per expert over the tokens routed to it; the down projection's input recomputed from
the expert's own weights and gate), one sample at a time, no padding. The measurement runs in float32 with
transformers' default experts (grouped_mm), in padded batches."""

import pytest
import torch

from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.hooks import Measurement
from maxact.models.registry import FAMILIES, supported_model_types
from tiny_models import save_tiny_checkpoint

REMOTE = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE]


def _load(folder, dtype, experts_implementation=None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(folder)
    cls = AutoModelForImageTextToText if hasattr(cfg, "vision_config") else AutoModelForCausalLM
    kw = {"experts_implementation": experts_implementation} if experts_implementation else {}
    return cls.from_pretrained(folder, dtype=dtype, attn_implementation="eager", **kw).eval()


def _stats(x):
    x = x.abs()
    return {"max_abs": x.amax(0) if len(x) else torch.zeros(x.shape[1], dtype=x.dtype), "sumsq": x.square().sum(0),
            "sumabs": x.sum(0), "count": x.shape[0]}


def _add(table, key, x):
    s = _stats(x)
    r = table.get(key)
    table[key] = s if r is None else {"max_abs": torch.maximum(r["max_abs"], s["max_abs"]), "sumsq": r["sumsq"] + s["sumsq"],
                                      "sumabs": r["sumabs"] + s["sumabs"], "count": r["count"] + s["count"]}


def reference(folder, samples):
    model = _load(folder, torch.float64, "eager")
    backbone = model.get_decoder()
    ref: dict = {}
    experts: dict = {}
    names = {m: n for n, m in model.named_modules()}

    def linear(name):
        def hook(m, args):
            _add(ref, name, args[0].reshape(-1, args[0].shape[-1]))
        return hook

    def expert(name, n):
        def hook(m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x = x.reshape(-1, x.shape[-1])
            idx = args[1] if len(args) > 1 else next(v for k, v in kwargs.items() if k in ("top_k_index", "router_indices"))
            idx = idx.reshape(x.shape[0], -1)
            for e in range(n):
                xe = x[(idx == e).any(1)]
                _add(experts, (f"{name}.gate_up_proj", e), xe)
                # The down projection's input: the expert's gate_up weight and its own gate, in float64.
                w = m.gate_up_proj[e]
                gu = xe @ w if m.is_transposed else xe @ w.T
                if m.has_bias:
                    gu = gu + m.gate_up_proj_bias[e]
                _add(experts, (f"{name}.down_proj", e), type(m)._apply_gate(m, gu))
        return hook

    for mod in backbone.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(linear(names[mod]))
        if isinstance(getattr(mod, "gate_up_proj", None), torch.nn.Parameter) and getattr(mod, "gate_up_proj").dim() == 3:
            mod.register_forward_pre_hook(expert(names[mod], mod.gate_up_proj.shape[0]), with_kwargs=True)
    with torch.no_grad():
        for s in samples:
            backbone(input_ids=torch.tensor([s]), use_cache=False)
    return ref, experts


def measured(folder, experts_implementation=None, not_recorded=None):
    """(model, samples, linear stats, experts stats): five random samples measured in padded batches of 3
    (``not_recorded``, a dict, receives what the measurement could not record)."""
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 4, 17, 6, 12)]
    model = _load(folder, torch.float32, experts_implementation)
    meas = Measurement(model, len(samples), "cpu", linear_inputs=True)
    run_batches(meas, samples, make_batches([len(s) for s in samples], 3), pad_id=0)
    stats, experts = meas.linear_inputs.stats, meas.linear_inputs.experts
    if not_recorded is not None:
        not_recorded.update(meas.linear_inputs.not_recorded)
    meas.remove()
    return model, samples, stats, experts


def _assert_equal(st, r, key, rtol_max=1e-5, rtol_sums=1e-4):
    """Measured statistics ``st`` against the reference ``r`` (the worst relative difference in the message)."""
    assert int(st["count"]) == r["count"], key
    for k, rtol in (("max_abs", rtol_max), ("sumsq", rtol_sums), ("sumabs", rtol_sums)):
        a, b = st[k].double(), torch.as_tensor(r[k], dtype=torch.float64)
        worst = float(((a - b).abs() / (b.abs() + 1e-6)).max()) if a.numel() else 0.0
        assert torch.allclose(a, b, rtol=rtol, atol=1e-6), (key, k, f"worst relative difference {worst:.2e}")


def expert_row(h: dict, e: int) -> dict:
    """Expert ``e``'s statistics out of a fused weight's host tensors ([E, C], [E]; the scalar count as is)."""
    return {k: (v[e] if v.dim() else v) for k, v in h.items()}


@pytest.mark.parametrize("model_type", TYPES)
def test_linear_inputs_equal_float64_reference(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    missing: dict = {}
    _, samples, got, got_experts = measured(folder, not_recorded=missing)
    ref, ref_experts = reference(folder, samples)
    assert set(got) == set(ref), set(got) ^ set(ref)
    assert missing == {}  # grouped_mm: the down projections' inputs too
    assert {k for k, _ in ref_experts} == set(got_experts)
    n_tokens = sum(len(s) for s in samples)
    for name, r in ref.items():
        assert r["count"] <= n_tokens * 8  # a linear inside an MoE block sees routed copies
        _assert_equal(got[name].host(), r, name)
    for (name, e), r in ref_experts.items():
        h = got_experts[name].host()
        _assert_equal(expert_row(h, e), r, (name, e))


MOE_TYPES = [t for f in FAMILIES if f.moe is not None and not f.remote_code for t in f.model_types]


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_down_proj_inputs_in_routing_order_and_eager_says_why_not(tmp_path, model_type):
    """batched_mm passes _apply_gate its rows in routing order, grouped_mm sorted by expert: both equal the
    reference; eager computes the product inside its per-expert loop, so it is named as not recorded."""
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=3)
    model, samples, _, got_experts = measured(folder, "batched_mm")
    fused = [m for m in model.modules() if hasattr(m, "_apply_gate") and isinstance(getattr(m, "gate_up_proj", None), torch.nn.Parameter)]
    assert fused and not any("_apply_gate" in m.__dict__ for m in fused)  # remove() gave the class's gate back
    _, ref_experts = reference(folder, samples)
    for (name, e), r in ref_experts.items():
        h = got_experts[name].host()
        _assert_equal(expert_row(h, e), r, (name, e))
    missing: dict = {}
    _, _, _, got_experts = measured(folder, "eager", not_recorded=missing)
    assert missing and all(k.endswith(".down_proj") and "eager" in why for k, why in missing.items())
    assert not any(k.endswith(".down_proj") for k in got_experts) and set(missing) == {k.replace("gate_up_proj", "down_proj") for k in got_experts}

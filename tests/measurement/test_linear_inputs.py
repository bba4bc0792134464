"""Linear-layer input statistics (calibration data) against a float64 reference: the same saved tiny
checkpoint loaded by transformers in float64, plain forward pre-hooks on every nn.Linear (and on fused
experts, per expert over the tokens routed to it), one sample at a time, no padding."""

import pytest
import torch

from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.hooks import Measurement
from maxact.models.registry import FAMILIES, supported_model_types
from tiny_models import save_tiny_checkpoint

REMOTE = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE]


def _load(folder, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(folder)
    cls = AutoModelForImageTextToText if hasattr(cfg, "vision_config") else AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=dtype, attn_implementation="eager", experts_implementation="eager").eval()


def reference(folder, samples):
    model = _load(folder, torch.float64)
    backbone = model.get_decoder()
    ref: dict = {}
    experts: dict = {}
    names = {m: n for n, m in model.named_modules()}

    def linear(name):
        def hook(m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).abs()
            r = ref.setdefault(name, {"max_abs": torch.zeros(x.shape[1], dtype=torch.float64), "sumsq": 0.0, "sumabs": 0.0, "count": 0})
            r["max_abs"] = torch.maximum(r["max_abs"], x.amax(0))
            r["sumsq"] = r["sumsq"] + x.square().sum(0)
            r["sumabs"] = r["sumabs"] + x.sum(0)
            r["count"] += x.shape[0]
        return hook

    def expert(name, n):
        def hook(m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x = x.reshape(-1, x.shape[-1])
            idx = args[1] if len(args) > 1 else next(v for k, v in kwargs.items() if k in ("top_k_index", "router_indices"))
            idx = idx.reshape(x.shape[0], -1)
            for e in range(n):
                rows = (idx == e).any(1)
                r = experts.setdefault((name, e), {"max_abs": torch.zeros(x.shape[1], dtype=torch.float64), "sumsq": 0.0, "count": 0})
                xe = x[rows].abs()
                if len(xe):
                    r["max_abs"] = torch.maximum(r["max_abs"], xe.amax(0))
                r["sumsq"] = r["sumsq"] + xe.square().sum(0)
                r["count"] += int(rows.sum())
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


def measured(folder):
    """(model, samples, linear stats, experts stats): five random samples measured in padded batches of 3."""
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 4, 17, 6, 12)]
    model = _load(folder, torch.float32)
    meas = Measurement(model, len(samples), "cpu", linear_inputs=True)
    run_batches(meas, samples, make_batches([len(s) for s in samples], 3), pad_id=0)
    stats, experts = meas.linear_inputs.stats, meas.linear_inputs.experts
    meas.remove()
    return model, samples, stats, experts


@pytest.mark.parametrize("model_type", TYPES)
def test_linear_inputs_equal_float64_reference(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    _, samples, got, got_experts = measured(folder)
    ref, ref_experts = reference(folder, samples)
    assert set(got) == set(ref), set(got) ^ set(ref)
    n_tokens = sum(len(s) for s in samples)
    for name, r in ref.items():
        st = got[name].host()
        assert int(st["count"]) == r["count"]
        assert r["count"] <= n_tokens * 8  # a linear inside an MoE block sees routed copies
        assert torch.allclose(st["max_abs"].double(), r["max_abs"], rtol=1e-5, atol=1e-6), name
        assert torch.allclose(st["sumsq"], r["sumsq"], rtol=1e-4, atol=1e-6), name
        assert torch.allclose(st["sumabs"], r["sumabs"], rtol=1e-4, atol=1e-6), name
    for (name, e), r in ref_experts.items():
        st = got_experts[name].host()
        assert int(st["count"][e]) == r["count"], (name, e)
        assert torch.allclose(st["max_abs"][e].double(), r["max_abs"], rtol=1e-5, atol=1e-6), (name, e)
        assert torch.allclose(st["sumsq"][e], torch.as_tensor(r["sumsq"], dtype=torch.float64), rtol=1e-4, atol=1e-6), (name, e)

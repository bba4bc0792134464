"""Every registered family: tiny random model from its Config class, padded batches, and each
statistic checked against a float64 reference computed from tensors captured with plain hooks on
unpadded single-sample forwards (no engine involved)."""

import pytest
import torch

from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.hooks import Measurement
from maxact.measurement.settings import check_dtype
from maxact.measurement.summary import assemble_result, per_sample_table
from maxact.models.registry import UnsupportedArchitectureError, family_for, layer_points, resolve_backbone, supported_model_types
from tiny_models import TINY_CONFIGS, tiny_model

LENGTHS = [9, 4, 6, 2, 7]


def _samples(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (L,), generator=g).tolist() for L in LENGTHS]


def _first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def reference_capture(model, samples):
    """point name -> list (one per sample) of float64 tensors [rows, channels], captured without the engine."""
    fam = family_for(model.config)
    bb = resolve_backbone(model, fam)
    lps = layer_points(bb, fam)
    store: dict[str, list] = {}
    handles = []

    def keep(name, t):
        store.setdefault(name, []).append(t.detach().double().reshape(-1, t.shape[-1]))

    def out_hook(name, pick=_first):
        return lambda m, i, o: keep(name, pick(o))

    handles.append(lps[0].layer.register_forward_pre_hook(
        lambda m, a, k: keep("embedding_output", a[0] if a else k["hidden_states"]), with_kwargs=True))
    for lp in lps:
        i = lp.index
        handles.append(lp.layer.register_forward_hook(out_hook(f"layer_{i}_hidden")))
        handles.append(lp.attn.register_forward_hook(out_hook(f"layer_{i}_attn_output")))
        handles.append(lp.mlp.register_forward_hook(out_hook(f"layer_{i}_mlp_output")))
        if lp.gate_proj is not None:
            handles.append(lp.gate_proj.register_forward_hook(out_hook(f"layer_{i}_mlp_gate")))
        for suffix, mod in lp.residual_in.items():
            handles.append(mod.register_forward_hook(out_hook(f"layer_{i}_{suffix}")))
        if lp.router is not None:
            spec = fam.moe

            def gate(o, spec=spec):
                g = o[spec.moe_gate_index] if isinstance(o, tuple) else o
                return torch.softmax(g.float(), -1) if spec.moe_gate_transform == "softmax" else g

            handles.append(lp.router.register_forward_hook(out_hook(f"layer_{i}_moe_gate", gate)))
            if spec.router_logits_from_block is not None:
                handles.append(lp.mlp.register_forward_hook(out_hook(f"layer_{i}_router_logits", lambda o, s=spec: o[s.router_logits_from_block])))
            if lp.expert_act is not None:
                handles.append(lp.expert_act.register_forward_pre_hook(lambda m, a, name=f"layer_{i}_mlp_gate": keep(name, a[0])))
    handles.append(getattr(bb, fam.final_norm).register_forward_hook(out_hook("final_layernorm")))
    with torch.no_grad():
        for s in samples:
            per_sample_start = {k: len(v) for k, v in store.items()}
            ids = torch.tensor([s])
            bb(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            # Expert-internal calls are one per expert: merge this sample's pieces into one tensor.
            for k, v in store.items():
                start = per_sample_start.get(k, 0)
                if len(v) - start > 1:
                    store[k] = v[:start] + [torch.cat(v[start:])]
    for h in handles:
        h.remove()
    return store


def _engine(model, samples, batch_size):
    meas = Measurement(model, len(samples), "cpu")
    run_batches(meas, samples, make_batches([len(s) for s in samples], batch_size), pad_id=0)
    ids = [f"s{i}" for i in range(len(samples))]
    out = assemble_result(meas, ids, None), per_sample_table(meas, ids)
    meas.remove()
    return out


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_point_matches_float64_reference(model_type):
    model = tiny_model(model_type)
    samples = _samples()
    result, per_sample = _engine(model, samples, batch_size=3)  # padded batches
    ref = reference_capture(model, samples)
    stats = result["per_layer_stats"]
    assert set(stats) == set(ref), f"points differ: {set(stats) ^ set(ref)}"
    fam = family_for(model.config)
    n_layers = len(resolve_backbone(model, fam).layers)
    assert {f"layer_{i}_hidden" for i in range(n_layers)} <= set(stats)
    for name, pieces in ref.items():
        x = torch.cat(pieces)
        st = stats[name]
        tol = dict(rel=2e-4, abs=2e-5)
        assert st["count"] == x.numel(), name
        assert st["mean"] == pytest.approx(x.mean().item(), **tol), name
        assert st["std"] == pytest.approx(x.std(unbiased=False).item(), **tol), name
        assert st["rms"] == pytest.approx(x.square().mean().sqrt().item(), **tol), name
        assert st["abs_mean"] == pytest.approx(x.abs().mean().item(), **tol), name
        assert st["max"] == pytest.approx(x.max().item(), **tol), name
        assert st["min"] == pytest.approx(x.min().item(), **tol), name
        if not name.endswith(("mlp_gate",)) or fam.moe is None:
            # Per-sample extremes (expert-internal rows have no sample attribution).
            col = per_sample[f"{name}:max"].to_numpy()
            for i, p in enumerate(pieces):
                if len(pieces) == len(samples):
                    assert col[i] == pytest.approx(p.max().item(), **tol), (name, i)
    # The global max is over embedding/hidden/attn/mlp/final-norm only, at the right place.
    glob = {k: v for k, v in ref.items() if k == "embedding_output" or k == "final_layernorm" or k.endswith(("_hidden", "_attn_output", "_mlp_output"))}
    best = max(((abs(v), k) for k, p in glob.items() for v in (torch.cat(p).max().item(), torch.cat(p).min().item())))
    assert abs(result["global_max_activation"]) == pytest.approx(best[0], rel=2e-4)
    assert result["global_max_location"].split(" ")[0] == best[1]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen3_moe", "gpt_oss", "qwen3_5"])
def test_global_max_location_independent_of_batch_size(model_type):
    model = tiny_model(model_type)
    samples = _samples(seed=3)
    r1, _ = _engine(model, samples, batch_size=1)
    r16, _ = _engine(model, samples, batch_size=16)
    assert r1["global_max_location"] == r16["global_max_location"]
    assert r1["global_max_activation"] == pytest.approx(r16["global_max_activation"], rel=1e-5)
    p1, p16 = r1["peak"], r16["peak"]
    assert (p1["sample_id"], p1["position"], p1["channel"]) == (p16["sample_id"], p16["position"], p16["channel"])


def test_cpu_runs_are_deterministic():
    model = tiny_model("qwen2_moe")
    samples = _samples(seed=5)
    a, _ = _engine(model, samples, 2)
    b, _ = _engine(model, samples, 2)
    assert a == b


def test_moe_routing_counts_and_unused_experts():
    model = tiny_model("qwen3_moe")
    samples = _samples()
    result, _ = _engine(model, samples, 3)
    k = model.config.num_experts_per_tok
    for layer, info in result["expert_routing"].items():
        assert sum(info["tokens_per_expert"]) == k * sum(LENGTHS)  # padding never routed
        assert info["unused_experts"] == [e for e, n in enumerate(info["tokens_per_expert"]) if n == 0]


def test_unknown_architecture_is_a_clear_error():
    from transformers import BertConfig

    with pytest.raises(UnsupportedArchitectureError) as e:
        family_for(BertConfig())
    assert "bert" in str(e.value) and "llama" in str(e.value) and "qwen3_moe" in str(e.value)


def test_registry_covers_the_paper_families():
    for mt in ["llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe", "qwen2_5_vl",
               "gemma", "gemma2", "gemma3", "gemma3_text", "gpt_oss", "bailing_moe"]:
        assert mt in supported_model_types()


def test_float16_refused_for_gemma_unless_forced():
    from transformers import Gemma2Config

    fam = family_for(Gemma2Config())
    with pytest.raises(ValueError, match="65,504"):
        check_dtype(fam, torch.float16)
    check_dtype(fam, torch.float16, force=True)
    check_dtype(fam, torch.bfloat16)


def test_host_state_is_every_statistic_in_one_transfer():
    """Measurement.host_state (one copy per dtype) holds exactly each point's state tensors."""
    model = tiny_model("qwen3_moe")
    samples = _samples(seed=3)
    meas = Measurement(model, len(samples), "cpu")
    run_batches(meas, samples, make_batches([len(s) for s in samples], 2), pad_id=0)
    host = meas.host_state()
    assert set(host) == set(meas.points)
    for name, ps in meas.points.items():
        state = ps.state_dict()
        assert set(host[name]) == set(state)
        for key, t in state.items():
            assert host[name][key].dtype == t.dtype and torch.equal(host[name][key], t), (name, key)
        assert ps.finalize(host[name]) == ps.finalize()
    meas.remove()


@pytest.mark.parametrize("model_type, device, expected", [
    ("qwen3", "cpu", "sdpa"), ("qwen3", "cuda", "sdpa"), ("qwen3_5_text", "cuda", "sdpa"),
    ("gemma2", "cpu", "eager"), ("gemma2", "cuda", "eager"),
    ("gpt_oss", "cpu", "eager"), ("gpt_oss", "cuda", "eager"),
])
def test_attention_default_per_family_and_device(model_type, device, expected):
    from transformers import AutoConfig

    from maxact.models.registry import resolve_attention

    fam = family_for(AutoConfig.for_model(model_type))
    assert resolve_attention(fam, None, device) == expected
    assert resolve_attention(fam, "auto", device) == expected


def test_attention_user_choice_wins_unless_the_family_cannot_run_it():
    from transformers import AutoConfig

    from maxact.models.registry import AttentionError, resolve_attention

    qwen, gemma2 = (family_for(AutoConfig.for_model(t)) for t in ("qwen3", "gemma2"))
    assert resolve_attention(qwen, "eager", "cpu") == "eager"
    assert resolve_attention(gemma2, "flex_attention", "cuda") == "flex_attention"
    with pytest.raises(AttentionError) as e:
        resolve_attention(gemma2, "sdpa", "cuda")
    msg = str(e.value)
    assert "'sdpa'" in msg and "gemma2" in msg and "eager, flex_attention" in msg
    with pytest.raises(AttentionError, match="cannot run on cpu"):
        resolve_attention(gemma2, "flex_attention", "cpu")


def test_loader_per_model_type():
    import transformers
    from transformers import AutoConfig

    from maxact.models.registry import UnsupportedArchitectureError, loader_class

    itt, clm = transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM
    for mt, cls in [("qwen3_5", itt), ("qwen3_5_text", clm), ("qwen3_5_moe", itt), ("qwen3_5_moe_text", clm),
                    ("gemma3", itt), ("gemma3_text", clm), ("qwen2_5_vl", itt), ("gpt_oss", clm), ("gemma2", clm)]:
        assert loader_class(family_for(AutoConfig.for_model(mt)), mt) is cls, mt
    with pytest.raises(UnsupportedArchitectureError, match="not a member"):
        loader_class(family_for(AutoConfig.for_model("qwen3")), "gemma2")


def test_kernels_used_names_the_fallbacks():
    import importlib

    from maxact.models.kernels_used import kernels_used

    try:  # what transformers itself tries when it imports the Qwen3.5 code
        importlib.import_module("fla.ops.gated_delta_rule")
        fla = True
    except Exception:
        fla = False
    k = kernels_used(tiny_model("qwen3_5_moe"))
    assert k["attention"] == "sdpa" and k["experts"] == "grouped_mm"
    impl = k["optional"]["chunk_gated_delta_rule"]
    assert impl.startswith("fla.") if fla else impl == "torch reference (fla not importable)"
    assert "causal_conv1d_fn" in k["optional"]
    assert "optional" not in kernels_used(tiny_model("llama"))
    # bailing_hybrid's module also defines KDA kernels; with every layer full attention none is called.
    from transformers import AutoConfig, AutoModelForCausalLM

    from tiny_models import TINY_CONFIGS

    cfg = AutoConfig.for_model("bailing_hybrid", **{**TINY_CONFIGS["bailing_hybrid"], "layer_types": ["full_attention"] * 2})
    assert not any("kda" in n for n in kernels_used(AutoModelForCausalLM.from_config(cfg)).get("optional", {}))

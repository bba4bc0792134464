"""Linear-layer input statistics on CUDA (run on an H200), through the packed-row machinery.

- float32, packed (block-diagonal mask) where the family has that path: every module's and every expert's statistics
  equal the float64 CPU reference of test_linear_inputs.py (plain hooks, one sample at a time) within
  float32 tolerance, the down projections' inputs of fused experts included. Families with linear-attention
  layers (Qwen3.5's Gated DeltaNet, the Bailing hybrid) run flash-linear-attention's Triton kernels on CUDA,
  whose float32 dots used TF32 (10-bit mantissa) before maxact set TRITON_F32_DEFAULT=ieee for float32 runs
  (kernels_used.float32_triton_dots): there within LINEAR_ATTENTION_RTOL, measured under TF32 and not yet
  tightened (not rerun on a GPU since);
- bf16, varlen-packed against padded batches: every nn.Linear's per-channel max |x| within BF16_STEPS bf16
  steps (the two runs' attention kernels round differently, see test_cuda_packing.py), and the same
  number of tokens per module;
- recording the linear inputs adds no host synchronisation to the packed measurement.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_cuda_packing import BF16_STEPS, VARLEN
from test_linear_inputs import MOE_TYPES, TYPES, _assert_equal, _load, expert_row

from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.hooks import Measurement
from maxact.measurement.packing import resolve_packing
from maxact.models.registry import family_for
from tiny_models import call_without_fla, save_tiny_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


LINEAR_ATTENTION_RTOL = 2e-2


def _samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 4, 17, 6, 12, 30, 3)]


def _measure(model, samples, mode: str, dtype):
    method, _ = resolve_packing(family_for(model.config), mode, "cuda", dtype, model)
    meas = Measurement(model, len(samples), torch.device("cuda"), packing=method, linear_inputs=True)
    run_batches(meas, samples, make_batches([len(s) for s in samples], 3, 40, packed=method != "padded"), pad_id=0)
    li = meas.linear_inputs
    out = ({n: st.host() for n, st in li.stats.items()}, {n: st.host() for n, st in li.experts.items()}, method)
    meas.remove()
    return out


@pytest.mark.parametrize("model_type", TYPES)
def test_packed_linear_inputs_on_cuda_equal_float64_reference(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    samples = _samples()
    model = _load(folder, torch.float32).to("cuda")
    block = family_for(model.config).packing.block_mask
    stats, experts, method = _measure(model, samples, "on" if block else "off", torch.float32)
    # the float64 CPU reference, where fla is installed in a process without it (the linear-attention families)
    ref, ref_experts = call_without_fla("test_linear_inputs", "reference", str(folder), samples,
                                        path=[Path(__file__).resolve().parent])
    text = getattr(model.config, "text_config", None) or model.config
    rtol = LINEAR_ATTENTION_RTOL if "linear_attention" in (getattr(text, "layer_types", None) or []) else 1e-4
    assert set(stats) == set(ref)
    for name, r in ref.items():
        _assert_equal(stats[name], r, (name, method), rtol, rtol)
    assert {k for k, _ in ref_experts} == set(experts)
    for (name, e), r in ref_experts.items():
        _assert_equal(expert_row(experts[name], e), r, (name, e, method), rtol, rtol)


@pytest.mark.parametrize("model_type", VARLEN)
def test_varlen_packed_linear_inputs_match_padded_in_bf16(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    samples = _samples()
    model = _load(folder, torch.bfloat16).to("cuda")  # MoE: transformers' default experts (grouped_mm)
    packed, p_exp, method = _measure(model, samples, "on", torch.bfloat16)
    padded, d_exp, _ = _measure(model, samples, "off", torch.bfloat16)
    assert method == "varlen" and set(packed) == set(padded)
    for name in padded:
        a, b = packed[name], padded[name]
        assert int(a["count"]) == int(b["count"]), name
        step = 2.0 ** -7 * b["max_abs"].abs() + 1e-6  # at most one bf16 step of each value
        steps = float(((a["max_abs"] - b["max_abs"]).abs() / step).max())
        assert steps <= BF16_STEPS, (name, f"{steps:.1f} bf16 steps apart")
    for name in d_exp:  # routing may flip on a bf16 tie; every routed copy is counted once either way
        assert int(p_exp[name]["count"].sum()) == int(d_exp[name]["count"].sum()), name


def _host_syncs(fn) -> int:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("model_type", sorted({"llama", *[t for t in MOE_TYPES if t in VARLEN]}))
def test_linear_inputs_add_no_host_sync(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    samples = _samples()
    model = _load(folder, torch.bfloat16).to("cuda")
    batches = make_batches([len(s) for s in samples], 8, 200, packed=True)[:1]

    def run(linear_inputs):
        meas = Measurement(model, len(samples), torch.device("cuda"), packing="varlen", linear_inputs=linear_inputs)
        run_batches(meas, samples, batches, pad_id=0)  # warm
        n = _host_syncs(lambda: run_batches(meas, samples, batches, pad_id=0))
        meas.remove()
        return n

    assert run(True) <= run(False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 5), (333, 200), (8192, 4096), (1500, 12288)])
def test_column_stats_kernel_matches_torch_reference(shape, dtype):
    """The Triton kernel against the torch reference: dense with padding rows, gathered rows sorted by
    expert (gate_up), rows in expert order (down), planted NaN/Inf."""
    from maxact.measurement.kernels import column_stats as K

    g = torch.Generator(device="cuda").manual_seed(sum(shape))
    m, c = shape
    x = (torch.randn(m, c, device="cuda", generator=g) * 10 ** (torch.rand(m, 1, device="cuda", generator=g) * 4 - 2)).to(dtype)
    x[torch.rand(m, c, device="cuda", generator=g) < 1e-3] = float("nan")
    x[torch.rand(m, c, device="cuda", generator=g) < 1e-3] = float("inf")
    valid = torch.rand(m, device="cuda", generator=g) < 0.9
    ids = torch.randint(0, 16, (m * 4,), device="cuda", generator=g)
    srt, perm = torch.sort(ids)
    for kw in ({"valid": valid}, {}, {"rows": perm // 4, "groups": srt, "n_groups": 16},
               {"groups": torch.sort(ids[:m]).values, "n_groups": 16}):
        assert K.supports(x)
        got, ref = K.column_stats(x, **kw), K.column_stats_reference(x, **kw)
        assert torch.equal(got[0], ref[0]) and int(got[3]) == int(ref[3]), list(kw)
        for a, b in zip(got[1:3], ref[1:3]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), list(kw)

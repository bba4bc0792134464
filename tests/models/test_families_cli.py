"""Every registered model type through the user's path: a tiny random checkpoint saved to a folder
(safetensors + tokenizer), measured with the ``maxact measure`` command line on padded batches, and
each layer's residual-stream max/min checked against an independent float64 reference (plain forward
hooks on the same folder loaded by transformers, eager attention, one sample at a time, no padding,
tokenized by its own AutoTokenizer)."""

import json
import subprocess
import sys

import pytest

from maxact.cli import main
from maxact.models.registry import FAMILIES, supported_model_types
from tiny_models import TINY_CONFIGS, reference_layer_extremes, save_tiny_checkpoint

REMOTE_CODE_TYPES = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE_CODE_TYPES]
# Byte-level tokens: lengths 3..45, so a batch of 3 pads its shorter samples.
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 1, "x = [1, 2, 3]", "Grüße aus Köln!", "Ok.",
         "def f(a, b):\n    return a ** b  # power", "Lorem ipsum dolor sit amet, consectetur"]
MAX_LEN = 40
# On the CPU, families without SDPA run eager (flex attention is CUDA-only here).
EXPECTED_ATTENTION = {"gemma2": "eager", "gpt_oss": "eager"}


def test_every_registered_type_is_covered():
    # Ling's bailing_moe needs its hub modelling code; bailing_hybrid (covered) stands in for it.
    assert REMOTE_CODE_TYPES == {"bailing_moe", "bailing_moe_v2"}
    assert set(TYPES) <= set(TINY_CONFIGS), f"no tiny config for {set(TYPES) - set(TINY_CONFIGS)}"


@pytest.mark.parametrize("model_type", TYPES)
def test_saved_checkpoint_through_cli_matches_float64_reference(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=3)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out"
    rc = main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out), "--device", "cpu",
               "--batch-size", "3", "--max-seq-len", str(MAX_LEN)])
    assert rc == 0
    r = json.loads((out / "activation_stats.json").read_text())
    assert r["model_type"] == model_type and r["num_samples"] == len(TEXTS)
    prov = r["provenance"]
    assert prov["attn_implementation"] == EXPECTED_ATTENTION.get(model_type, "sdpa")
    assert prov["kernels"]["attention"] == prov["attn_implementation"]
    assert prov["settings"]["batch_size"] == 3
    ref, n_layers = reference_layer_extremes(folder, TEXTS, MAX_LEN)
    assert r["num_hidden_layers"] == n_layers
    stats = r["per_layer_stats"]
    for i in range(n_layers):
        st = stats[f"layer_{i}_hidden"]
        assert st["max"] == pytest.approx(ref[i][0], rel=1e-4, abs=1e-5), (model_type, i)
        assert st["min"] == pytest.approx(ref[i][1], rel=1e-4, abs=1e-5), (model_type, i)


def test_entry_point_and_attention_refusal(tmp_path):
    """The installed ``maxact`` command itself; SDPA asked for Gemma 2 stops with the ones that work."""
    folder = save_tiny_checkpoint("gemma2", tmp_path / "model")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:3])))
    cmd = [sys.executable, "-m", "maxact.cli", "measure", "--model", str(folder), "--texts", str(texts), "--device", "cpu"]
    bad = subprocess.run(cmd + ["--out", str(tmp_path / "bad"), "--attn-implementation", "sdpa"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "'sdpa'" in bad.stderr and "gemma2" in bad.stderr and "eager" in bad.stderr, bad.stderr
    ok = subprocess.run(cmd + ["--out", str(tmp_path / "ok"), "--batch-size", "3"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    r = json.loads((tmp_path / "ok" / "activation_stats.json").read_text())
    assert r["provenance"]["attn_implementation"] == "eager"

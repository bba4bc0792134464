"""The `maxact` command line: measure (same code as the rule), card, and bad input."""

import json

import pytest

from maxact.cli import main, read_texts
from tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # A user's checkpoint folder (safetensors + tokenizer), named like a checkpoint.
    return str(save_tiny_checkpoint("gemma3_text", tmp_path_factory.mktemp("ckpt") / "cli-tiny", seed=2))


def _texts(tmp_path, lines):
    p = tmp_path / "texts.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def test_measure_then_card(tmp_path, model_dir, capsys):
    texts = _texts(tmp_path, [{"id": "a", "text": "hello world " * 5}, {"id": "b", "text": "x = [1, 2, 3]\n" * 3}])
    out = tmp_path / "out"
    rc = main(["measure", "--model", model_dir, "--texts", str(texts), "--out", str(out), "--max-seq-len", "64", "--device", "cpu"])
    assert rc == 0
    r = json.loads((out / "activation_stats.json").read_text())
    assert r["num_samples"] == 2 and r["provenance"]["tokenization"]["add_special_tokens"] is False
    assert not (out / "layer_stats.parquet").exists()  # the tidy table is the aggregate's, over all checkpoints
    assert "global max" in capsys.readouterr().out
    rc = main(["card", str(out)])
    assert rc == 0
    card = json.loads((out / "cli-tiny.activation_card.json").read_text()) if (out / "cli-tiny.activation_card.json").exists() else None
    md = next(out.glob("*.activation_card.md")).read_text()
    assert "Maximum activation M" in md and "residual" in md
    js = json.loads(next(out.glob("*.activation_card.json")).read_text())
    assert js["M"] == pytest.approx(abs(r["global_max_activation"]))
    assert card is None or card["location"] == r["global_max_location"]


def test_add_special_tokens_flag(tmp_path, model_dir):
    texts = _texts(tmp_path, [{"id": "a", "text": "hello"}])
    out = tmp_path / "o"
    assert main(["measure", "--model", model_dir, "--texts", str(texts), "--out", str(out), "--device", "cpu", "--add-special-tokens"]) == 0
    assert json.loads((out / "activation_stats.json").read_text())["provenance"]["tokenization"]["add_special_tokens"] is True


@pytest.mark.parametrize("content, message", [
    (b'{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n', "duplicate id"),
    (b'{"id": "a", "txt": "no text"}\n', "'text' field"),
    (b"\xff\xfe not utf8\n", "not a UTF-8 JSON line"),
    (b"", "empty"),
])
def test_bad_texts_file_names_the_line(tmp_path, content, message):
    p = tmp_path / "t.jsonl"
    p.write_bytes(content)
    from maxact.errors import InputError

    with pytest.raises(InputError) as e:
        read_texts(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_card_on_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    assert "activation_stats.json" in capsys.readouterr().err


def test_gpu_only_kernel_on_cpu_is_a_clear_error(tmp_path, model_dir, capsys, monkeypatch):
    """transformers binds fla's Triton kernels at import, whatever the device: a CPU run stops before any batch."""
    import maxact.stages.loading

    monkeypatch.setattr(maxact.stages.loading, "package_kernels",
                        lambda model: {"chunk_gated_delta_rule": "fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule"})
    texts = _texts(tmp_path, [{"id": "a", "text": "hello"}])
    out = tmp_path / "o"
    assert main(["measure", "--model", model_dir, "--texts", str(texts), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "chunk_gated_delta_rule -> fla." in err and "Measure on CUDA" in err and "fla-core" in err
    assert not (out / "activation_stats.json").exists()

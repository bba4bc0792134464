"""`maxact quant-eval` as a user runs it: a checkpoint folder measured with the calibration exports, then each
format scored on held-out texts; bad input refused with the fix, nothing written."""

from __future__ import annotations

import json

import pytest

from maxact.cli import main
from tiny_models import save_tiny_checkpoint

pytest.importorskip("compressed_tensors")

CAL = [{"id": f"c{i}", "text": t} for i, t in enumerate(["The quick brown fox jumps over the lazy dog. " * 4,
                                                         "def f(x):\n    return [i * i for i in range(x)]\n" * 3,
                                                         "Numbers: 3.14159, 2.71828, 1.41421, 1.73205. " * 3])]
HELD = [{"id": f"h{i}", "text": t} for i, t in enumerate(["A held-out sentence about rivers and mountains. " * 3,
                                                          "SELECT name FROM users WHERE id = 42; -- query\n" * 3])]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    model = save_tiny_checkpoint("llama", d / "tiny-llama", seed=5)
    out = d / "out"
    assert main(["measure", "--model", str(model), "--texts", str(_jsonl(d / "cal.jsonl", CAL)), "--out", str(out),
                 "--device", "cpu", "--max-seq-len", "64", "--export", "input_scales,smoothquant"]) == 0
    return d, out


def test_quant_eval_then_card(measured, capsys):
    d, out = measured
    rc = main(["quant-eval", str(out), "--texts", str(_jsonl(d / "held.jsonl", HELD)), "--max-tokens", "48", "--device", "cpu",
               "--llama-cpp", "off"])
    assert rc == 0
    doc = json.loads((out / "quant_eval.json").read_text())
    assert doc["heldout"]["sample_ids"] == ["h0", "h1"] and doc["heldout"]["source"] == "given texts"
    assert set(doc["formats"]) == {"unquantized", "fp8_static", "int8_static", "int8_dynamic", "fp8_dynamic", "smoothquant_w8a8"}
    assert doc["formats"]["unquantized"]["delta_nll_per_token"] == 0.0
    assert all(e["status"] == "measured" for e in doc["formats"].values())
    assert doc["formats"]["smoothquant_w8a8"]["smoothing"]["tensors_changed"] == 2 * 7
    prov = doc["provenance"]
    assert prov["libraries"]["compressed-tensors"] and prov["libraries"]["llmcompressor"] and prov["dtype"] == "float32"
    assert doc["llama_cpp"] == {"status": "skipped", "reason": "quant_eval.llama_cpp.enabled is false"}
    text = capsys.readouterr().out
    assert "INT8 static per-tensor" in text and "held-out samples" in text
    assert main(["card", str(out)]) == 0
    md = next(out.glob("*.activation_card.md")).read_text()
    assert "**Quantized formats**" in md and "INT8 static per-tensor (maxact's input_scale)" in md


@pytest.mark.parametrize("args, message", [
    (["--formats", "int8_static,int4"], "--formats: unknown int4"),
    (["--n-samples", "0"], "--n-samples"),
    (["--alpha", "1.5"], "--alpha"),
])
def test_bad_settings_are_refused(measured, capsys, args, message):
    d, out = measured
    try:  # argparse refuses range errors itself (exit 2); the format list is checked by the command (also 2)
        rc = main(["quant-eval", str(out), "--texts", str(_jsonl(d / "held.jsonl", HELD)), "--device", "cpu", *args])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err


def test_measured_samples_are_not_held_out(measured, capsys):
    d, out = measured
    before = (out / "quant_eval.json").read_bytes() if (out / "quant_eval.json").exists() else None
    rc = main(["quant-eval", str(out), "--texts", str(_jsonl(d / "bad.jsonl", [*HELD, CAL[1]])), "--device", "cpu"])
    assert rc == 2
    assert "measured (calibration) samples by id: ['c1']" in capsys.readouterr().err
    assert ((out / "quant_eval.json").read_bytes() if (out / "quant_eval.json").exists() else None) == before


def test_a_result_without_the_input_scales_is_refused(tmp_path, capsys):
    model = save_tiny_checkpoint("llama", tmp_path / "m", seed=1)
    out = tmp_path / "plain"
    assert main(["measure", "--model", str(model), "--texts", str(_jsonl(tmp_path / "c.jsonl", CAL)), "--out", str(out),
                 "--device", "cpu", "--max-seq-len", "32"]) == 0
    rc = main(["quant-eval", str(out), "--texts", str(_jsonl(tmp_path / "h.jsonl", HELD)), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "input_scales_fp8.safetensors" in err and "measure.exports" in err
    assert not (out / "quant_eval.json").exists()
    assert main(["quant-eval", str(tmp_path / "nowhere")]) == 2
    assert "not a measured result folder" in capsys.readouterr().err

"""Top values in the paper's form (`_top5_stats.json`) and scan_top5.py's structural indicators, on inputs with
answers worked out by hand, and on the paper's own vendored files."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxact.study.topk import indicators, read_top5, top5_stats

PUBLISHED = Path(__file__).resolve().parents[2] / "resources" / "published" / "max_act_llm"


def _rows(values):
    return [{"value": v, "sample_id": "s", "position": i, "token_id": 0, "channel": 0, "token": "x"} for i, v in enumerate(values)]


def test_top5_file_in_the_papers_form():
    result = {"checkpoint": "toy", "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 4, "num_samples": 3,
              "top_activations": {
                  "layer_0_hidden": _rows([-9.0, 8.0, 7.0, 6.0, 5.0, 4.0]),
                  "layer_1_hidden": _rows([9.0, 1.0]),
                  "final_layernorm": _rows([3.0, -3.0, 2.0]),
                  "layer_0_mlp_gate": _rows([100.0]),  # not an eligible point: never in the file
              }}
    f = top5_stats(result, k=6)
    assert set(f["per_layer_stats"]) == {"layer_0_hidden", "layer_1_hidden", "final_layernorm"}
    h0 = f["per_layer_stats"]["layer_0_hidden"]
    assert h0["top5_abs"] == [9.0, 8.0, 7.0, 6.0, 5.0] and h0["top5_signed"] == [-9.0, 8.0, 7.0, 6.0, 5.0]
    assert h0["topk_abs"] == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0] and h0["top5_abs_mean"] == 7.0
    # the union of every point's top 5 sorted by (|a|, signed) from the largest, cut to k = 6:
    # (9, 9) from layer 1 before (9, -9) from layer 0, then 8, 7, 6, 5
    assert f["global_top5_abs"] == [9.0, 9.0, 8.0, 7.0, 6.0, 5.0]
    assert f["global_top5_signed"] == [9.0, -9.0, 8.0, 7.0, 6.0, 5.0]
    assert f["global_top5_abs_mean"] == pytest.approx(44 / 6)


def test_indicators_worked_by_hand():
    f = {"model_name": "toy", "global_top5_abs": [10.0, 10.0, 8.0, 5.0, 5.0], "global_top5_signed": [10.0, 10.0, 8.0, 5.0, 5.0],
         "per_layer_stats": {"a": {"top5_abs": [10.0]}, "b": {"top5_abs": [9.5]}, "c": {"top5_abs": [8.9]}}}
    ind = indicators(f)
    assert ind["top1_abs"] == 10.0 and ind["top_mean"] == 7.6 and ind["concentration"] == pytest.approx(10 / 7.6)
    assert ind["saturated"] is False and ind["sign"] == "all-pos" and ind["decay5_over_1"] == 0.5
    assert ind["hot_points"] == ["a", "b"] and ind["n_hot_points"] == 2  # 8.9 < 0.9 * 10
    f["global_top5_signed"] = [10.0, -10.0, 8.0, 5.0, 5.0]
    assert indicators(f)["sign"] == "mixed"
    f["global_top5_abs"] = [7.0] * 5
    f["global_top5_signed"] = [-7.0] * 5
    assert indicators(f)["saturated"] is True and indicators(f)["sign"] == "all-neg"


def test_indicators_of_the_papers_own_files():
    """On the vendored Qwen3-8B file: the concentration agrees with the mean the file itself records."""
    f = read_top5(PUBLISHED / "Qwen3" / "Qwen3-8B_top5_stats.json.gz")
    ind = indicators(f)
    assert ind["top1_abs"] == max(f["global_top5_abs"]) and ind["n_top"] == 100
    assert ind["concentration"] == pytest.approx(ind["top1_abs"] / f["global_top5_abs_mean"])
    files = sorted(PUBLISHED.rglob("*_top5_stats.json.gz"))
    assert len(files) == 27 and all(indicators(read_top5(p)) is not None for p in files)

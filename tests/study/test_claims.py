"""Claims logic on a synthetic set of result files with hand-computed answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maxact.report.claims_markdown import claims_markdown
from maxact.study.claims import bf16_step, compare_measured_published, compute_claims, spearman
from maxact.study.resultset import discover_result_files, load_result


def _st(mx, mn):
    return {"mean": 0.0, "std": 1.0, "abs_mean": 0.1, "rms": 1.0, "max": float(mx), "min": float(mn), "count": 100.0,
            "abs_q99": 0.5}


def _pls(n_layers, peak_comp=None, peak=None, extra=None):
    """Small stats everywhere, ``peak`` (signed) at ``peak_comp``."""
    pls = {"embedding_output": _st(0.5, -0.5)}
    for i in range(n_layers):
        pls[f"layer_{i}_attn_output"] = _st(1.0, -1.0)
        pls[f"layer_{i}_mlp_output"] = _st(1.0, -1.0)
        pls[f"layer_{i}_hidden"] = _st(2.0, -2.0)
    pls["final_layernorm"] = _st(3.0, -3.0)
    if peak_comp:
        mx, mn = pls[peak_comp]["max"], pls[peak_comp]["min"]
        pls[peak_comp] = _st(peak, mn) if peak > 0 else _st(mx, peak)
    pls.update(extra or {})
    return pls


def _published(root: Path, folder: str, name: str, n_layers: int, peak_comp: str, peak: float, extra=None):
    pls = _pls(n_layers, peak_comp, peak, extra)
    d = {"model_name": name, "model_type": "toy", "num_hidden_layers": n_layers, "hidden_size": 8, "num_samples": 3,
         "max_seq_len": 16, "global_max_activation": peak, "global_max_location": f"{peak_comp} ({'max' if peak > 0 else 'min'})",
         "per_layer_stats": pls}
    p = root / folder / f"{name}_activation_stats.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(d))
    return p


META = {
    "A-7B": {"family": "toya2", "generation": "2", "role": "dense", "params_b": 7, "main_analysis": True},
    "A-14B": {"family": "toya2", "generation": "2", "role": "dense", "params_b": 14, "main_analysis": True},
    "A-16B-A2B": {"family": "toya2", "generation": "2", "role": "moe", "params_b": 16, "active_params_b": 2, "main_analysis": True},
    "A-3B": {"family": "toya3", "generation": "3", "role": "dense", "params_b": 3, "main_analysis": True},
    "B-1B": {"family": "toyb", "generation": "1", "role": "dense", "params_b": 1, "main_analysis": True},
    "Run-5T": {"family": "run", "role": "intermediate", "params_b": 4, "main_analysis": False},
    "Run-10T": {"family": "run", "role": "intermediate", "params_b": 4, "main_analysis": False},
    "Run-20T": {"family": "run", "role": "moe", "params_b": 4, "main_analysis": True},
}


@pytest.fixture
def synthetic(tmp_path):
    """Published: main set A-7B 1000, A-14B -10000, A-16B-A2B 400, A-3B 500, B-1B 10 (final norm), Run-20T 60;
    not main: Run-5T 1e5, Run-10T 50. Measured: a-7b-local (published_name A-7B), 1004 at layer_1_hidden."""
    pub = tmp_path / "pub"
    _published(pub, "toya", "A-7B", 4, "layer_1_hidden", 1000.0)
    _published(pub, "toya", "A-14B", 4, "layer_2_hidden", -10000.0)
    _published(pub, "toya", "A-16B-A2B", 4, "layer_3_hidden", 400.0,
               extra={"layer_0_router_logits": _st(1e9, -1e9), "layer_0_moe_gate": _st(1e8, -1e8)})
    _published(pub, "toya", "A-3B", 4, "layer_0_hidden", 500.0)
    _published(pub, "toyb", "B-1B", 2, "final_layernorm", 10.0, extra={"layer_0_mlp_gate": _st(1e8, -1e8)})
    _published(pub, "run", "Run-5T", 2, "layer_1_hidden", -1e5)
    _published(pub, "run", "Run-10T", 2, "layer_1_hidden", -50.0)
    _published(pub, "run", "Run-20T", 2, "layer_0_hidden", 60.0)
    # measured counterpart of A-7B: 1004 where the paper has 1000 (one bf16 step at 1000 is 4),
    # 3.0 where the paper has 3.5 at layer_0_hidden's max (far beyond one step, 2**-6), and an extra
    # component outside the paper's set with a huge value that must not count.
    pls = _pls(4, "layer_1_hidden", 1004.0)
    pls["layer_0_hidden"] = _st(3.0, -2.0)
    pls["layer_2_attn_residual_in"] = _st(1e7, -1e7)
    meas = tmp_path / "measured" / "measure" / "a-7b-local"
    meas.mkdir(parents=True)
    (meas / "activation_stats.json").write_text(json.dumps({
        "checkpoint": "a-7b-local", "model_name": "org/A-7B", "model_type": "toy", "num_hidden_layers": 4, "hidden_size": 8,
        "global_max_activation": 1004.0, "global_max_location": "layer_1_hidden (max)",
        "provenance": {"model_id": "org/A-7B", "tokenization": {"add_special_tokens": False}},
        "meta": {"family": "toya2", "generation": "2", "role": "dense", "params_b": 7, "main_analysis": True, "published_name": "A-7B"},
        "peak": {"component": "layer_1_hidden", "value": 1004.0},
        "per_layer_stats": pls,
    }))
    # the published A-7B gets 3.5 at layer_0_hidden max for the comparison
    a7 = pub / "toya" / "A-7B_activation_stats.json"
    d = json.loads(a7.read_text())
    d["per_layer_stats"]["layer_0_hidden"] = _st(3.5, -2.0)
    a7.write_text(json.dumps(d))
    files = discover_result_files([pub, tmp_path / "measured"])
    return [load_result(p, META) for p in files]


def test_span_and_counts(synthetic):
    c = compute_claims(synthetic, pairs=[])
    # 8 published + 1 measured, the measured one replaces published A-7B
    assert c["n_checkpoints"] == 8
    assert c["n_main"] == 6
    assert c["superseded_published"] == ["A-7B"]
    assert c["sources"] == {"measured": 1, "published": 7}
    sp = c["span_orders_of_magnitude"]
    # main: 1004, 10000, 400, 500, 10, 60 -> log10(10000 / 10) = 3 (Run-5T's 1e5 is not main analysis)
    assert sp["value"] == pytest.approx(3.0)
    assert sp["max"]["name"] == "A-14B" and sp["min"]["name"] == "B-1B"
    assert sp["n"] == 6
    json.dumps(c)  # serialisable


def test_span_all_checkpoints(synthetic):
    c = compute_claims(synthetic, pairs=[], main_only=False)
    assert c["span_orders_of_magnitude"]["value"] == pytest.approx(4.0)  # 1e5 / 10
    assert c["span_orders_of_magnitude"]["max"]["name"] == "Run-5T"


def test_residual_share_with_exception(synthetic):
    rs = compute_claims(synthetic, pairs=[])["residual_share"]
    assert (rs["n_residual"], rs["n_total"]) == (5, 6)
    assert rs["exceptions"] == [{"name": "B-1B", "source": "published", "component": "final_layernorm", "kind": "final_norm",
                                 "layer": None, "global_max": 10.0, "residual_ties": []}]


def test_matched_pair_ratio_and_missing(synthetic):
    c = compute_claims(synthetic, pairs=[{"moe": "A-16B-A2B", "dense": "A-14B"}, {"moe": "A-16B-A2B", "dense": "A-7B"},
                                         {"moe": "nope", "dense": "A-14B"}])
    p0, p1, p2 = c["matched_pairs"]
    assert (p0["moe_max"], p0["dense_max"], p0["ratio"]) == (400.0, 10000.0, pytest.approx(25.0))
    # A-7B resolves to the measured record through its published_name
    assert p1["dense_source"] == "measured" and p1["ratio"] == pytest.approx(1004.0 / 400.0)
    assert p2["ratio"] is None and p2["missing"] == ["nope"]


def test_training_trajectory(synthetic):
    tt = compute_claims(synthetic, pairs=[])["training_trajectory"]
    assert list(tt) == ["Run"]
    t = tt["Run"]
    assert [s["tokens_t"] for s in t["stages"]] == [5.0, 10.0, 20.0]
    assert [s["global_max_abs"] for s in t["stages"]] == [1e5, 50.0, 60.0]
    assert t["direction"] == "non-monotone" and t["monotone"] is False
    assert t["first_to_last_ratio"] == pytest.approx(60.0 / 1e5)


def test_family_trends_and_size_trend(synthetic):
    c = compute_claims(synthetic, pairs=[])
    ft = c["family_trends"]["toya"]
    assert ft["generations"] == ["2", "3"]
    g2, g3 = ft["stages"]
    assert sorted(x["name"] for x in g2["checkpoints"]) == ["A-14B", "A-16B-A2B", "a-7b-local"]
    assert g2["median_global_max"] == pytest.approx(1004.0) and g2["max_global_max"] == 10000.0
    assert g3["median_global_max"] == 500.0
    assert ft["median_direction"] == "decreasing"
    # A-3B (3B) is nearest to the 7B dense one (size ratio 2.33 <= 2.5)
    assert [(m["older"], m["newer"]) for m in ft["size_matched"]] == [("a-7b-local", "A-3B")]
    st = c["size_trend"]["toya2"]
    assert [p["name"] for p in st["points"]] == ["a-7b-local", "A-14B"]  # MoE left out, two dense remain
    assert st["left_out"] == ["A-16B-A2B"]
    assert st["spearman_params_vs_log_max"] is None  # fewer than 3 points


def test_base_vs_instruct_and_text_vs_vl(tmp_path):
    _published(tmp_path, "q", "Q-7B", 2, "layer_1_hidden", 100.0)
    _published(tmp_path, "q", "Q-7B-Instruct", 2, "layer_1_hidden", 200.0)
    _published(tmp_path, "q", "Q-VL-7B", 2, "layer_0_hidden", -50.0)
    _published(tmp_path, "q", "Q-VL-3B", 2, "layer_0_hidden", -50.0)  # no text 3B: unmatched
    _published(tmp_path, "g", "G-4b-it", 2, "layer_0_hidden", 5.0)     # no base: unmatched
    recs = [load_result(p) for p in discover_result_files([tmp_path])]
    c = compute_claims(recs, pairs=[])
    assert [(b["base"], b["instruct"], b["ratio"], b["same_location"]) for b in c["base_vs_instruct"]] == [("Q-7B", "Q-7B-Instruct", 2.0, True)]
    assert [(t["text"], t["vl"], t["ratio"]) for t in c["text_vs_vl"]] == [("Q-7B", "Q-VL-7B", 0.5)]


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1], [1]) is None
    assert spearman([1, 2], [5, 5]) is None


def test_bf16_step():
    assert bf16_step(1000.0) == 4.0          # 2**9 <= 1000 < 2**10 -> 2**(9-7)
    assert bf16_step(1024.0) == 8.0
    assert bf16_step(-3.5) == 2.0 ** -6
    assert bf16_step(1.0) == 2.0 ** -7
    assert bf16_step(0.0) == 0.0


def test_compare_measured_published(synthetic):
    df = compare_measured_published(synthetic)
    assert set(df["name"]) == {"a-7b-local"} and set(df["published_name"]) == {"A-7B"}
    assert "layer_2_attn_residual_in" not in set(df["component"])  # only components both files have
    peak = df[(df["component"] == "layer_1_hidden") & (df["stat"] == "max")].iloc[0]
    assert (peak["measured"], peak["published"], peak["abs_diff"], peak["bf16_step"]) == (1004.0, 1000.0, 4.0, 4.0)
    assert bool(peak["within_bf16_step"]) is True
    off = df[(df["component"] == "layer_0_hidden") & (df["stat"] == "max")].iloc[0]
    assert off["abs_diff"] == 0.5 and bool(off["within_bf16_step"]) is False
    assert int((~df["within_bf16_step"]).sum()) == 1
    # every other component identical
    assert (df.drop(index=[peak.name, off.name])["abs_diff"] == 0).all()


def test_measured_global_max_ignores_extra_components(synthetic):
    m = next(r for r in synthetic if r["source"] == "measured")
    c = compute_claims([m], pairs=[])
    assert c["span_orders_of_magnitude"]["max"]["global_max_abs"] == 1004.0
    assert c["residual_share"]["n_residual"] == 1


def test_duplicate_names_rejected(synthetic):
    with pytest.raises(ValueError, match="two published"):
        compute_claims(synthetic + [r for r in synthetic if r["name"] == "B-1B"], pairs=[])


def test_markdown_mentions_every_section(synthetic):
    c = compute_claims(synthetic, pairs=[{"moe": "A-16B-A2B", "dense": "A-14B"}])
    md = claims_markdown(c)
    for s in ("span", "B-1B", "A-16B-A2B", "Training trajectory", "Run-5T", "Generations", "Size trend"):
        assert s in md
    for block in md.split("\n\n"):  # every table row has as many cells as its header
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in rows}) <= 1, block
    assert not math.isnan(c["span_orders_of_magnitude"]["value"])

"""``maxact aggregate`` over the vendored published results, checked against an independent recomputation."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from maxact.stages.aggregate import AggregateOutputs, add_aggregate_arguments, aggregate_main, run_aggregate

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_ROOT = REPO / "resources" / "published"
PAPER = REPO / "config" / "paper.yaml"


def independent_summary():
    """A few lines of plain json/math over the published files, sharing no code with maxact."""
    cfg = yaml.safe_load(PAPER.read_text())
    not_main = {c["name"] for c in cfg["checkpoints"] if c.get("main_analysis") is False}
    glob_re = re.compile(r"^(embedding_output|final_layernorm|layer_\d+_(hidden|attn_output|mlp_output))$")
    out = {}
    for p in sorted(PUBLISHED_ROOT.rglob("*_activation_stats.json")):
        d = json.loads(p.read_text())
        best = max(((abs(s[e]), comp) for comp, s in d["per_layer_stats"].items() if glob_re.match(comp) for e in ("max", "min")),
                   key=lambda t: t[0])
        out[d["model_name"]] = {"abs": best[0], "main": d["model_name"] not in not_main,
                                "residual": d["global_max_location"].split(" ")[0].endswith("_hidden")}
    return out, [(p["moe"], p["dense"]) for p in cfg["matched_pairs"]]


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    out = tmp_path_factory.mktemp("agg")
    claims = run_aggregate([PUBLISHED_ROOT], out, config_paths=[PAPER])
    return claims, out


def test_writes_all_outputs(aggregated):
    claims, out = aggregated
    for f in AggregateOutputs.in_dir(out).all():
        assert f.exists(), f
    assert not list(out.glob(".*tmp"))  # no temp files left behind
    on_disk = json.loads((out / "claims.json").read_text())
    assert on_disk["span_orders_of_magnitude"]["value"] == pytest.approx(claims["span_orders_of_magnitude"]["value"])
    gt = pd.read_csv(out / "global_max.csv")
    ind, _ = independent_summary()
    assert sorted(gt["name"]) == sorted(ind)
    assert (gt["source"] == "published").all()
    for _, r in gt.iterrows():
        assert r["global_max_abs"] == ind[r["name"]]["abs"]
    lt = pd.read_parquet(out / "layer_stats.parquet")
    assert set(lt["name"]) == set(ind) and len(lt) > len(ind)
    cmp = pd.read_csv(out / "measured_vs_published.csv")
    assert len(cmp) == 0 and "within_bf16_step" in cmp.columns


def test_claims_match_independent_recomputation(aggregated):
    claims, _ = aggregated
    ind, pairs = independent_summary()
    main = {n: v for n, v in ind.items() if v["main"]}
    assert claims["n_checkpoints"] == len(ind)
    assert claims["n_main"] == len(main)
    assert len(main) < len(ind)  # the intermediate checkpoints are left out
    vals = [v["abs"] for v in main.values()]
    span = math.log10(max(vals) / min(vals))
    sp = claims["span_orders_of_magnitude"]
    assert sp["value"] == pytest.approx(span, rel=1e-12)
    assert sp["max"]["global_max_abs"] == max(vals) and sp["min"]["global_max_abs"] == min(vals)
    assert 3.0 < sp["value"] < 4.5  # sanity bound: several orders of magnitude, as the paper reports

    rs = claims["residual_share"]
    n_res = sum(v["residual"] for v in main.values())
    assert (rs["n_residual"], rs["n_total"]) == (n_res, len(main))
    assert {e["name"] for e in rs["exceptions"]} == {n for n, v in main.items() if not v["residual"]}
    assert rs["n_residual"] > rs["n_total"] / 2  # sanity: the residual stream holds most global maxima

    got = {(p["moe"], p["dense"]): p for p in claims["matched_pairs"]}
    assert set(got) == set(pairs) and pairs
    for moe, dense in pairs:
        ratio = ind[dense]["abs"] / ind[moe]["abs"]
        assert got[(moe, dense)]["ratio"] == pytest.approx(ratio, rel=1e-12)
        assert got[(moe, dense)]["ratio"] > 1  # sanity: the dense model has the larger peak

    tt = claims["training_trajectory"]
    ling = [n for n in ind if n.startswith("Ling-mini-")]
    assert [s["name"] for s in tt["Ling-mini"]["stages"]] == sorted(ling, key=lambda n: float(n.split("-")[-1][:-1]))
    assert [s["global_max_abs"] for s in tt["Ling-mini"]["stages"]] == [ind[s["name"]]["abs"] for s in tt["Ling-mini"]["stages"]]


def test_measured_results_beside_published(tmp_path):
    """A measured copy of one published checkpoint is paired with it and replaces it in the claims."""
    src = PUBLISHED_ROOT / "max_act_llm" / "Qwen3" / "Qwen3-8B_activation_stats.json"
    d = json.loads(src.read_text())
    d.update(checkpoint="qwen3-8b-here", provenance={"model_id": "Qwen/Qwen3-8B"},
             meta={"family": "qwen3", "published_name": "Qwen3-8B", "main_analysis": True})
    m = tmp_path / "results" / "measure" / "qwen3-8b-here"
    m.mkdir(parents=True)
    (m / "activation_stats.json").write_text(json.dumps(d))
    out = tmp_path / "out"
    claims = run_aggregate([PUBLISHED_ROOT, tmp_path / "results"], out, config_paths=[PAPER])
    assert claims["superseded_published"] == ["Qwen3-8B"]
    cmp = pd.read_csv(out / "measured_vs_published.csv")
    assert len(cmp) > 0 and cmp["within_bf16_step"].all() and (cmp["abs_diff"] == 0).all()
    gt = pd.read_csv(out / "global_max.csv")
    assert (gt["source"] == "measured").sum() == 1


def test_cli_entry(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    add_aggregate_arguments(ap)
    a = ap.parse_args(["--results", str(PUBLISHED_ROOT), "--out", str(tmp_path / "o"), "--config", str(PAPER)])
    assert aggregate_main(a) == 0
    assert "residual stream" in capsys.readouterr().out
    assert (tmp_path / "o" / "claims.json").exists()


def test_cli_subcommand_wired(tmp_path):
    cli = pytest.importorskip("maxact.cli")
    rc = cli.main(["aggregate", "--results", str(PUBLISHED_ROOT), "--out", str(tmp_path / "o")])
    assert rc == 0 and (tmp_path / "o" / "global_max.csv").exists()
    # No config: nothing is looked up beside the package (no pairs, meta from the files and folder names).
    assert json.loads((tmp_path / "o" / "claims.json").read_text())["matched_pairs"] == []


def test_rule_and_cli_share_one_path(tmp_path):
    """The aggregate rule's script and `maxact aggregate` give the same files for the same inputs."""
    import yaml as _yaml

    from maxact.stages.aggregate import PUBLISHED_INT8, aggregate, discover, meta_and_pairs

    cli_out, rule_out = tmp_path / "cli", tmp_path / "rule"
    run_aggregate([PUBLISHED_ROOT], cli_out, config_paths=[PAPER])
    meta, pairs = meta_and_pairs([_yaml.safe_load(PAPER.read_text())])
    pub_int8 = PUBLISHED_ROOT / PUBLISHED_INT8
    aggregate(discover([PUBLISHED_ROOT]), AggregateOutputs.in_dir(rule_out), meta, pairs,
              published_int8=pub_int8 if pub_int8.exists() else None,
              published_top5=sorted(str(p) for p in PUBLISHED_ROOT.rglob("*_top5_stats.json.gz")))
    for a, b in zip(AggregateOutputs.in_dir(cli_out).all(), AggregateOutputs.in_dir(rule_out).all()):
        if a.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            ja.pop("inputs", None)
            assert ja == jb
        else:
            assert a.read_bytes() == b.read_bytes(), a.name


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nope"))):
        run_aggregate([tmp_path / "nope"], tmp_path / "out")


def test_empty_dir_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "other.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no result file.*" + re.escape(str(empty))):
        run_aggregate([PUBLISHED_ROOT, empty], tmp_path / "out")
    assert not (tmp_path / "out" / "claims.json").exists()


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config file does not exist"):
        run_aggregate([PUBLISHED_ROOT], tmp_path / "out", config_paths=[tmp_path / "none.yaml"])


def test_without_paper_config_still_aggregates(tmp_path, monkeypatch):
    """With a config that names no checkpoint, meta comes from the published folder names."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("checkpoints: []\n")
    sub = tmp_path / "pub"
    shutil.copytree(PUBLISHED_ROOT / "max_act_llm" / "Qwen3", sub / "Qwen3")
    claims = run_aggregate([sub], tmp_path / "out", config_paths=[cfg])
    assert claims["n_checkpoints"] == len(list(sub.rglob("*_activation_stats.json"))) and claims["matched_pairs"] == []
    gt = pd.read_csv(tmp_path / "out" / "global_max.csv")
    assert set(gt["family"]) == {"qwen3"}


def test_a_random_init_checkpoint_never_enters_the_papers_claims(study, tmp_path):
    """`maxact aggregate` (a subprocess, as a user runs it) over the published results and a folder of the test study's
    measured checkpoints, which are random-init and unlabelled: the claims are the paper's, computed over its
    published files alone (independent recomputation), and the measured ones stand beside them."""
    import subprocess
    import sys

    ind, _ = independent_summary()
    main = {k: v for k, v in ind.items() if v["main"]}
    span = math.log10(max(v["abs"] for v in main.values()) / min(v["abs"] for v in main.values()))
    measured = study[0] / "results" / "test" / "measure"
    out = tmp_path / "agg"
    r = subprocess.run([sys.executable, "-m", "maxact.cli", "aggregate", "--results", str(PUBLISHED_ROOT), str(measured),
                        "--config", str(PAPER), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    claims = json.loads((out / "claims.json").read_text())
    assert claims["span_orders_of_magnitude"]["value"] == pytest.approx(span)
    assert claims["n_main"] == len(main) and claims["n_checkpoints"] == len(ind)
    rs = claims["residual_share"]
    assert (rs["n_residual"], rs["n_total"]) == (sum(v["residual"] for v in main.values()), len(main))
    here = {m["name"]: m for m in claims["measured_here"]}
    assert set(here) == {"tiny-llama", "tiny-gemma3"}
    assert all(not m["in_claims"] and "random initialisation" in m["why"] for m in here.values())
    gt = pd.read_csv(out / "global_max.csv")
    assert not gt[gt["source"] == "measured"]["main_analysis"].any()
    assert "stand beside them, not counted" in r.stdout


def test_a_measured_checkpoint_enters_the_claims_only_when_its_config_says_so(tmp_path):
    """A real (not random) measured result named as one of the paper's checkpoints: beside the published one without
    main_analysis, in its place with main_analysis: true."""
    pub = next(PUBLISHED_ROOT.rglob("Qwen3-8B_activation_stats.json"))
    d = json.loads(pub.read_text())
    d.update(checkpoint="qwen3-8b-here", provenance={"source": "hub", "model_id": "Qwen/Qwen3-8B"})
    for k in d["per_layer_stats"]:  # ten times the published values: visible in the span when counted
        for e in ("max", "min"):
            if isinstance(d["per_layer_stats"][k].get(e), (int, float)):
                d["per_layer_stats"][k][e] *= 10
    ind, _ = independent_summary()
    main_abs = [v["abs"] for k, v in ind.items() if v["main"] and k != "Qwen3-8B"]
    for main_analysis, replaced in ((None, False), (True, True)):
        res = tmp_path / str(main_analysis) / "measure" / "qwen3-8b-here"
        res.mkdir(parents=True)
        (res / "activation_stats.json").write_text(json.dumps({**d, "meta": {"published_name": "Qwen3-8B", "main_analysis": main_analysis,
                                                                            "family": "qwen3"}}))
        claims = run_aggregate([PUBLISHED_ROOT, res.parent], tmp_path / f"out{main_analysis}", config_paths=[PAPER])
        assert (claims["superseded_published"] == ["Qwen3-8B"]) is replaced
        q8 = 10 * ind["Qwen3-8B"]["abs"] if replaced else ind["Qwen3-8B"]["abs"]
        expected = math.log10(max(main_abs + [q8]) / min(main_abs + [q8]))
        assert claims["span_orders_of_magnitude"]["value"] == pytest.approx(expected)
        assert claims["measured_here"][0]["published_name"] == "Qwen3-8B" and claims["measured_here"][0]["in_claims"] is replaced


def test_a_study_entry_never_changes_the_papers_checkpoints(tmp_path):
    """A checkpoint measured with `maxact measure --model Qwen/Qwen2.5-7B` is named like the paper's Qwen2.5-7B, and
    a study entry may name a published result (published_name) without main_analysis: neither gives the measured
    result the paper's main_analysis, nor changes the published results' meta (n_main stays the paper's)."""
    from maxact.stages.aggregate import aggregate, discover, meta_and_pairs

    ind, _ = independent_summary()
    pub = next(PUBLISHED_ROOT.rglob("Qwen2.5-7B_activation_stats.json"))
    d = json.loads(pub.read_text())
    d.update(checkpoint="Qwen2.5-7B", provenance={"source": "hub", "model_id": "Qwen/Qwen2.5-7B"}, meta={})
    m = tmp_path / "cli" / "Qwen2.5-7B"
    m.mkdir(parents=True)
    (m / "activation_stats.json").write_text(json.dumps(d))
    claims = run_aggregate([PUBLISHED_ROOT, tmp_path / "cli"], tmp_path / "out", config_paths=[PAPER])
    assert claims["superseded_published"] == [] and claims["n_main"] == sum(v["main"] for v in ind.values())
    assert claims["measured_here"][0]["in_claims"] is False

    study = {"checkpoints": [{"name": "my-ling", "published_name": "Ling-mini-5T", "main_analysis": None, "role": "dense",
                              "family": "other"},
                             {"name": "Qwen2.5-7B", "main_analysis": False, "family": "qwen2.5"}]}
    meta, pairs = meta_and_pairs([yaml.safe_load(PAPER.read_text())], [study])
    claims = aggregate(discover([PUBLISHED_ROOT]), AggregateOutputs.in_dir(tmp_path / "wf"), meta, pairs)
    assert claims["n_main"] == sum(v["main"] for v in ind.values())
    gt = pd.read_csv(tmp_path / "wf" / "global_max.csv").set_index("name")
    assert gt.loc["Ling-mini-5T", "role"] == "intermediate" and bool(gt.loc["Qwen2.5-7B", "main_analysis"]) is True


def test_top5_files_are_told_apart_by_their_content_and_undefined_int8_policies_keep_a_row(tmp_path):
    """The paper's own top-5 files found as plain JSON (e.g. its results/ folder) count as published, maxact's as
    measured; an INT-8 policy the paper's definition leaves undefined keeps its row, with the reason."""
    import gzip

    from maxact.stages.aggregate import Meta, int8_table, top5_table

    plain = tmp_path / "paper" / "Qwen3-8B_top5_stats.json"
    plain.parent.mkdir()
    plain.write_bytes(gzip.decompress((PUBLISHED_ROOT / "max_act_llm" / "Qwen3" / "Qwen3-8B_top5_stats.json.gz").read_bytes()))
    ours = tmp_path / "m" / "x_top5_stats.json"
    ours.parent.mkdir()
    ours.write_text(json.dumps({"model_name": "x", "source": "maxact: ...", "global_top5_abs": [2.0, 1.0],
                                "global_top5_signed": [2.0, -1.0], "per_layer_stats": {}}))
    t = top5_table([str(plain), str(ours)], [])
    assert dict(zip(t["name"], t["source"])) == {"Qwen3-8B": "published", "x": "measured"}

    i8 = tmp_path / "int8_check.json"
    i8.write_text(json.dumps({"checkpoint": "x", "definition": "paper", "point": "layer_1_hidden", "policies": {
        "max_abs": {"mean_sqnr_db": 10.0, "threshold": 5.0},
        "clip_q0.999": {"undefined": "no positive threshold from the calibration samples (the paper's check skips it)"}}}))
    it = int8_table([i8], Meta({}, {}), None)
    row = it[it["policy"] == "clip_q0.999"].iloc[0]
    assert row["note"].startswith("no positive threshold") and pd.isna(row["mean_sqnr_db"])

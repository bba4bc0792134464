"""Result-file reader: component names, global-max recomputation, discovery, records and tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from maxact.points import GLOBAL_KINDS, RESIDUAL_KINDS, parse_component, recompute_global_max
from maxact.study.resultset import (
    discover_result_files,
    global_table,
    layer_table,
    load_result,
    meta_from_config,
)

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "resources" / "published" / "max_act_llm"
PAPER = REPO / "config" / "paper.yaml"


def published_files() -> list[Path]:
    return sorted(PUBLISHED.rglob("*_activation_stats.json"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("embedding_output", ("embedding", None)),
        ("final_layernorm", ("final_norm", None)),
        ("layer_0_hidden", ("hidden", 0)),
        ("layer_16_hidden", ("hidden", 16)),
        ("layer_3_attn_output", ("attn", 3)),
        ("layer_12_mlp_output", ("mlp", 12)),
        ("layer_7_mlp_gate", ("mlp_gate", 7)),
        ("layer_7_moe_gate", ("moe_gate", 7)),
        ("layer_23_router_logits", ("router_logits", 23)),
        ("layer_4_attn_residual_in", ("attn_residual_in", 4)),
        ("layer_4_mlp_residual_in", ("mlp_residual_in", 4)),
        ("layer_4_something_new", ("other", 4)),
        ("lm_head", ("other", None)),
        ("layer_x_hidden", ("other", None)),
    ],
)
def test_parse_component(name, expected):
    assert parse_component(name) == expected


def test_kind_sets():
    assert RESIDUAL_KINDS == {"hidden"}
    assert GLOBAL_KINDS == {"embedding", "hidden", "attn", "mlp", "final_norm"}
    for k in ("mlp_gate", "moe_gate", "router_logits", "attn_residual_in", "mlp_residual_in", "other"):
        assert k not in GLOBAL_KINDS


def test_vendored_copy_matches_shared_if_present():
    shared = REPO.parent / "shared" / "published" / "max_act_llm"
    if not shared.exists():
        pytest.skip("no ../shared beside the checkout")
    ours = {p.relative_to(PUBLISHED) for p in PUBLISHED.rglob("*") if p.is_file()}
    theirs = {p.relative_to(shared) for p in shared.rglob("*") if p.is_file()}
    assert theirs <= ours
    for rel in theirs:
        assert (PUBLISHED / rel).read_bytes() == (shared / rel).read_bytes(), rel
    # the rest: what tools/vendor_published.py took from the public repository, listed with its sha256
    vendored = json.loads((PUBLISHED / "VENDORED.json").read_text())
    assert ours - theirs == {Path(f["file"]) for f in vendored["files"]} | {Path("VENDORED.json")}


def test_vendored_files_are_the_published_bytes():
    import gzip
    import hashlib

    vendored = json.loads((PUBLISHED / "VENDORED.json").read_text())
    assert vendored["repository"].endswith("clx1415926/Max_act_llm") and len(vendored["commit"]) == 40
    assert sum(f["file"].endswith("_top5_stats.json.gz") for f in vendored["files"]) == 27
    assert sum("exp_A" in f["file"] for f in vendored["files"]) == 40
    for f in vendored["files"]:
        data = gzip.decompress((PUBLISHED / f["file"]).read_bytes())
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"], f["file"]


def test_published_files_present():
    files = published_files()
    assert files, "vendored published files missing"
    folders = {p.parent.name for p in files}
    assert {"Qwen2.5", "Qwen2.5-it", "Qwen2.5-vl", "Qwen3", "Qwen3.5", "gemma2", "gemma3", "gpt_oss", "ling"} <= folders
    assert (PUBLISHED / "quant" / "quant_sanity_summary.json").exists()
    assert (REPO / "resources" / "published" / "SOURCE.md").exists()


@pytest.mark.parametrize("path", published_files(), ids=lambda p: p.stem)
def test_recompute_global_max_agrees_with_every_published_file(path):
    raw = json.loads(path.read_text())
    value, comp, ext = recompute_global_max(raw["per_layer_stats"])
    assert value == raw["global_max_activation"]
    assert f"{comp} ({ext})" == raw["global_max_location"]


def _stats(mx, mn):
    return {"mean": 0.0, "std": 1.0, "abs_mean": 0.5, "rms": 1.0, "max": mx, "min": mn, "count": 10.0}


def test_recompute_excludes_gates_and_routers_and_breaks_ties_in_forward_order():
    pls = {
        "embedding_output": _stats(1.0, -1.0),
        "layer_0_router_logits": _stats(1e9, -1e9),
        "layer_0_mlp_gate": _stats(1e8, -1e8),
        "layer_0_attn_residual_in": _stats(1e7, 0.0),
        "layer_10_hidden": _stats(5.0, -50.0),   # same magnitude as layer 5: earlier layer wins
        "layer_5_hidden": _stats(50.0, -3.0),
        "final_layernorm": _stats(2.0, -2.0),
    }
    assert recompute_global_max(pls) == (50.0, "layer_5_hidden", "max")
    # mlp_output before hidden inside one layer (the forward order), as gpt-oss-20b's published file has it
    pls2 = {"layer_3_hidden": _stats(1.0, -7.0), "layer_3_mlp_output": _stats(1.0, -7.0), "layer_3_attn_output": _stats(1.0, -1.0)}
    assert recompute_global_max(pls2) == (-7.0, "layer_3_mlp_output", "min")
    # a max beats a min of the same magnitude
    assert recompute_global_max({"layer_0_hidden": _stats(4.0, -4.0)}) == (4.0, "layer_0_hidden", "max")
    with pytest.raises(ValueError):
        recompute_global_max({"layer_0_router_logits": _stats(1.0, -1.0)})


def test_discover_is_recursive_sorted_and_skips_other_json(tmp_path):
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    for p in (tmp_path / "b" / "x" / "activation_stats.json", tmp_path / "a" / "M_activation_stats.json",
              tmp_path / "a" / "card.json", tmp_path / "a" / "quant_sanity_summary.json"):
        p.write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "activation_stats.json").write_text("{}")
    found = discover_result_files([tmp_path / "b", tmp_path])
    assert found == sorted(found, key=lambda p: p.parts)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/M_activation_stats.json", "b/x/activation_stats.json"]
    with pytest.raises(ValueError, match="does not exist"):
        discover_result_files([tmp_path / "nope"])


def test_discover_published():
    found = discover_result_files([PUBLISHED.parent])
    assert found == published_files()
    assert all(p.name.endswith("_activation_stats.json") for p in found)


def test_load_published_without_meta_infers_family_from_folder():
    recs = {r["name"]: r for r in (load_result(p) for p in published_files())}
    for r in recs.values():
        assert r["source"] == "published"
        assert r["name"] == r["raw"]["model_name"]
    assert recs["Qwen2.5-7B-Instruct"]["meta"]["family"] == "qwen2.5"
    assert recs["Qwen2.5-7B-Instruct"]["meta"]["role"] == "instruct"
    assert recs["Qwen2.5-VL-7B"]["meta"]["family"] == "qwen2.5-vl"
    assert recs["gpt-oss-20b"]["meta"]["family"] == "gpt-oss"
    assert recs["Ling-mini-5T"]["meta"]["family"] == "ling"


def test_load_measured_meta_precedence(tmp_path):
    d = {"checkpoint": "m1", "model_name": "org/M1", "provenance": {"model_id": "org/M1"},
         "meta": {"family": "fileFam", "role": "dense", "params_b": None},
         "num_hidden_layers": 2, "per_layer_stats": {"layer_0_hidden": _stats(1.0, -2.0)}}
    p = tmp_path / "m1" / "activation_stats.json"
    p.parent.mkdir()
    p.write_text(json.dumps(d))
    r = load_result(p)
    assert (r["name"], r["source"], r["meta"]["family"], r["meta"]["role"]) == ("m1", "measured", "fileFam", "dense")
    r = load_result(p, measured_meta={"m1": {"family": "cfgFam", "params_b": 1.5, "role": None}})
    assert r["meta"]["family"] == "cfgFam"          # the study's config wins
    assert load_result(p, published_meta={"m1": {"family": "paperFam"}})["meta"]["family"] == "fileFam"  # not the paper's
    assert r["meta"]["role"] == "dense"             # None never overrides
    assert r["meta"]["params_b"] == 1.5


def test_paper_config_covers_every_published_file():
    cfg = yaml.safe_load(PAPER.read_text())
    meta = meta_from_config(cfg)
    stems = {p.name[: -len("_activation_stats.json")] for p in published_files()}
    names = {c["name"] for c in cfg["checkpoints"]}
    assert names == stems
    for c in cfg["checkpoints"]:
        assert c["published_name"] == c["name"]
        assert c["source"] == "hub" and "/" in c["model_id"]
        intermediate = c["name"].startswith("Ling-mini-") and c["name"] != "Ling-mini-20T"
        assert c["main_analysis"] is (not intermediate)
        assert c["trust_remote_code"] is c["name"].startswith("Ling")
        if c["role"] == "moe":
            assert c["active_params_b"] < c["params_b"]
    # published model_type as recorded in the files appears in the config's comments
    text = PAPER.read_text()
    for p in published_files():
        raw = json.loads(p.read_text())
        assert f"model_type {raw['model_type']}" in text
    assert meta["Qwen3-30B-A3B"]["role"] == "moe"


def test_paper_config_validates_against_schema():
    from maxact.config import validate_config

    validate_config(yaml.safe_load(PAPER.read_text()), REPO / "src" / "maxact" / "schema" / "config.schema.yaml")


def test_global_and_layer_tables():
    cfg_meta = meta_from_config(yaml.safe_load(PAPER.read_text()))
    recs = [load_result(p, cfg_meta) for p in published_files()]
    gt = global_table(recs)
    assert len(gt) == len(recs)
    for col in ("name", "source", "family", "generation", "role", "params_b", "main_analysis", "model_type",
                "num_hidden_layers", "hidden_size", "global_max", "global_max_abs", "component", "kind", "layer",
                "relative_depth", "extreme"):
        assert col in gt.columns
    assert (gt["global_max"] == gt["recorded_global_max"]).all()
    assert (gt["global_max_abs"] == gt["global_max"].abs()).all()
    hid = gt[gt["kind"] == "hidden"]
    assert ((hid["relative_depth"] - hid["layer"].astype(float) / (hid["num_hidden_layers"] - 1)).abs() < 1e-12).all()
    assert gt["relative_depth"].dropna().between(0, 1).all()
    assert set(gt["extreme"]) <= {"max", "min"}

    lt = layer_table(recs)
    assert list(lt.columns) == ["name", "source", "family", "component", "kind", "layer", "relative_depth", "stat", "value"]
    n_stats = sum(sum(1 for v in st.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
                  for r in recs for st in r["raw"]["per_layer_stats"].values())
    assert len(lt) == n_stats
    one = recs[0]
    comp = next(iter(one["raw"]["per_layer_stats"]))
    row = lt[(lt["name"] == one["name"]) & (lt["component"] == comp) & (lt["stat"] == "max")]
    assert row["value"].item() == one["raw"]["per_layer_stats"][comp]["max"]
    assert not math.isnan(lt["value"].sum())

"""maxact's INT-8 check under the paper's definition, on the two real checkpoints and the default study's samples,
against the numbers of the paper's own quant_sanity_check.py on the same samples (run outside the project and
recorded in benchmarks/measured/paper-int8-reference-2026-12-06/: how, in its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from maxact.corpus.materialize import materialize_corpus
from maxact.corpus.records import read_corpus
from maxact.corpus.tokenization import tokenize_records
from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
from maxact.stages.int8 import int8_checkpoint
from real_checkpoints import CACHE, GEMMA, SMOL

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "benchmarks" / "measured" / "paper-int8-reference-2026-12-06" / "reference.json"
METRICS = ("mean_rel_rmse", "mean_rel_mae", "mean_clip_rate", "mean_sqnr_db")


@pytest.fixture(scope="module")
def study_tokens(tmp_path_factory):
    """The default study's corpus slice, as config/config.yaml makes it."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    out = tmp_path_factory.mktemp("corpus") / "corpus.jsonl.gz"
    manifest = materialize_corpus(cfg["corpus"], out, REPO / "resources")
    return read_corpus(out), manifest["sha256"], cfg


@pytest.mark.parametrize("entry", [SMOL, pytest.param(GEMMA, marks=pytest.mark.extended)], ids=["smollm2", "gemma3"])
def test_paper_definition_matches_the_papers_script(study_tokens, entry):
    records, corpus_sha, cfg = study_tokens
    ref = [r for r in json.loads(REFERENCE.read_text())["rows"] if r["checkpoint"] == entry["name"]]
    assert {r["policy"] for r in ref} == {"max_abs", "clip_q0.999"}
    assert ref[0]["corpus_sha256"] == corpus_sha  # the same samples as the recorded run
    prepared = prepare_checkpoint(entry, CACHE)
    tokens = tokenize_records(records, load_tokenizer(prepared), cfg["tokenization"]["max_seq_len"], False)
    result = {"model_name": entry["model_id"], "global_max_activation": 1.0, "peak": {"component": ref[0]["peak_component"]},
              "provenance": {"corpus_sha256": corpus_sha}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the recorded run and a one-core Snakemake job: the same reduction order
    try:
        out = int8_checkpoint(prepared, tokens, result, settings={"device": "cpu"}, n_calib=cfg["int8"]["n_calib"],
                              n_eval=cfg["int8"]["n_eval"], max_tokens=cfg["int8"]["max_tokens"], seed=0, definition="paper")
    finally:
        torch.set_num_threads(threads)
    assert out["split"]["calibration_ids"] == ref[0]["calibration_ids"]
    assert out["split"]["evaluation_ids"] == ref[0]["evaluation_ids"]
    assert out["point"] == ref[0]["point"]
    for r in ref:
        ours = out["policies"][r["policy"]]
        for k in METRICS:
            assert ours[k] == pytest.approx(r["paper_script"][k], rel=1e-6, abs=1e-15), (r["policy"], k)

"""End-to-end Snakemake runs on the tiny test config (random-init models, stdlib corpus)."""

import json
import re

import pytest
import yaml

from workflow_helpers import REPO, TEST_CONFIG, planned, planned_wildcards, snakemake


@pytest.mark.slow
def test_end_to_end_outputs(study):
    wd, _ = study
    res = wd / "results" / "test"
    rep = res / "reports"
    assert (rep / "report.html").exists()
    html = (rep / "report.html").read_text()
    for stem in ["global_max_by_family", "layerwise_max_hidden", "int8_sqnr_vs_peak"]:
        assert (rep / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (rep / "figures" / f"{stem}.pdf").stat().st_size > 1000
        assert f"{stem}.png" in html
    for ext in ("csv", "md", "tex"):
        assert (rep / "tables" / f"global_max.{ext}").exists()
    assert "booktabs" in (rep / "tables" / "global_max.tex").read_text() or "toprule" in (rep / "tables" / "global_max.tex").read_text()
    for ck in ("tiny-llama", "tiny-gemma3"):
        r = json.loads((res / "measure" / ck / "activation_stats.json").read_text())
        prov = r["provenance"]
        assert prov["corpus_sha256"] and prov["tokenizer_sha256"] and prov["environment"]["libraries"]["torch"]
        assert prov["tokenization"]["add_special_tokens"] is False
        assert r["global_max_location"] and r["peak"]["sample_id"]
        assert ck in html
        assert (res / "measure" / ck / "per_sample_extremes.parquet").exists()
        assert (res / "int8" / ck / "int8_check.json").exists()
        # Calibration files for the four consumers, with the measurement's provenance, linked from the report.
        cal = json.loads((res / "calibration" / ck / "calibration.json").read_text())
        assert cal["provenance"]["checkpoint"] == ck and cal["provenance"]["corpus_sha256"] == prov["corpus_sha256"]
        for f in ("act_scales.pt", "imatrix.gguf", "input_scales_int8.safetensors", "input_scales_fp8.safetensors",
                  "awq_stats.safetensors"):
            assert f in cal["files"] and (res / "calibration" / ck / f).stat().st_size > 0
            assert f"files/{ck}/calibration/{f}" in html  # a copy inside the report folder
            assert (rep / "files" / ck / "calibration" / f).read_bytes() == (res / "calibration" / ck / f).read_bytes()
        card = (rep / "cards" / f"{ck}.activation_card.md").read_text()
        assert "act_scales.pt" in card and "imatrix.gguf" in card
        # quant_eval after calibration: every format scored on held-out samples (none of them measured), in the
        # report (table, figure) and the card.
        q = json.loads((res / "quant_eval" / ck / "quant_eval.json").read_text())
        measured_ids = set(__import__("pandas").read_parquet(res / "measure" / ck / "per_sample_extremes.parquet")["sample_id"].astype(str))
        assert q["heldout"]["sample_ids"] and not set(q["heldout"]["sample_ids"]) & measured_ids
        assert q["formats"]["unquantized"]["delta_nll_per_token"] == 0.0
        assert q["provenance"]["corpus_sha256"] == prov["corpus_sha256"] and q["provenance"]["libraries"]["compressed-tensors"]
        assert (rep / "tables" / f"quant_eval_{ck}.csv").exists() and f"quant_eval_{ck}" in html
        assert "**Quantized formats**" in card
    assert "quant_delta_nll_vs_max.png" in html
    gemma_q = json.loads((res / "quant_eval" / "tiny-gemma3" / "quant_eval.json").read_text())
    assert gemma_q["formats"]["smoothquant_w8a8"]["status"] == "not_covered"
    assert json.loads((res / "quant_eval" / "tiny-llama" / "quant_eval.json").read_text())["formats"]["smoothquant_w8a8"]["status"] == "measured"
    # The published 27 sit beside the measured ones.
    gt = (res / "aggregate" / "global_max.csv").read_text()
    assert gt.count(",published,") == 27 or gt.count("published") >= 27
    assert "no special tokens added" in html


@pytest.mark.slow
def test_noop_rerun_does_nothing(study):
    wd, _ = study
    p = snakemake(wd, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr


@pytest.mark.slow
def test_adding_a_checkpoint_runs_only_its_jobs(study, tmp_path):
    wd, _ = study
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["checkpoints"].append({"name": "tiny-qwen2", "source": "random", "model_type": "qwen2",
                               "config_overrides": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2}})
    new = tmp_path / "added.yaml"
    new.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfile=new)
    out = p.stdout
    jobs = planned(out)
    assert jobs.get("measure") == 1 and jobs.get("prepare_checkpoint") == 1 and jobs.get("int8_check") == 1
    assert planned_wildcards(out, "measure") == ["ckpt=tiny-qwen2"]
    assert "corpus" not in jobs
    assert jobs.get("aggregate") == 1 and jobs.get("render") == 1


@pytest.mark.slow
def test_changing_a_corpus_setting_reruns_tokenize_and_measure(study, tmp_path):
    wd, _ = study
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["corpus"]["max_samples"] = 10
    new = tmp_path / "corpus.yaml"
    new.write_text(yaml.safe_dump(cfg))
    jobs = planned(snakemake(wd, "-n", configfile=new).stdout)
    assert jobs.get("corpus") == 1 and jobs.get("tokenize") == 2 and jobs.get("measure") == 2
    assert "prepare_checkpoint" not in jobs


@pytest.mark.slow
def test_changing_a_runtime_setting_reruns_nothing(study):
    """Device, dtype and batch size come from the profile's runtime block: never a reason to rerun."""
    wd, _ = study
    p = snakemake(wd, "-n", "--config", "runtime={device: cpu, dtype: float32, batch_size: 3, max_batch_tokens: 999}")
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-3000:]


@pytest.mark.slow
def test_editing_the_published_config_reruns_exactly_what_reads_it(study, tmp_path):
    """The published checkpoints' config (their meta, the paper's matched pairs) is a declared input of the
    aggregate: editing it reruns the aggregate and the render that reads its outputs, nothing upstream."""
    import shutil
    import time

    wd = tmp_path / "study"
    shutil.copytree(study[0], wd, symlinks=True)  # copy2: the finished study's timestamps are kept
    local = wd / "paper.yaml"
    shutil.copy2(REPO / "config" / "paper.yaml", local)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["published"]["config"] = str(local)
    own = tmp_path / "own_paper.yaml"
    own.write_text(yaml.safe_dump(cfg))
    snakemake(wd, configfile=own)  # the new input path: the aggregate reruns once
    p = snakemake(wd, "-n", configfile=own)
    assert "Nothing to be done" in p.stdout + p.stderr
    time.sleep(1.1)  # a strictly newer modification time
    paper = yaml.safe_load(local.read_text())
    paper["matched_pairs"] = paper["matched_pairs"][:1]
    local.write_text(yaml.safe_dump(paper))
    jobs = planned(snakemake(wd, "-n", configfile=own).stdout)
    jobs.pop("all", None)
    assert jobs == {"aggregate": 1, "render": 1}, jobs


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(bogus_key=1), "bogus_key"),
        (lambda c: c["tokenization"].update(max_seq_lenn=5), "tokenization.max_seq_lenn"),
        (lambda c: c["tokenization"].update(max_seq_len="long"), "tokenization.max_seq_len"),
        (lambda c: c["checkpoints"][0].update(sourc="hub"), "checkpoints.0.sourc"),
        (lambda c: c["checkpoints"][0].update(name="org/model"), "checkpoints.0.name"),
        # every number has its range, named with the key
        (lambda c: c.setdefault("runtime", {}).update(batch_size=0), "'runtime.batch_size': 0 is less than the minimum of 1"),
        (lambda c: c["int8"].update(seed=-1), "'int8.seed': -1 is less than the minimum of 0"),
        (lambda c: c["checkpoints"][0].update(params_b=0), "'checkpoints.0.params_b': 0 is less than or equal to the minimum of 0"),
        (lambda c: c["analysis"].update(bootstrap_seeds=10**6), "'analysis.bootstrap_seeds': 1000000 is greater than the maximum of 10000"),
        (lambda c: c["corpus"].update(max_samples=0), "'corpus.max_samples': 0 is less than the minimum of 1"),
    ],
)
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, mutate, expected):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "-n", configfile=bad, check=False)
    assert p.returncode != 0
    assert expected in p.stdout + p.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tmp_path):
    p = snakemake(tmp_path, "--lint", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Congratulations" in p.stdout + p.stderr or "no problems" in (p.stdout + p.stderr).lower()


def test_default_config_plans_every_stage(tmp_path):
    p = snakemake(tmp_path, "-n", configfile=REPO / "config" / "config.yaml")
    jobs = planned(p.stdout)
    for rule in ("corpus", "prepare_checkpoint", "tokenize", "measure", "calibration", "quant_eval", "int8_check", "aggregate", "render"):
        assert jobs.get(rule), rule


def test_paper_config_plans_27_gpu_measurements(tmp_path):
    p = snakemake(tmp_path, "-n", "--printshellcmds", configfile=REPO / "config" / "paper.yaml")
    jobs = planned(p.stdout)
    assert jobs.get("measure") == 27
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule )", p.stdout) if b.startswith("rule measure:")]
    assert len(blocks) == 27 and all("gpu=" in b for b in blocks)


@pytest.mark.slow
def test_snakemake_report_with_captions_and_cards(study, tmp_path):
    wd, _ = study
    out = tmp_path / "report.zip"
    snakemake(wd, "--report", str(out))
    import zipfile

    names = zipfile.ZipFile(out).namelist()
    assert any(n.endswith("global_max_by_family.png") for n in names)
    assert any("activation_card" in n for n in names)
    card = (wd / "results" / "test" / "reports" / "cards" / "tiny-llama.activation_card.md").read_text()
    assert "Maximum activation M" in card and "INT-8 policy" in card


@pytest.mark.slow
def test_keep_going_keeps_other_checkpoints_results(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["checkpoints"] = [cfg["checkpoints"][0],
                          {"name": "missing-model", "source": "local", "path": str(tmp_path / "nowhere")}]
    bad = tmp_path / "keep.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "--keep-going", configfile=bad, check=False)
    assert p.returncode != 0
    log = (tmp_path / "results" / "test" / "logs" / "prepare" / "missing-model.log").read_text()
    assert "missing-model" in log and str(tmp_path / "nowhere") in log
    # the other checkpoint's results were computed and stay
    assert (tmp_path / "results" / "test" / "measure" / "tiny-llama" / "activation_stats.json").exists()
    assert (tmp_path / "results" / "test" / "int8" / "tiny-llama" / "int8_check.json").exists()


def test_rehearsal_config_plans_every_paper_checkpoint_at_full_shape(tmp_path):
    """config/rehearsal.yaml: the 27 paper checkpoints, each a seeded random init of its public shape,
    through the same DAG (measure on the GPU)."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    rehearsal = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())
    assert [c["name"] for c in rehearsal["checkpoints"]] == [c["name"] for c in paper["checkpoints"]]
    assert all(c["source"] == "random" and c["config_overrides"] for c in rehearsal["checkpoints"])
    assert rehearsal["matched_pairs"] == paper["matched_pairs"]
    p = snakemake(tmp_path, "-n", configfile=REPO / "config" / "rehearsal.yaml")
    jobs = planned(p.stdout)
    assert jobs.get("measure") == 27
    # int8.enabled / probes.enabled false: those stages are left out of the DAG.
    assert not jobs.get("int8_check") and not jobs.get("probes"), jobs


# Public parameter counts (billions) of the paper's checkpoints, from their model cards / hub pages
# (Qwen3.5 without the MTP layer, which transformers does not build; Ling-mini-2.0 for its four
# training checkpoints).
PUBLIC_PARAMS_B = {
    "Qwen2.5-1.5B": 1.54, "Qwen2.5-7B": 7.61, "Qwen2.5-32B": 32.8, "Qwen2.5-1.5B-Instruct": 1.54,
    "Qwen2.5-7B-Instruct": 7.61, "Qwen2.5-32B-Instruct": 32.8, "Qwen2.5-VL-3B": 3.75, "Qwen2.5-VL-7B": 8.29,
    "Qwen2.5-VL-32B": 33.5, "Qwen3-1.7B": 1.7, "Qwen3-8B": 8.19, "Qwen3-32B": 32.8, "Qwen3-30B-A3B": 30.5,
    "Qwen3.5-0.8B": 0.85, "Qwen3.5-9B": 9.41, "Qwen3.5-27B": 27.0, "Qwen3.5-35B-A3B": 35.0, "gemma-2b": 2.51,
    "gemma-2-9b": 9.24, "gemma-2-27b": 27.2, "gemma-3-4b-it": 4.3, "gemma-3-27b-it": 27.4, "gpt-oss-20b": 20.9,
    "Ling-mini-5T": 16.26, "Ling-mini-10T": 16.26, "Ling-mini-15T": 16.26, "Ling-mini-20T": 16.26,
}


@pytest.mark.slow
def test_rehearsal_shapes_build_to_their_parameter_counts():
    """Every rehearsal checkpoint's config builds (on the meta device: no memory) through the loader the
    registry names, with its public checkpoint's parameter count (within 2%)."""
    import torch
    from transformers import AutoConfig

    from maxact.models.registry import family_for, loader_class

    entries = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())["checkpoints"]
    assert {c["name"] for c in entries} == set(PUBLIC_PARAMS_B)
    for c in entries:
        cfg = AutoConfig.for_model(c["model_type"], **c["config_overrides"])
        with torch.device("meta"):
            model = loader_class(family_for(cfg), cfg.model_type).from_config(cfg)
        n = sum(p.numel() for p in model.parameters()) / 1e9
        assert n == pytest.approx(PUBLIC_PARAMS_B[c["name"]], rel=0.02), c["name"]


@pytest.mark.slow
def test_truncation_is_counted_by_the_tokenize_rule_and_carried_to_the_results_and_report(study):
    """The test study cuts its corpus to 96 tokens: the tokenize rule's record, each result's provenance and the report
    say how many samples and tokens were cut, checked against the corpus tokenized here with the checkpoint's own
    tokenizer."""
    import gzip

    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    wd, p = study
    res = wd / "results" / "test"
    texts = [json.loads(x) for x in gzip.open(res / "corpus" / "corpus.jsonl.gz", "rt")]
    prepared = json.loads((res / "checkpoints" / "tiny-llama" / "prepared.json").read_text())
    tok = AutoTokenizer.from_pretrained(wd / prepared["load_path"])  # relative to the workflow folder
    n = {t["id"]: len(tok(t["text"], add_special_tokens=False, split_special_tokens=True)["input_ids"]) for t in texts}
    cut = {k: v - 96 for k, v in n.items() if v > 96}
    assert cut, "the test corpus has no sample over 96 tokens: nothing was tested"
    meta = json.loads(pq.read_table(res / "tokens" / "tiny-llama" / "tokens.parquet").schema.metadata[b"maxact"])
    prov = json.loads((res / "measure" / "tiny-llama" / "activation_stats.json").read_text())["provenance"]["tokenization"]
    for rec in (meta["truncation"], prov["truncation"]):
        assert rec["samples"] == len(cut) and rec["tokens_dropped"] == sum(cut.values()) and rec["max_seq_len"] == 96
        assert set(rec["sample_ids"]) <= set(cut)
    assert "were cut to it" in p.stderr  # the warning reaches the console, not only the log
    html = (res / "reports" / "report.html").read_text()
    assert f"{len(cut)} sample(s) longer than max_seq_len 96 were cut" in html


@pytest.mark.slow
def test_truncation_off_refuses_over_long_samples_by_name(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["tokenization"]["truncate"] = False
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "--until", "tokenize", configfile=path, check=False)
    assert p.returncode != 0
    log = (tmp_path / "results" / "test" / "logs" / "tokenize" / "tiny-llama.log").read_text()
    assert "longer than max_seq_len 96 tokens and truncation is off" in log and "tokenization.truncate: true" in log
    assert not (tmp_path / "results" / "test" / "tokens" / "tiny-llama" / "tokens.parquet").exists()

"""Sharded measurement merged equals the unsharded run: every registered model type at tiny size, N = 1, 2 and 3
shards (slices of one batch plan), through the stage functions the CLI and the workflow call (measure_checkpoint with
a shard, then merge_shards), and the bad-shard refusals.

Tolerances (tests/result_compare.py): extremes, counts, histograms and the quantiles from them, top-k with its
provenance, per-sample extremes, MoE routing counts, the linear inputs' max |x| and token counts: exactly equal.
Float64 sums and what derives from them (mean, std, rms, mean |a|, the Sun ratio's mean and std, the linear inputs'
sum x^2 and sum |x|, and the calibration files made from them): bit for bit too, since they run as double-double
pairs (maxact.measurement.exactsum) whose float64 value does not depend on the grouping of the per-batch sums
(compare_folders' own tolerance, 1e-9 relative, is what `equal` allows; the test asks `bit_identical`). On CUDA (the
gpu mark) the same, packed and in bfloat16 as the GPU measures."""

from __future__ import annotations

import json

import pytest
import torch

from maxact.calibration.exports import GGUF_ARCH
from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
from maxact.errors import InputError
from maxact.measurement.batching import make_batches
from maxact.measurement.shards import Shard, shard_range
from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
from maxact.models.registry import FAMILIES, family_for, supported_model_types
from maxact.stages.measure import measure_checkpoint
from maxact.stages.merge import merge_shards
from result_compare import close_diffs, compare_folders
from tiny_models import save_tiny_checkpoint

REMOTE = {t for f in FAMILIES if f.remote_code for t in f.model_types}
TYPES = [t for t in supported_model_types() if t not in REMOTE]
TEXTS = [{"id": f"t{i}", "text": t} for i, t in enumerate(
    ["The quick brown fox jumps over the lazy dog. " * 2, "x = [1, 2, 3]", "Grüße aus Köln!", "Ok.",
     "def f(a, b):\n    return a ** b  # power", "Lorem ipsum dolor sit amet, consectetur", "aaaa bbbb cccc dddd eeee",
     "0123456789 " * 4, "A longer line of prose that goes on for a while, then stops."])]
def test_shard_ranges_cut_the_plan_into_contiguous_parts_of_about_equal_tokens():
    lengths = [10, 40, 30, 20, 5, 50, 25, 15, 35, 45]
    batches = make_batches(lengths, 2)
    total = sum(lengths)
    for n in (1, 2, 3, 4, len(batches), len(batches) + 2):
        ranges = [shard_range(batches, lengths, Shard(k, n)) for k in range(1, n + 1)]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(batches)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, every batch once
        for k, (a, b) in enumerate(ranges, 1):
            done = sum(lengths[i] for bb in batches[:b] for i in bb)
            # a part ends at the first batch boundary at or past k/n of the tokens
            assert done >= total * k / n - 1e-9 or b == len(batches)
            assert b == 0 or sum(lengths[i] for bb in batches[: b - 1] for i in bb) < total * k / n or k == n


@pytest.mark.parametrize("text, message", [("3", "must be K/N"), ("0/2", "K must be from 1 to N"), ("3/2", "K must be"),
                                           ("1/0", "N from 1"), ("a/b", "must be K/N"), ("1/5000", "N from 1 to 4096")])
def test_bad_shard_specs_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        Shard.parse(text)
    assert Shard.parse("2/4") == Shard(2, 4) == Shard.parse("2-of-4")


@pytest.fixture(scope="module")
def prepared_types(tmp_path_factory):
    """Every model type as a saved tiny checkpoint, prepared; its tokens."""
    root = tmp_path_factory.mktemp("shard_ckpts")
    out = {}
    for t in TYPES:
        folder = save_tiny_checkpoint(t, root / t, seed=5)
        prepared = prepare_checkpoint({"name": t, "source": "local", "path": str(folder)}, root / "cache")
        tok = load_tokenizer(prepared)
        df = tokenize_records(TEXTS, tok, 60)
        meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": "c", "max_seq_len": 60, "add_special_tokens": False}
        out[t] = (prepared, df, meta)
    return out


def _settings(model_type: str) -> dict:
    exports = ["smoothquant", "input_scales", "awq"]
    if family_for(type("C", (), {"model_type": model_type})).name in GGUF_ARCH:
        exports.append("imatrix")
    return {"device": "cpu", "batch_size": 2, "exports": exports}


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("model_type", TYPES)
def test_merged_shards_equal_the_unsharded_run(prepared_types, tmp_path, model_type, device):
    prepared, df, meta = prepared_types[model_type]
    s = {**_settings(model_type), "device": device}
    ref = measure_checkpoint(prepared, df, meta, tmp_path / "ref", settings=s, write_exports=True)
    for n in (1, 2, 3):
        dirs = []
        for k in range(1, n + 1):
            d = tmp_path / f"n{n}" / f"s{k}"
            measure_checkpoint(prepared, df, meta, d, settings=s, write_exports=True, shard=Shard(k, n))
            dirs.append(d)
        merged = merge_shards(list(reversed(dirs)), tmp_path / f"n{n}" / "merged", settings=s, write_exports=True)
        assert merged["provenance"]["shards"]["count"] == n
        assert ref["provenance"]["packing"]["method"] == merged["provenance"]["packing"]["method"]
        got = compare_folders(tmp_path / "ref", tmp_path / f"n{n}" / "merged")
        assert got["equal"], f"{model_type}, {n} shards:\n" + "\n".join((got["stats"] + got["per_sample"] + got["tensors"])[:20])
        assert got["float_sums_compared"] > 0
        # the float64 sums too, bit for bit: double-double running sums (exactsum) do not depend on the grouping
        assert got["bit_identical"], f"{model_type}, {n} shards: float sums differ by {got['float_sum_max_rel']:.3g} relative"
        full = {p.name for p in (tmp_path / "ref").iterdir()}
        assert {p.name for p in (tmp_path / f"n{n}" / "merged").iterdir()} == full


def test_a_shard_without_tokens_for_an_expert_merges_to_the_unsharded_coverage(prepared_types, tmp_path):
    """MoE routing: a shard whose tokens never reach some expert leaves it uncovered in its own files; merged with the
    shards that reach it, the coverage report is the unsharded run's."""
    # 16 experts, one per token: a shard of one short sample ("Ok.": 3 tokens) reaches at most 3 of them in a layer
    folder = save_tiny_checkpoint("qwen3_moe", tmp_path / "moe16", seed=6, num_experts=16, num_experts_per_tok=1)
    prepared = prepare_checkpoint({"name": "moe16", "source": "local", "path": str(folder)}, tmp_path / "cache")
    _, df, meta = prepared_types["qwen3_moe"]
    s = {**_settings("qwen3_moe"), "batch_size": 1}
    ref = measure_checkpoint(prepared, df, meta, tmp_path / "ref", settings=s, write_exports=True)
    n = len(df)
    parts = [measure_checkpoint(prepared, df, meta, tmp_path / f"s{k}", settings=s, write_exports=True, shard=Shard(k, n))
             for k in range(1, n + 1)]
    merged = merge_shards([tmp_path / f"s{k}" for k in range(1, n + 1)], tmp_path / "m", settings=s, write_exports=True)
    assert any(set(p["calibration"]["uncovered"]) - set(ref["calibration"]["uncovered"]) for p in parts), \
        "no shard missed an expert: nothing was tested"
    assert merged["calibration"]["uncovered"] == ref["calibration"]["uncovered"]
    assert merged["expert_routing"] == ref["expert_routing"]


def _edited(folder, to, **identity):
    """A copy of a shard folder whose shard.json says another ``identity`` (what a shard measured with, e.g., another
    tokenizer of the same checkpoint name records)."""
    import shutil

    shutil.copytree(folder, to)
    info = json.loads((to / "shard.json").read_text())
    info["identity"].update(identity)
    (to / "shard.json").write_text(json.dumps(info))
    return to


def test_merge_refuses_shards_that_do_not_belong_together(prepared_types, tmp_path):
    prepared, df, meta = prepared_types["llama"]
    s = {"device": "cpu", "batch_size": 2}

    def shard(name, k, n, **changes):
        d = tmp_path / name
        measure_checkpoint(changes.pop("prepared", prepared), changes.pop("df", df), changes.pop("meta", meta), d,
                           settings={**s, **changes}, shard=Shard(k, n))
        return d

    a1, a2, a3 = shard("a1", 1, 3), shard("a2", 2, 3), shard("a3", 3, 3)
    other_model = prepared_types["qwen3"][0]
    other_tokens = df.assign(input_ids=[[1] + list(x)[1:] for x in df["input_ids"]])
    cases = [
        ([a1, a2], "shard(s) 3/3 missing"),
        ([a1, a2, a3, a2], "shard 2/3 is given twice"),
        ([a1, a2, shard("b3", 3, 4)], "is shard 3 of 4"),
        ([a1, a2, shard("c3", 3, 3, topk=7)], "measure.topk differs"),
        ([a1, a2, shard("d3", 3, 3, df=other_tokens)], "token ids differs"),
        ([a1, a2, shard("e3", 3, 3, prepared=other_model)], "checkpoint differs"),
        ([a1, a2, shard("f3", 3, 3, batch_size=3)], "batch plan differs"),
        ([a1, a2, shard("g3", 3, 3, prepared={**prepared, "revision": "0123abc"})], "revision differs"),
        ([a1, a2, shard("h3", 3, 3, meta={**meta, "corpus_sha256": "another corpus"})], "corpus differs"),
        ([a1, a2, _edited(a3, tmp_path / "i3", tokenizer_sha256="f" * 64)], "tokenizer differs"),  # another tokenizer
        ([a1, a2, shard("j3", 3, 3, dtype="bfloat16")], "dtype differs"),
        ([a1, a2, shard("k3", 3, 3, full_stats="all")], "measure.full_stats differs"),
        ([a1, a2, tmp_path], "no shard_state.safetensors"),
    ]
    for dirs, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            merge_shards(dirs, tmp_path / "out")
        assert not (tmp_path / "out" / "activation_stats.json").exists()


def test_cli_shards_and_merge_as_a_user_runs_them(tmp_path):
    """`maxact measure --shard K/N` and `maxact merge` as subprocesses on a checkpoint saved to a folder: the merged
    folder holds the unsharded run's files and results; a bad set of shards exits 2 naming the shard."""
    from workflow_helpers import maxact

    folder = save_tiny_checkpoint("qwen3_moe", tmp_path / "tiny-moe", seed=3)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    common = ["--model", folder, "--texts", texts, "--device", "cpu", "--batch-size", "2", "--max-seq-len", "60",
              "--export", "smoothquant,input_scales"]
    assert maxact("measure", *common, "--out", tmp_path / "full").returncode == 0
    for k in (1, 2):
        r = maxact("measure", *common, "--out", tmp_path / f"s{k}", "--shard", f"{k}/2")
        assert r.returncode == 0, r.stderr
    r = maxact("merge", "--out", tmp_path / "merged", tmp_path / "s1")
    assert r.returncode == 2 and "shard(s) 2/2 missing" in r.stderr
    r = maxact("merge", "--out", tmp_path / "merged", tmp_path / "s2", tmp_path / "s1")
    assert r.returncode == 0, r.stderr
    full = {p.name for p in (tmp_path / "full").iterdir()}
    merged = {p.name for p in (tmp_path / "merged").iterdir()}
    assert merged == full
    a = json.loads((tmp_path / "full" / "activation_stats.json").read_text())
    b = json.loads((tmp_path / "merged" / "activation_stats.json").read_text())
    assert not close_diffs({k: v for k, v in a.items() if k != "provenance"}, {k: v for k, v in b.items() if k != "provenance"})
    sh = b["provenance"]["shards"]
    assert sh["count"] == 2 and [p["index"] for p in sh["parts"]] == [1, 2] and sh["sum_of_shard_seconds"] > 0


def test_a_killed_shard_resumes_through_checkpoint_every(prepared_types, tmp_path, monkeypatch):
    """Shard 2 of 2 killed in its third forward with a saved state every batch: run again, it resumes from that
    state, and the merge equals the unsharded run bit for bit."""
    from maxact.measurement.hooks import Measurement

    prepared, df, meta = prepared_types["llama"]
    s = {"device": "cpu", "batch_size": 1, "checkpoint_every": 1}
    measure_checkpoint(prepared, df, meta, tmp_path / "ref", settings=s)
    measure_checkpoint(prepared, df, meta, tmp_path / "s1", settings=s, shard=Shard(1, 2))
    real_forward, calls = Measurement.forward, {"n": 0}

    def dying_forward(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_forward(self, batch)

    monkeypatch.setattr(Measurement, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        measure_checkpoint(prepared, df, meta, tmp_path / "s2", settings=s, shard=Shard(2, 2))
    monkeypatch.setattr(Measurement, "forward", real_forward)
    assert not (tmp_path / "s2" / "shard.json").exists()
    part = measure_checkpoint(prepared, df, meta, tmp_path / "s2", settings=s, shard=Shard(2, 2))
    assert part["provenance"]["resumed_from_batch"] == 2
    merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m", settings=s)
    got = compare_folders(tmp_path / "ref", tmp_path / "m")
    assert got["bit_identical"], (got["stats"] + got["per_sample"] + got["tensors"])[:10]

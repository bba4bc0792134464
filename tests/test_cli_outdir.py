"""A `maxact measure` run owns its output folder (a subprocess on checkpoints saved to folders): another
checkpoint's results are refused unless --overwrite, stale files of an earlier run go, a failed or killed run leaves
the earlier results exactly as they were, and --checkpoint-every makes the same command resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_models import save_tiny_checkpoint
from workflow_helpers import maxact


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file in the folder, hidden ones too but maxact's own lock (it holds the last run's pid)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".maxact-lock"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"llama": save_tiny_checkpoint("llama", root / "tiny-llama", seed=1),
            "qwen3": save_tiny_checkpoint("qwen3", root / "tiny-qwen3", seed=2)}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    p = tmp_path_factory.mktemp("texts") / "texts.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"t{i}", "text": f"sample {i}: " + "abc def " * (3 + 5 * i)}) for i in range(6)) + "\n")
    return p


def measure(model, texts, out, *extra):
    return maxact("measure", "--model", model, "--texts", texts, "--out", out, "--device", "cpu", "--max-seq-len", "200", *extra)


def test_another_checkpoints_folder_is_refused_then_replaced_with_overwrite(tmp_path, models, texts):
    out = tmp_path / "out"
    r = measure(models["llama"], texts, out, "--export", "smoothquant,imatrix,input_scales,awq")
    assert r.returncode == 0, r.stderr
    assert maxact("card", out).returncode == 0
    before = snapshot(out)
    assert "tiny-llama.activation_card.md" in before and "imatrix.gguf" in before

    r = measure(models["qwen3"], texts, out)
    assert r.returncode == 2, r.stderr
    assert "holds the results of another run" in r.stderr and "tiny-llama" in r.stderr and "--overwrite" in r.stderr
    assert snapshot(out) == before  # refused before any work: nothing changed

    r = measure(models["qwen3"], texts, out, "--overwrite", "--export", "awq")
    assert r.returncode == 0, r.stderr
    files = {p.name for p in out.iterdir() if p.name != ".maxact-lock"}
    manifest = json.loads((out / "maxact_run.json").read_text())
    # Only this run's files are left: the other model's calibration files and card went with its results.
    assert files == set(manifest["files"]) | {"maxact_run.json"}, files
    assert "imatrix.gguf" not in files and "tiny-llama.activation_card.md" not in files and "awq_stats.safetensors" in files
    assert json.loads((out / "activation_stats.json").read_text())["checkpoint"] == "tiny-qwen3"
    assert json.loads((out / "calibration.json").read_text())["files"] == ["awq_stats.safetensors"]


def test_a_rerun_of_the_same_checkpoint_removes_the_files_it_no_longer_writes(tmp_path, models, texts):
    out = tmp_path / "out"
    assert measure(models["llama"], texts, out, "--export", "smoothquant,imatrix").returncode == 0
    assert (out / "imatrix.gguf").exists()
    r = measure(models["llama"], texts, out, "--export", "awq")
    assert r.returncode == 0, r.stderr
    assert not (out / "imatrix.gguf").exists() and not (out / "act_scales.pt").exists() and (out / "awq_stats.safetensors").exists()
    assert not any(p.name.startswith((".maxact-staging", ".maxact-resume")) for p in out.iterdir())  # nothing left aside


def test_a_failed_run_leaves_the_earlier_results_exactly_as_they_were(tmp_path, models, texts):
    out = tmp_path / "out"
    assert measure(models["llama"], texts, out, "--export", "awq").returncode == 0
    before = snapshot(out)
    # An input error found after the checkpoint was prepared (a text longer than the model's context).
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "long", "text": "word " * 400}) + "\n")
    r = maxact("measure", "--model", models["llama"], "--texts", long, "--out", out, "--device", "cpu", "--max-seq-len", "2000")
    assert r.returncode == 2 and "the model's context is 256" in r.stderr, r.stderr
    assert snapshot(out) == before  # prepared.json included: nothing is written before the run succeeds


def test_a_killed_run_keeps_the_earlier_results_and_the_same_command_resumes(tmp_path, models):
    """Killed (SIGKILL) while measuring with --checkpoint-every 1: the folder still holds the earlier results
    byte for byte, and the same command run again resumes from the saved batch to the result of an
    uninterrupted run."""
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps({"id": f"s{i:04d}", "text": f"{i} " + "lorem ipsum dolor sit amet " * (2 + i % 7)})
                              for i in range(600)) + "\n")
    args = ["measure", "--model", models["llama"], "--texts", many, "--device", "cpu", "--batch-size", "1",
            "--checkpoint-every", "1"]
    ref = tmp_path / "ref"
    assert maxact(*args, "--out", ref).returncode == 0

    out = tmp_path / "out"
    assert maxact(*args, "--out", out, "--max-samples", "3").returncode == 0  # earlier results in the folder
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, "-m", "maxact.cli", *map(str, args), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    state = out / ".maxact-resume" / "partial_state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".maxact")} == before

    r = maxact(*args, "--out", out, "-v")
    assert r.returncode == 0, r.stderr
    assert "resuming from batch" in r.stderr
    a = json.loads((ref / "activation_stats.json").read_text())
    b = json.loads((out / "activation_stats.json").read_text())
    assert b["provenance"]["resumed_from_batch"] > 0
    assert b["per_layer_stats"] == a["per_layer_stats"] and b["peak"] == a["peak"] and b["num_samples"] == 600
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_parquet(ref / "per_sample_extremes.parquet"), pd.read_parquet(out / "per_sample_extremes.parquet"))
    assert not (out / ".maxact-resume").exists() and not (out / ".maxact-staging").exists()


def test_truncation_is_counted_reported_and_refusable(tmp_path, models, texts):
    """Texts over --max-seq-len are cut, counted in provenance and warned about; --no-truncate refuses them by
    name. The counts are checked against the tokenizer run here, independently."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models["llama"])
    lines = [json.loads(x) for x in texts.read_text().splitlines()]
    n = [len(tok(x["text"], add_special_tokens=False)["input_ids"]) for x in lines]
    limit = sorted(n)[2]  # some texts longer, some not
    over = [(x["id"], k) for x, k in zip(lines, n) if k > limit]
    out = tmp_path / "out"
    r = measure(models["llama"], texts, out, "--max-seq-len", limit)
    assert r.returncode == 0, r.stderr
    tr = json.loads((out / "activation_stats.json").read_text())["provenance"]["tokenization"]["truncation"]
    assert tr["samples"] == len(over) and tr["tokens_dropped"] == sum(k - limit for _, k in over) and tr["max_seq_len"] == limit
    assert sorted(tr["sample_ids"]) == sorted(i for i, _ in over)
    assert f"{len(over)} sample(s) longer than max_seq_len {limit}" in r.stderr

    r = measure(models["llama"], texts, tmp_path / "refused", "--max-seq-len", limit, "--no-truncate")
    assert r.returncode == 2 and "truncation is off" in r.stderr
    assert all(f"'{i}'" in r.stderr for i, _ in over)
    assert not (tmp_path / "refused" / "activation_stats.json").exists()


def test_card_links_are_relative_to_the_card_and_name_the_weights(tmp_path, models, texts):
    out = tmp_path / "res"
    assert measure(models["llama"], texts, out, "--export", "smoothquant,imatrix").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cards = elsewhere / "cards"
    # run from another working directory: the links must not depend on it
    r = subprocess.run([sys.executable, "-m", "maxact.cli", "card", str(out), "--out", "cards"], capture_output=True,
                       text=True, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    from browser import markdown_links

    md = cards / "tiny-llama.activation_card.md"
    text = md.read_text()
    assert "imatrix.gguf" in text and not markdown_links(md)
    assert "None" not in text and "a local folder (no hub revision)" in text


def test_someone_elses_files_are_never_removed_and_overwritten_only_when_asked(tmp_path, models, texts):
    """A folder holding llama.cpp's own imatrix.gguf, a calibration.json and notes of the user's, and no maxact
    results: refused where this run would write over them; with --overwrite they are replaced by this run's own,
    and notes.txt (which no run writes) stays, also when a later run replaces the results."""
    out = tmp_path / "mine"
    out.mkdir()
    for name, data in (("imatrix.gguf", b"llama.cpp's"), ("calibration.json", b"{}"), ("notes.txt", b"keep me")):
        (out / name).write_bytes(data)
    before = snapshot(out)
    r = measure(models["llama"], texts, out, "--export", "imatrix")
    assert r.returncode == 2 and "no maxact run wrote" in r.stderr and "imatrix.gguf" in r.stderr, r.stderr
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".maxact")} == before
    r = measure(models["llama"], texts, out)  # writes neither of them: nothing to refuse, nothing touched
    assert r.returncode == 0, r.stderr
    assert all((out / n).read_bytes() == d for n, d in (("imatrix.gguf", b"llama.cpp's"), ("calibration.json", b"{}")))
    r = measure(models["llama"], texts, out, "--export", "imatrix", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "imatrix.gguf").read_bytes() != b"llama.cpp's" and (out / "notes.txt").read_bytes() == b"keep me"
    assert measure(models["llama"], texts, out).returncode == 0  # the imatrix is this run's now: a rerun without it removes it
    assert not (out / "imatrix.gguf").exists() and (out / "notes.txt").read_bytes() == b"keep me"


def test_a_second_run_into_the_same_folder_waits_its_turn(tmp_path, models):
    """While one run writes into --out, another run into the same folder is refused (the folder's lock)."""
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps({"id": f"s{i}", "text": "lorem ipsum " * 20}) for i in range(300)) + "\n")
    out = tmp_path / "out"
    args = ["measure", "--model", models["llama"], "--texts", many, "--device", "cpu", "--batch-size", "1", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "maxact.cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not any(out.glob(".maxact-staging-*")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = maxact(*args)
    assert second.returncode == 2 and "another maxact run" in second.stderr and str(first.pid) in second.stderr
    assert first.wait(timeout=600) == 0
    assert maxact(*args).returncode == 0  # the lock went with the first run


def test_another_revision_of_the_same_checkpoint_is_refused(tmp_path):
    from maxact.errors import InputError
    from maxact.outdir import OwnedDir

    d = OwnedDir(tmp_path / "o")
    d.claim({"checkpoint": "m", "source": "hub", "model": "org/m", "revision": "v1"}, ["activation_stats.json"])
    with d.staging() as st:
        (st / "activation_stats.json").write_text("{}")
        d.commit()
    d.release()
    with pytest.raises(InputError, match="revision v1.*revision v2.*revision differ"):
        OwnedDir(tmp_path / "o").claim({"checkpoint": "m", "source": "hub", "model": "org/m", "revision": "v2"})

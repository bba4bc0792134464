"""`maxact` as a user runs it (a subprocess, a checkpoint saved to a folder): every setting range-checked before any
work, bad input refused by name with exit code 2, a failed run exits 1, and --help shows every default."""

from __future__ import annotations

import json
import re

import pytest

from maxact import schema
from tiny_models import save_tiny_checkpoint
from workflow_helpers import maxact


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("ckpt") / "tiny-llama", seed=3)


@pytest.fixture
def texts(tmp_path):
    p = tmp_path / "texts.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"t{i}", "text": "abc def " * (5 + 9 * i)}) for i in range(4)) + "\n")
    return p


# (option, section, key) of every numeric option of `maxact measure`: its range is the config schema's.
NUMERIC = [("--max-seq-len", "tokenization", "max_seq_len"), ("--batch-size", "runtime", "batch_size"),
           ("--max-batch-tokens", "runtime", "max_batch_tokens"), ("--max-samples", "measure", "max_samples"),
           ("--topk", "measure", "topk"), ("--checkpoint-every", "runtime", "checkpoint_every")]


def test_every_numeric_option_is_listed_here():
    """A numeric option added to the CLI without a range check would not be in NUMERIC: fail then."""
    from maxact.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices["measure"]
    numeric = {a.option_strings[-1] for a in sub._actions if getattr(a.type, "__name__", "") == "integer"}
    assert numeric == {o for o, _, _ in NUMERIC}


@pytest.mark.parametrize("option, section, key", NUMERIC)
def test_out_of_range_values_are_refused_naming_the_option_and_range(tmp_path, model_dir, texts, option, section, key, capsys):
    from maxact.cli import main

    lo, hi, _ = schema.bounds(section, key)
    assert lo is not None and hi is not None
    out = tmp_path / "out"
    p = maxact("measure", "--model", model_dir, "--texts", texts, "--out", out, option, lo - 1)  # as a user runs it
    assert p.returncode == 2 and f"argument {option}: must be an integer from {lo} to {hi} (got {lo - 1})" in p.stderr, p.stderr
    for bad in (hi + 1, -3, "2.5", "many"):  # the same parser, in this process
        with pytest.raises(SystemExit) as e:
            main(["measure", "--model", str(model_dir), "--texts", str(texts), "--out", str(out), option, str(bad)])
        assert e.value.code == 2 and f"argument {option}: must be an integer from {lo} to {hi}" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_every_numeric_config_key_has_a_range():
    """Every integer or number the schemas take has a lowest and a highest allowed value."""
    missing = []

    def walk(props, where):
        for k, v in props.items():
            types = v.get("type")
            types = [types] if isinstance(types, str) else list(types or [])
            items = v.get("items") if isinstance(v.get("items"), dict) else {}
            for name, s in ((f"{where}{k}", v), (f"{where}{k}[]", items)):
                t = s.get("type")
                t = [t] if isinstance(t, str) else list(t or [])
                if {"integer", "number"} & set(t):
                    if ("minimum" not in s and "exclusiveMinimum" not in s) or "maximum" not in s:
                        missing.append(name)
            if "properties" in v:
                walk(v["properties"], f"{where}{k}.")
            if isinstance(items, dict) and "properties" in items:
                walk(items["properties"], f"{where}{k}[].")
            if isinstance(v.get("additionalProperties"), dict) and {"number", "integer"} & set([v["additionalProperties"].get("type")]):
                if "minimum" not in v["additionalProperties"]:
                    missing.append(f"{where}{k}.*")

    walk(schema.load(schema.CONFIG)["properties"], "")
    walk(schema.load(schema.CORPUS)["properties"], "corpus.")
    assert not missing, f"numeric config keys without a range: {missing}"


def test_settings_out_of_range_in_a_config_are_refused_before_any_work():
    from maxact.errors import InputError
    from maxact.measurement.settings import MeasureSettings

    for bad, msg in (({"batch_size": 0}, "runtime.batch_size must be an integer from 1 to"),
                     ({"max_batch_tokens": -1}, "runtime.max_batch_tokens must be"),
                     ({"topk": 10**9}, "measure.topk must be an integer from 1 to 100000"),
                     ({"device": "gpu0"}, "runtime.device must be auto, cpu, cuda or cuda:N"),
                     ({"packing": "sometimes"}, "measure.packing must be one of auto, on, off")):
        with pytest.raises(InputError, match=re.escape(msg)):
            MeasureSettings.of(bad)


@pytest.mark.parametrize("content, message", [
    (b'{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n', "duplicate id 'a'"),
    (b'{"id": "a", "txt": "no text"}\n', "a record needs a 'text' field"),
    (b'{"id": "a", "text": 5}\n', "'text' must be a non-empty string"),
    (b'{"id": "a", "text": "   "}\n', "'text' must be a non-empty string"),
    (b'{"id": [1], "text": "x"}\n', "'id' must be a string or an integer"),
    (b"\xff\xfe not utf8\n", "not a UTF-8 JSON line"),
    (b"", "no texts; the file is empty"),
])
def test_bad_texts_exit_2_naming_the_line(tmp_path, model_dir, content, message):
    p = tmp_path / "t.jsonl"
    p.write_bytes(content)
    r = maxact("measure", "--model", model_dir, "--texts", p, "--out", tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr and str(p) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, message", [
    ("./no/such/folder", "no such file or folder"),
    ("/abs/missing/model", "no such file or folder"),
    ("weights.gguf", "no such file or folder"),
])
def test_a_missing_local_path_is_reported_as_missing(tmp_path, texts, model, message):
    r = maxact("measure", "--model", model, "--texts", texts, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and model in r.stderr, r.stderr
    assert "model_root" not in r.stderr and "hub id" in r.stderr


def test_an_unreachable_hub_id_names_the_cli_fix_not_the_workflow_key(tmp_path, texts):
    r = maxact("measure", "--model", "someorg/not-here", "--texts", texts, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--model PATH" in r.stderr and "no local folder 'someorg/not-here'" in r.stderr


def test_other_bad_options_exit_2(tmp_path, model_dir, texts):
    cases = [(["--revision", "v1"], "--revision applies to hub ids only"),
             (["--export", "smoothquant,bogus"], "unknown --export bogus"),
             (["--texts", tmp_path], "no such file (it is a folder)"),
             (["--device", "cuda:x"], "argument --device: must be auto, cpu, cuda or cuda:N")]
    for extra, message in cases:
        args = ["measure", "--model", model_dir, "--texts", texts, "--out", tmp_path / "out", *extra]
        r = maxact(*args)
        assert r.returncode == 2 and message in r.stderr, (extra, r.stderr)
    f = tmp_path / "file"
    f.write_text("x")
    r = maxact("measure", "--model", model_dir, "--texts", texts, "--out", f)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr


def test_a_run_failure_exits_1_and_an_interrupt_130(tmp_path, model_dir, texts, monkeypatch, capsys):
    """Exit codes: input errors 2 (above), a run that fails once started 1, an interrupt 130 (in-process: the
    failure is injected into the measurement)."""
    import maxact.stages.measure
    from maxact.cli import main

    def fail(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(maxact.stages.measure, "measure_checkpoint", fail)
    rc = main(["measure", "--model", str(model_dir), "--texts", str(texts), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "the run failed: RuntimeError: CUDA error" in err and "Traceback" not in err

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(maxact.stages.measure, "measure_checkpoint", interrupt)
    rc = main(["measure", "--model", str(model_dir), "--texts", str(texts), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "o" / "activation_stats.json").exists()


@pytest.mark.parametrize("command", ["measure", "merge", "extremes", "aggregate", "card"])
def test_help_shows_every_options_default_and_help(command):
    r = maxact(command, "--help")
    assert r.returncode == 0
    from maxact.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices[command]
    text = re.sub(r"\s+", " ", r.stdout)
    for a in sub._actions:
        if a.dest == "help":
            continue
        assert a.help, f"{command} {a.option_strings or a.dest} has no help line"
        if a.option_strings:
            assert a.option_strings[-1] in text
    n_options = sum(1 for a in sub._actions if a.option_strings and a.dest != "help")
    assert text.count("(default: ") + text.count("(required)") == n_options, r.stdout


def test_the_exit_code_rule_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"exit code.*\b2\b.*usage.*\b1\b.*run", readme, re.I | re.S)

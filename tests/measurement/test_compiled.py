"""Regional compilation (measure.compile) on the CPU in float32: a checkpoint folder measured by `maxact measure` eager
and with every decoder layer compiled agrees on every statistic, top value and per-sample extreme within float32
tolerance (inductor's fused kernels round differently), and the global max has the same value and location.

Families checked here: llama, qwen3, gemma3_text (in CI: each compile takes 10-20 s on the CPU)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from maxact.cli import main
from maxact.errors import InputError
from maxact.measurement.compiled import resolve_compile
from maxact.models.registry import Compile, family_for
from tiny_models import save_tiny_checkpoint

RTOL, ATOL = 2e-5, 1e-6  # float32: a few units in the last place of values of order 1, summed over 32-64 channels

TEXTS = [{"id": f"s{i}", "text": t} for i, t in enumerate([
    "The quick brown fox jumps over the lazy dog. " * 3, "def f(x):\n    return x * 2\n" * 4, "1 2 3 4 5 6 7 8 9 10 " * 5,
    "Mixed: café, naïve, 東京, Привет, مرحبا. " * 2, "Short."])]


def _close(a, b, path="$") -> list[str]:
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys differ {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (float, int)):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            return []
        return [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3_text"])
def test_compiled_measurement_equals_eager_on_cpu(tmp_path, model_type):
    folder = save_tiny_checkpoint(model_type, tmp_path / f"tiny-{model_type}", seed=3)
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    out = {}
    for mode in ("off", "on"):
        out[mode] = tmp_path / mode
        assert main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out[mode]), "--device", "cpu",
                     "--max-seq-len", "64", "--compile", mode, "--export", "input_scales"]) == 0
    e, c = (json.loads((out[m] / "activation_stats.json").read_text()) for m in ("off", "on"))
    comp = c["provenance"]["compile"]
    assert comp["setting"] == "on" and comp["compiled"] is True and comp["layers"] == 2 and comp["unique_graphs"] > 0
    assert comp["compile_seconds"] > 0 and comp["inductor_cache"]
    assert e["provenance"]["compile"] == {"setting": "off", "why_eager": "measure.compile: off", "compiled": False,
                                          "inductor_cache": None}
    # The global max: the same location, the same value within float32 tolerance.
    assert c["global_max_location"] == e["global_max_location"]
    assert math.isclose(c["global_max_activation"], e["global_max_activation"], rel_tol=RTOL)
    diffs = _close(e["per_layer_stats"], c["per_layer_stats"], "per_layer_stats")
    assert not diffs, diffs[:10]
    assert not _close(e.get("peak"), c.get("peak"), "peak")
    pe, pc = (pd.read_parquet(out[m] / "per_sample_extremes.parquet") for m in ("off", "on"))
    assert list(pe.columns) == list(pc.columns) and list(pe["sample_id"]) == list(pc["sample_id"])
    num = [k for k in pe.columns if k != "sample_id"]
    assert ((pe[num] - pc[num]).abs() <= ATOL + RTOL * pe[num].abs()).all().all()


def test_resolve_compile_follows_the_registry():
    fam = family_for(type("C", (), {"model_type": "llama"})())
    assert resolve_compile(fam, "off", "cuda") == (False, "measure.compile: off")
    assert resolve_compile(fam, "on", "cpu") == (True, "")
    ok, why = resolve_compile(fam, "auto", "cpu")
    assert not ok and "checked on" in why and "measure.compile: on forces it" in why
    checked = type(fam)(**{**fam.__dict__, "compile": Compile(checked=("cuda",))})
    assert resolve_compile(checked, "auto", "cuda") == (True, "")
    blocked = type(fam)(**{**fam.__dict__, "compile": Compile(why_not="remote code")})
    assert resolve_compile(blocked, "auto", "cuda") == (False, "family 'llama' cannot be compiled: remote code")
    with pytest.raises(InputError, match="cannot be compiled: remote code"):
        resolve_compile(blocked, "on", "cuda")
    with pytest.raises(InputError, match="measure.compile must be one of"):
        resolve_compile(fam, "yes", "cuda")


def test_bad_compile_setting_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["measure", "--model", "x/y", "--texts", "t.jsonl", "--out", str(tmp_path / "o"), "--compile", "maybe"])
    assert e.value.code == 2 and "--compile" in capsys.readouterr().err

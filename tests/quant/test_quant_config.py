"""The quant_eval settings: one schema with the defaults, range-checked, cross-checked against measure.exports,
and the rule planned only where it can run."""

from __future__ import annotations

import copy

import pytest
import yaml

from maxact.config import ConfigError, quant_eval_runs, validate_config
from workflow_helpers import REPO, TEST_CONFIG, planned, snakemake

SCHEMA = REPO / "src" / "maxact" / "schema" / "config.schema.yaml"


def _cfg(**quant):
    c = yaml.safe_load(TEST_CONFIG.read_text())
    c["quant_eval"] = {**c.get("quant_eval", {}), **quant}
    return c


def test_defaults_come_from_the_schema():
    c = yaml.safe_load(TEST_CONFIG.read_text())
    c.pop("quant_eval")
    validate_config(c, SCHEMA)
    q = c["quant_eval"]
    assert q["enabled"] == "auto" and q["formats"] == ["fp8_static", "int8_static", "int8_dynamic", "fp8_dynamic", "smoothquant_w8a8"]
    assert (q["n_samples"], q["max_tokens"], q["smoothquant_alpha"]) == (8, 256, 0.5)
    assert q["llama_cpp"]["types"] == ["Q4_K_M", "IQ4_XS", "IQ3_XXS"] and q["llama_cpp"]["enabled"] == "auto"
    assert quant_eval_runs(c)


@pytest.mark.parametrize("change, message", [
    ({"n_samples": 0}, "n_samples"),
    ({"max_tokens": 1}, "max_tokens"),
    ({"smoothquant_alpha": 1.2}, "smoothquant_alpha"),
    ({"formats": ["int4_static"]}, "formats"),
    ({"formats": []}, "formats"),
    ({"safe_delta_nll": 0.6, "breaks_delta_nll": 0.5}, "safe_delta_nll"),
    ({"llama_cpp": {"types": ["Q4_K_M; rm -rf /"]}}, "types"),
    ({"bogus": 1}, "bogus"),
])
def test_nonsense_is_refused_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_cfg(**change), SCHEMA)


def test_enabled_true_needs_the_exports_its_formats_read():
    c = _cfg(enabled=True)
    c["measure"]["exports"] = ["imatrix", "input_scales"]
    with pytest.raises(ConfigError, match="measure.exports lacks smoothquant .formats needing them: smoothquant_w8a8"):
        validate_config(copy.deepcopy(c), SCHEMA)
    c["quant_eval"]["formats"] = ["int8_static", "int8_dynamic"]
    validate_config(c, SCHEMA)


def test_auto_runs_only_where_the_input_scales_are_exported():
    c = _cfg()
    c["measure"]["exports"] = ["imatrix"]
    validate_config(c, SCHEMA)
    assert not quant_eval_runs(c)
    c = _cfg(enabled=False)
    validate_config(c, SCHEMA)
    assert not quant_eval_runs(c)


def test_the_dag_plans_quant_eval_after_calibration(tmp_path):
    p = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert planned(p.stdout).get("quant_eval") == 2
    cfg = tmp_path / "off.yaml"
    c = yaml.safe_load(TEST_CONFIG.read_text())
    c["measure"]["exports"] = ["imatrix"]
    cfg.write_text(yaml.safe_dump(c))
    p = snakemake(tmp_path, "-n", "--quiet", "rules", configfile=cfg)
    assert "quant_eval" not in planned(p.stdout)
    c["quant_eval"]["enabled"] = True
    cfg.write_text(yaml.safe_dump(c))
    p = snakemake(tmp_path, "-n", configfile=cfg, check=False)
    assert p.returncode != 0 and "add input_scales, smoothquant to measure.exports" in p.stdout + p.stderr

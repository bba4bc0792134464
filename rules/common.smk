# Config validation and target lists. Everything the rules need is computed here once.

import sys
from pathlib import Path

from snakemake.utils import validate

# Let the Snakefile import the package from the checkout even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow_scripts"))

from maxact.workflow import (
    checkpoint_entry,
    checkpoint_meta,
    checkpoint_names,
    report_targets,
    tokenizer_group,
    tokenizer_groups,
    validate_config,
)

SCHEMA = f"{workflow.basedir}/config/schema/config.schema.yaml"
validate_config(config, SCHEMA)  # path-aware messages for unknown keys and wrong types
validate(config, SCHEMA, set_default=True)  # fills every default the schema declares
validate_config(config, SCHEMA, semantic=True)

RESULTS = config["results_dir"]
REPORTS = config["reports_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
CHECKPOINTS = checkpoint_names(config)
GROUPS = tokenizer_groups(config)


wildcard_constraints:
    ckpt="[A-Za-z0-9._-]+",
    group="[A-Za-z0-9._-]+",


def all_targets():
    return report_targets(config)


def group_prepared(wildcards):
    """The prepared checkpoint whose tokenizer tokenizes this group (its first member)."""
    return f"{RESULTS}/checkpoints/{GROUPS[wildcards.group][0]}/prepared.json"


def ckpt_tokens(wildcards):
    return f"{RESULTS}/tokens/{tokenizer_group(config, wildcards.ckpt)}/tokens.parquet"


def ckpt_param(key):
    """A function of the wildcards returning one checkpoint's config entry value (no lambdas in rules)."""

    def get(wildcards):
        return checkpoint_entry(config, wildcards.ckpt).get(key)

    return get


def canonical(obj):
    """Params with sorted keys: Snakemake compares params by their serialisation, so key order in the
    YAML (or a re-dumped config) must not trigger reruns."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def ckpt_entry(wildcards):
    return canonical(checkpoint_entry(config, wildcards.ckpt))


def ckpt_meta(wildcards):
    return canonical(checkpoint_meta(config, wildcards.ckpt))


def ckpt_gpus(wildcards):
    return int(checkpoint_entry(config, wildcards.ckpt).get("gpus", 1))


def measured_results(wildcards=None):
    return expand(f"{RESULTS}/measure/{{ckpt}}/activation_stats.json", ckpt=CHECKPOINTS)


def int8_results(wildcards=None):
    """The INT-8 checks the study asks for (none when int8.enabled is false)."""
    if not config["int8"]["enabled"]:
        return []
    return expand(f"{RESULTS}/int8/{{ckpt}}/int8_check.json", ckpt=CHECKPOINTS)


def published_dir():
    """The published results folder (absolute), or None when the study leaves them out."""
    pub = config["published"]
    if not pub["include"]:
        return None
    p = Path(pub["dir"])
    return str(p if p.is_absolute() else Path(workflow.basedir) / p)


def per_sample_tables(wildcards=None):
    return expand(f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet", ckpt=CHECKPOINTS)


def measured_tokens(wildcards=None):
    return [f"{RESULTS}/tokens/{tokenizer_group(config, c)}/tokens.parquet" for c in CHECKPOINTS]


def probe_results(wildcards=None):
    """The probe sets the study asks for (none when probes.enabled is false)."""
    if not config["probes"]["enabled"]:
        return []
    return expand(f"{RESULTS}/probes/{{ckpt}}/probes.json", ckpt=CHECKPOINTS)

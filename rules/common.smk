# Config validation and target lists. Everything the rules need is computed here once.

import sys
from pathlib import Path

# Let the Snakefile import the package from the checkout even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from maxact.stalelock import clear_stale_lock, record_lock_owner
from maxact.study.resultset import PUBLISHED_EXP_A, PUBLISHED_INT8, discover_result_files
from maxact.config import (
    checkpoint_entry,
    checkpoint_meta,
    checkpoint_names,
    quant_eval_runs,
    report_targets,
    tokenizer_group,
    tokenizer_groups,
    validate_config,
)

SCHEMA = f"{workflow.basedir}/src/maxact/schema/config.schema.yaml"
validate_config(config, SCHEMA)  # one snakemake.utils.validate (defaults filled in), path-aware messages on failure

# A lock left by a run that was killed outright would stop the next plain run: removed when its owner is known to
# be gone (maxact.stalelock); the owner of each lock is recorded when the run starts its jobs.
if _unlocked := clear_stale_lock(Path.cwd(), sys.argv, workflow.is_main_process):
    print(f"maxact: {_unlocked}", file=sys.stderr)


onstart:
    record_lock_owner(workflow, Path.cwd())

RESULTS = config["results_dir"]
SHARDS = int(config["runtime"]["shards"])  # a runtime setting: how the measure rule is split (rules/measure.smk)
REPORTS = config["reports_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
CHECKPOINTS = checkpoint_names(config)
GROUPS = tokenizer_groups(config)


wildcard_constraints:
    ckpt="[A-Za-z0-9._-]+",
    group="[A-Za-z0-9._-]+",


scattergather:
    shard=SHARDS,


def all_targets():
    """The report and every checkpoint's results: a plain run remakes any of them that a killed job removed, even
    where the report is still there (Snakemake does not revisit a finished job's inputs otherwise)."""
    calibration = expand(calibration_files(), ckpt=CHECKPOINTS) if EXPORTS else []
    return (report_targets(config) + measured_results() + per_sample_tables() + calibration_results() + calibration
            + int8_results() + probe_results() + extremes_results() + quant_eval_results())


def group_prepared(wildcards):
    """The prepared checkpoint whose tokenizer tokenizes this group (its first member)."""
    return f"{RESULTS}/checkpoints/{GROUPS[wildcards.group][0]}/prepared.json"


def group_tokenizer_from(wildcards):
    """The checkpoint whose tokenizer tokenizes the group (a param: a changed group reruns its tokenize)."""
    return GROUPS[wildcards.group][0]


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


#: What decides the input lists of the study-level rules. The workflow runs without Snakemake's "input" rerun trigger
#: (profiles/default: a changed runtime.shards changes the measure rule's inputs but not its results), so the rules
#: whose inputs follow the config carry what decides them as params.
STUDY_INPUTS = canonical({"checkpoints": CHECKPOINTS, "int8": config["int8"]["enabled"], "probes": config["probes"]["enabled"],
                          "exports": config["measure"]["exports"], "published": config["published"],
                          "quant_eval": quant_eval_runs(config)})


def ckpt_entry(wildcards):
    return canonical(checkpoint_entry(config, wildcards.ckpt))


def ckpt_meta(wildcards):
    return canonical(checkpoint_meta(config, wildcards.ckpt))


def ckpt_group(wildcards):
    """The tokenizer group whose tokens a checkpoint reads (a param: a changed group reruns what reads them)."""
    return tokenizer_group(config, wildcards.ckpt)


def ckpt_gpus(wildcards):
    return int(checkpoint_entry(config, wildcards.ckpt).get("gpus", 1))


EXPORTS = list(config["measure"]["exports"])
RECORDS_LINEAR_INPUTS = bool(config["measure"]["linear_inputs"] or EXPORTS)


def measure_extra_outputs():
    """The measure rule's linear-input statistics, where the study records them (measure.linear_inputs/exports)."""
    if not RECORDS_LINEAR_INPUTS:
        return {}
    return {"linear_inputs": f"{RESULTS}/measure/{{ckpt}}/linear_inputs.safetensors"}


def calibration_files():
    from maxact.calibration.exports import files_for

    return [f"{RESULTS}/calibration/{{ckpt}}/{name}" for name in files_for(EXPORTS)]


def calibration_results(wildcards=None):
    """Each checkpoint's calibration manifest (none when measure.exports is empty)."""
    if not EXPORTS:
        return []
    return expand(f"{RESULTS}/calibration/{{ckpt}}/calibration.json", ckpt=CHECKPOINTS)


def measured_results(wildcards=None):
    return expand(f"{RESULTS}/measure/{{ckpt}}/activation_stats.json", ckpt=CHECKPOINTS)


def quant_eval_results(wildcards=None):
    """Each checkpoint's quantized-format evaluation (none when quant_eval.enabled is false)."""
    if not quant_eval_runs(config):
        return []
    return expand(f"{RESULTS}/quant_eval/{{ckpt}}/quant_eval.json", ckpt=CHECKPOINTS)


def extremes_results(wildcards=None):
    """The extreme-value estimates the study asks for (none when extremes.enabled is false)."""
    if not config["extremes"]["enabled"]:
        return []
    return expand(f"{RESULTS}/extremes/{{ckpt}}/extremes.json", ckpt=CHECKPOINTS)


def int8_results(wildcards=None):
    """The INT-8 checks the study asks for (none when int8.enabled is false)."""
    if not config["int8"]["enabled"]:
        return []
    return expand(f"{RESULTS}/int8/{{ckpt}}/int8_check.json", ckpt=CHECKPOINTS)


def _in_workflow(path):
    p = Path(path)
    return p if p.is_absolute() else Path(workflow.basedir) / p


def published_results(wildcards=None):
    """The published result files (inputs of the aggregate, so that changing one reruns it), or none."""
    if not config["published"]["include"]:
        return []
    return [str(p) for p in discover_result_files([_in_workflow(config["published"]["dir"])])]


def published_exp_a(wildcards=None):
    """The paper's bootstrap experiment A files (vendored, gzipped), when the study includes the published results."""
    if not config["published"]["include"]:
        return []
    return sorted(str(p) for p in (_in_workflow(config["published"]["dir"]) / PUBLISHED_EXP_A).glob("*_activation_stats.json.gz"))


def published_top5(wildcards=None):
    """The paper's top-5 files (vendored, gzipped), when the study includes the published results."""
    if not config["published"]["include"]:
        return []
    return sorted(str(p) for p in _in_workflow(config["published"]["dir"]).rglob("*_top5_stats.json.gz"))


def published_int8(wildcards=None):
    """The paper's INT-8 summary inside the published folder, when the study includes it and it exists."""
    if not config["published"]["include"]:
        return []
    p = _in_workflow(config["published"]["dir"]) / PUBLISHED_INT8
    return [str(p)] if p.exists() else []


def published_config(wildcards=None):
    """The config naming the published checkpoints (meta, the paper's matched pairs), or none."""
    if not config["published"]["include"] or not config["published"].get("config"):
        return []
    return [str(_in_workflow(config["published"]["config"]))]


def study_meta_config():
    """What the aggregate reads of the study's own config: its checkpoints' meta and its matched pairs."""
    return canonical({"checkpoints": [{"name": c["name"], **checkpoint_meta(config, c["name"])} for c in config["checkpoints"]],
                      "matched_pairs": config["matched_pairs"]})


def top5_results(wildcards=None):
    return expand(f"{RESULTS}/top5/{{ckpt}}/{{ckpt}}_top5_stats.json", ckpt=CHECKPOINTS)


def per_sample_tables(wildcards=None):
    return expand(f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet", ckpt=CHECKPOINTS)


def measured_tokens(wildcards=None):
    return [f"{RESULTS}/tokens/{tokenizer_group(config, c)}/tokens.parquet" for c in CHECKPOINTS]


def probe_results(wildcards=None):
    """The probe sets the study asks for (none when probes.enabled is false)."""
    if not config["probes"]["enabled"]:
        return []
    return expand(f"{RESULTS}/probes/{{ckpt}}/probes.json", ckpt=CHECKPOINTS)

# maxact: maximum activations of open LLM checkpoints, as a cached, resumable DAG.
# Stages: corpus -> prepare_checkpoint -> tokenize -> measure -> calibration -> quant_eval; top5, int8_check, extremes -> aggregate/supplementary -> render.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/prepare.smk"
include: "rules/tokenize.smk"
include: "rules/measure.smk"
include: "rules/calibration.smk"
include: "rules/top5.smk"
include: "rules/int8.smk"
include: "rules/probes.smk"
include: "rules/aggregate.smk"
include: "rules/supplementary.smk"
include: "rules/extremes.smk"
include: "rules/quant_eval.smk"
include: "rules/render.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        rules.render.output,

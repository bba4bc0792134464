rule measure:
    """Forward hooks on the text backbone: per-component statistics, peaks and per-sample extremes."""
    input:
        prepared=rules.prepare_checkpoint.output.prepared,
        tokens=ckpt_tokens,
        manifest=rules.corpus.output.manifest,
    output:
        stats=f"{RESULTS}/measure/{{ckpt}}/activation_stats.json",
        per_sample=f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet",
        **measure_extra_outputs(),
    params:
        meta=ckpt_meta,
        measure=canonical(config["measure"]),
    resources:
        gpu=ckpt_gpus,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/measure/{{ckpt}}.log",
    benchmark:
        f"{BENCH}/measure/{{ckpt}}.tsv"
    script:
        "../workflow_scripts/measure.py"

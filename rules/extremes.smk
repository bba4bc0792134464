rule extremes:
    """What a larger corpus would find: an extreme-value fit of the checkpoint's per-sample maxima (median maximum over
    N samples with 90% intervals, shape, endpoint, structural peak), checked by predicting the whole corpus from
    random quarters of it."""
    input:
        per_sample=f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet",
        stats=rules.measure.output.stats,
        tokens=lambda wc: f"{RESULTS}/tokens/{tokenizer_group(config, wc.ckpt)}/tokens.parquet",
    output:
        extremes=f"{RESULTS}/extremes/{{ckpt}}/extremes.json",
    params:
        extremes=canonical(config["extremes"]),
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/extremes/{{ckpt}}.log",
    script:
        "../workflow_scripts/extremes.py"

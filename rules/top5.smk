rule top5:
    """The checkpoint's top values in the paper's form (its <model>_top5_stats.json), from the measured result."""
    input:
        stats=rules.measure.output.stats,
    output:
        top5=f"{RESULTS}/top5/{{ckpt}}/{{ckpt}}_top5_stats.json",
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/top5/{{ckpt}}.log",
    script:
        "../workflow_scripts/top5.py"

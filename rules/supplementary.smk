rule supplementary:
    """Bootstrap stability and saturation of the global max, exact from the per-sample extremes."""
    input:
        per_sample=per_sample_tables,
        tokens=measured_tokens,
    output:
        bootstrap=f"{RESULTS}/aggregate/bootstrap.csv",
        saturation=f"{RESULTS}/aggregate/saturation.csv",
        verdicts=f"{RESULTS}/aggregate/saturation_verdicts.json",
    params:
        checkpoints=CHECKPOINTS,
        analysis=canonical(config["analysis"]),
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/supplementary.log",
    script:
        "../workflow_scripts/supplementary.py"

rule supplementary:
    """The paper's bootstrap experiment A and the saturation of the global max, exact from the per-sample extremes,
    beside the paper's own experiment A (its published files)."""
    input:
        per_sample=per_sample_tables,
        tokens=measured_tokens,
        published=published_results,
        published_exp_a=published_exp_a,
    output:
        bootstrap=f"{RESULTS}/aggregate/bootstrap.csv",
        saturation=f"{RESULTS}/aggregate/saturation.csv",
        verdicts=f"{RESULTS}/aggregate/saturation_verdicts.json",
    params:
        checkpoints=CHECKPOINTS,
        analysis=canonical(config["analysis"]),
        inputs=STUDY_INPUTS,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/supplementary.log",
    script:
        "../workflow_scripts/supplementary.py"

rule aggregate:
    """One table over the measured checkpoints and the paper's published ones; claims derived from it."""
    input:
        stats=measured_results,
        int8=int8_results,
        published=published_results,
        published_int8=published_int8,
        published_config=published_config,
        top5=top5_results,
        published_top5=published_top5,
    output:
        global_table=f"{RESULTS}/aggregate/global_max.csv",
        layer_table=f"{RESULTS}/aggregate/layer_stats.parquet",
        claims=f"{RESULTS}/aggregate/claims.json",
        comparison=f"{RESULTS}/aggregate/measured_vs_published.csv",
        int8_table=f"{RESULTS}/aggregate/int8.csv",
        top5_table=f"{RESULTS}/aggregate/top5_indicators.csv",
    params:
        # The study's own checkpoints (meta) and pairs; the published ones come from input.published_config.
        study=study_meta_config(),
        inputs=STUDY_INPUTS,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"

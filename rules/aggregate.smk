rule aggregate:
    """One table over the measured checkpoints and the paper's published ones; claims derived from it."""
    input:
        stats=measured_results,
        int8=int8_results,
    output:
        global_table=f"{RESULTS}/aggregate/global_max.csv",
        layer_table=f"{RESULTS}/aggregate/layer_stats.parquet",
        claims=f"{RESULTS}/aggregate/claims.json",
        comparison=f"{RESULTS}/aggregate/measured_vs_published.csv",
        int8_table=f"{RESULTS}/aggregate/int8.csv",
    params:
        published_dir=published_dir(),
        matched_pairs=canonical(config["matched_pairs"]),
        checkpoints=canonical(config["checkpoints"]),
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"

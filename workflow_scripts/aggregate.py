"""Rule aggregate: measured + published results in one table; claims derived from them."""
from maxact.rulelog import rule_logging
from maxact.study import aggregate_for_workflow

with rule_logging(snakemake) as log:
    claims = aggregate_for_workflow(
        stats_paths=list(snakemake.input.stats),
        int8_paths=list(snakemake.input.int8),
        published_dir=snakemake.params.published_dir,
        checkpoints=list(snakemake.params.checkpoints),
        matched_pairs=list(snakemake.params.matched_pairs),
        outputs=dict(snakemake.output.items()),
    )
    log.info("claims: %s", claims)

"""Rule aggregate: measured + published results in one table; claims derived from them."""
from maxact.rulelog import rule_logging
from maxact.stages.aggregate import AggregateOutputs, aggregate, meta_and_pairs, read_study_config

with rule_logging(snakemake) as log:
    # The published checkpoints' meta from their config, the measured ones' from this study's entries.
    meta, pairs = meta_and_pairs([read_study_config(p) for p in snakemake.input.published_config], [dict(snakemake.params.study)])
    claims = aggregate(
        list(snakemake.input.stats) + list(snakemake.input.published),
        AggregateOutputs.of(dict(snakemake.output.items())),
        meta,
        pairs,
        int8_paths=list(snakemake.input.int8),
        published_int8=(list(snakemake.input.published_int8) or [None])[0],
        top5_paths=list(snakemake.input.top5),
        published_top5=list(snakemake.input.published_top5),
    )
    log.info("claims: %s", claims)

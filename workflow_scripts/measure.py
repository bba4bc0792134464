"""Rules measure and measure_shard: hook the text backbone and write activation_stats.json plus tidy tables (one shard
of the batch plan when the job has a scatteritem); with runtime.shards > 1 the measure rule merges the checkpoint's
shards into the same files instead. One script for all three, so that a changed number of shards reruns nothing
already measured."""
from pathlib import Path

from maxact.gpuslots import acquire
from maxact.io import read_json
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    out_dir = Path(snakemake.output[0]).parent  # activation_stats.json's folder, or the shard's
    if "shards" in snakemake.input.keys():
        from maxact.stages.merge import merge_shards

        result = merge_shards([Path(p).parent for p in snakemake.input.shards], out_dir,
                              settings=dict(snakemake.params.measure), prepared=read_json(snakemake.input.prepared))
        sh = result["provenance"]["shards"]
        log.info("%s: %d shards merged; wall %s s, sum of shard times %s s", result["checkpoint"], sh["count"],
                 sh["wall_seconds"], sh["sum_of_shard_seconds"])
    else:
        acquire(int(snakemake.resources.gpu))  # before CUDA starts: this job's own GPU(s) (maxact.gpuslots)
        from maxact.corpus.tokenization import read_tokens
        from maxact.measurement.shards import Shard
        from maxact.stages.measure import measure_checkpoint

        item = snakemake.wildcards.get("scatteritem")
        shard = Shard.parse(item, option="shard") if item else None
        corpus_manifest = read_json(snakemake.input.manifest)
        tokens, token_meta = read_tokens(snakemake.input.tokens, expect_corpus_sha=corpus_manifest["sha256"])
        # Runtime settings come from the config's `runtime` block (set by a profile); they are not params,
        # so changing the device or batch size reruns nothing.
        settings = {**snakemake.config.get("runtime", {}), **dict(snakemake.params.measure), "gpus": snakemake.resources.gpu}
        result = measure_checkpoint(
            read_json(snakemake.input.prepared), tokens, token_meta, out_dir,
            settings=settings, meta=dict(snakemake.params.meta), corpus_sha256=corpus_manifest["sha256"], shard=shard,
            cache_dir=snakemake.config["cache_dir"],
        )
        if shard:
            sh = result["provenance"]["shard"]
            log.info("%s shard %s: batches %s, %d samples, %d tokens on %s", result["checkpoint"], shard.label,
                     sh["batches"], sh["samples"], sh["tokens"], sh["device_name"])
    log.info("%s: global max %s at %s", result["checkpoint"], result["global_max_activation"], result["global_max_location"])

"""Rule measure_shard: one shard (K of N) of a checkpoint's measurement, with its mergeable state."""
from pathlib import Path

from maxact.gpuslots import acquire
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    slots = acquire(int(snakemake.resources.gpu))  # before CUDA starts: this job's own GPU(s)

    from maxact.corpus.tokenization import read_tokens
    from maxact.io import read_json
    from maxact.measurement.shards import Shard
    from maxact.stages.measure import measure_checkpoint

    shard = Shard.parse(snakemake.wildcards.scatteritem, option="shard")
    corpus_manifest = read_json(snakemake.input.manifest)
    tokens, token_meta = read_tokens(snakemake.input.tokens, expect_corpus_sha=corpus_manifest["sha256"])
    settings = {**snakemake.config.get("runtime", {}), **dict(snakemake.params.measure), "gpus": snakemake.resources.gpu}
    result = measure_checkpoint(
        read_json(snakemake.input.prepared), tokens, token_meta, Path(snakemake.output.info).parent,
        settings=settings, meta=dict(snakemake.params.meta), corpus_sha256=corpus_manifest["sha256"], shard=shard,
    )
    sh = result["provenance"]["shard"]
    log.info("%s shard %s: batches %s, %d samples, %d tokens on %s (GPU slots %s)", result["checkpoint"], shard.label,
             sh["batches"], sh["samples"], sh["tokens"], sh["device_name"], ",".join(slots.ids) or "none")

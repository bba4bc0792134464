"""Rule measure: hook the text backbone and write activation_stats.json plus tidy tables."""
from pathlib import Path

from maxact.corpus.tokenization import read_tokens
from maxact.io import read_json
from maxact.rulelog import rule_logging
from maxact.stages.measure import measure_checkpoint

with rule_logging(snakemake) as log:
    corpus_manifest = read_json(snakemake.input.manifest)
    tokens, token_meta = read_tokens(snakemake.input.tokens, expect_corpus_sha=corpus_manifest["sha256"])
    # Runtime settings come from the config's `runtime` block (set by a profile); they are not params,
    # so changing the device or batch size reruns nothing.
    settings = {**snakemake.config.get("runtime", {}), **dict(snakemake.params.measure), "gpus": snakemake.resources.gpu}
    result = measure_checkpoint(
        read_json(snakemake.input.prepared), tokens, token_meta, Path(snakemake.output.stats).parent,
        settings=settings, meta=dict(snakemake.params.meta), corpus_sha256=corpus_manifest["sha256"],
    )
    log.info("%s: global max %s at %s", result["checkpoint"], result["global_max_activation"], result["global_max_location"])

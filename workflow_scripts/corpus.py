"""Rule corpus: materialise the configured corpus and its manifest."""
from maxact.corpus.materialize import materialize_corpus
from maxact.io import write_json
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    manifest = materialize_corpus(dict(snakemake.params.corpus), snakemake.output.corpus, snakemake.params.resources_dir)
    log.info("corpus: %s samples, sha256 %s", manifest.get("n_samples"), manifest.get("sha256"))
    write_json(snakemake.output.manifest, manifest)

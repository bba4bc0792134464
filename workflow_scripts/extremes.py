"""Rule extremes: an extreme-value estimate of what a larger corpus would find, from one checkpoint's per-sample
maxima (see maxact.stages.extremes)."""
from maxact.corpus.tokenization import read_tokens
from maxact.io import write_json
from maxact.rulelog import rule_logging
from maxact.stages.extremes import extremes_checkpoint

with rule_logging(snakemake) as log:
    tokens, _ = read_tokens(snakemake.input.tokens)
    cats = tokens.set_index(tokens["sample_id"].astype(str))["category"]
    doc = extremes_checkpoint(snakemake.input.per_sample, cats, dict(snakemake.params.extremes))
    write_json(snakemake.output.extremes, doc)
    if doc["status"] != "fitted":
        log.warning("%s: not fitted: %s", snakemake.wildcards.ckpt, doc["reason"])
    else:
        log.info("%s: %s", snakemake.wildcards.ckpt,
                 "; ".join(f"N={r['n_samples']}: {r['estimate']:.4g} [{r['lower']}, {r['upper']}]"
                           for r in doc["return_levels"]))

"""Rule top5: the checkpoint's top values in the paper's form, written from its measured result."""
from maxact.io import read_json, write_json
from maxact.rulelog import rule_logging
from maxact.study.topk import indicators, top5_stats

with rule_logging(snakemake) as log:
    top5 = top5_stats(read_json(snakemake.input.stats))
    write_json(snakemake.output.top5, top5)
    log.info("%s: %s", top5["model_name"], indicators(top5))

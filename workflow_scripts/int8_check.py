"""Rule int8_check: the paper's INT-8 sanity check at the checkpoint's peak layer."""
from maxact.corpus.tokenization import read_tokens
from maxact.gpuslots import acquire
from maxact.io import read_json, write_json
from maxact.rulelog import rule_logging
from maxact.stages.int8 import int8_checkpoint

with rule_logging(snakemake) as log:
    acquire(int(snakemake.resources.gpu))  # before CUDA starts: this job's own GPU(s) (maxact.gpuslots)
    p = dict(snakemake.params.int8)
    result = read_json(snakemake.input.stats)
    tokens, _ = read_tokens(snakemake.input.tokens)
    if p.get("enabled", True):
        out = int8_checkpoint(read_json(snakemake.input.prepared), tokens, result, settings=snakemake.config.get("runtime", {}),
                              n_calib=p["n_calib"], n_eval=p["n_eval"], max_tokens=p["max_tokens"], seed=p["seed"],
                              definition=p["definition"])
    else:
        out = {"checkpoint": result["checkpoint"], "skipped": "int8.enabled is false"}
    log.info("int8 %s", out.get("policies", out))
    write_json(snakemake.output.result, out)

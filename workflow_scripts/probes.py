"""Rule probes: measure the targeted probe sets and compare them with the corpus maximum."""
from maxact.gpuslots import acquire
from maxact.io import read_json, write_json
from maxact.rulelog import rule_logging
from maxact.stages.probes import probe_checkpoint

with rule_logging(snakemake) as log:
    acquire(int(snakemake.resources.gpu))  # before CUDA starts: this job's own GPU(s) (maxact.gpuslots)
    p = dict(snakemake.params.probes)
    if p["enabled"]:
        out = probe_checkpoint(read_json(snakemake.input.prepared), read_json(snakemake.input.stats),
                               settings=snakemake.config.get("runtime", {}), max_len=p["max_len"],
                               longest_len=p["longest_len"], seed=p["seed"])
    else:
        out = {"checkpoint": snakemake.wildcards.ckpt, "skipped": "probes.enabled is false"}
    log.info("%s", out.get("verdict", out))
    write_json(snakemake.output.result, out)

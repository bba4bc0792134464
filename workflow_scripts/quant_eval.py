"""Rule quant_eval: each quantized format's end-to-end error through its consumer's own code (see
maxact.stages.quant_eval)."""
from pathlib import Path

from maxact.corpus.tokenization import read_tokens
from maxact.gpuslots import acquire
from maxact.io import read_json, write_json
from maxact.rulelog import rule_logging
from maxact.stages.quant_eval import quant_eval_checkpoint

with rule_logging(snakemake) as log:
    acquire(int(snakemake.resources.gpu))  # before CUDA starts: this job's own GPU(s) (maxact.gpuslots)
    q = dict(snakemake.params.quant_eval)
    tokens, _ = read_tokens(snakemake.input.tokens)
    llama = {**dict(q.pop("llama_cpp", {}) or {}), "cache_dir": snakemake.params.cache_dir}
    strict = q.pop("enabled", "auto") is True
    doc = quant_eval_checkpoint(read_json(snakemake.input.prepared), Path(snakemake.input.calibration).parent,
                                read_json(snakemake.input.stats), list(tokens["sample_id"]), dict(snakemake.params.corpus),
                                snakemake.params.resources_dir, q,
                                settings={**snakemake.config.get("runtime", {}), "gpus": int(snakemake.resources.gpu)},
                                add_special_tokens=bool(snakemake.params.add_special_tokens), llama_cpp=llama, strict=strict)
    log.info("%s: %s", snakemake.wildcards.ckpt, doc["verdict_line"])
    lc = doc.get("llama_cpp") or {}
    if lc.get("status") != "measured":
        log.info("%s: llama.cpp part %s: %s", snakemake.wildcards.ckpt, lc.get("status"), lc.get("reason"))
    write_json(snakemake.output.result, doc)

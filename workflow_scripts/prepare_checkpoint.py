"""Rule prepare_checkpoint: resolve the checkpoint to a fast-loading local folder."""
from maxact.io import write_json
from maxact.models.checkpoints import prepare_checkpoint
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    manifest = prepare_checkpoint(dict(snakemake.params.entry), snakemake.params.cache_dir, snakemake.params.model_root)
    log.info("prepared %s at %s", manifest["name"], manifest["load_path"])
    write_json(snakemake.output.prepared, manifest)

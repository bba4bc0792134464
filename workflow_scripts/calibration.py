"""Rule calibration: one checkpoint's calibration files from its recorded linear-layer inputs."""
from pathlib import Path

from maxact.rulelog import rule_logging
from maxact.stages.calibration import run_calibration

with rule_logging(snakemake) as log:
    manifest = run_calibration(snakemake.input.linear_inputs, snakemake.input.stats, Path(snakemake.output.manifest).parent,
                               list(snakemake.params.exports), snakemake.params.fill_uncovered)
    log.info("%s: wrote %s; %d uncovered", manifest["provenance"]["checkpoint"], ", ".join(manifest["files"]),
             len(manifest["uncovered"]))

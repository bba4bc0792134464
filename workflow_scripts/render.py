"""Rule render: figures, tables and the HTML report."""
from maxact.rulelog import rule_logging
from maxact.stages.render import render_for_workflow

with rule_logging(snakemake) as log:
    render_for_workflow(inputs=dict(snakemake.input.items()), outputs=dict(snakemake.output.items()),
                        study=snakemake.params.study)

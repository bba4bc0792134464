rule probes:
    """Targeted probe inputs (BOS/short, delimiters, repeated token, random ids, longest), measured apart."""
    input:
        prepared=rules.prepare_checkpoint.output.prepared,
        stats=rules.measure.output.stats,
    output:
        result=f"{RESULTS}/probes/{{ckpt}}/probes.json",
    params:
        probes=canonical(config["probes"]),
    resources:
        gpu=ckpt_gpus,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/probes/{{ckpt}}.log",
    benchmark:
        f"{BENCH}/probes/{{ckpt}}.tsv"
    script:
        "../workflow_scripts/probes.py"

rule int8_check:
    """The paper's INT-8 sanity check at the peak layer (max_abs, clip_q0.999) plus per-channel/per-token."""
    input:
        prepared=rules.prepare_checkpoint.output.prepared,
        tokens=ckpt_tokens,
        stats=rules.measure.output.stats,
    output:
        result=f"{RESULTS}/int8/{{ckpt}}/int8_check.json",
    params:
        int8=canonical(config["int8"]),
        tokens_group=ckpt_group,
    resources:
        gpu=ckpt_gpus,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/int8/{{ckpt}}.log",
    benchmark:
        f"{BENCH}/int8/{{ckpt}}.tsv"
    script:
        "../workflow_scripts/int8_check.py"

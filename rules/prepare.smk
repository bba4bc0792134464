rule prepare_checkpoint:
    """Resolve a checkpoint to a fast-loading local form (GGUF is dequantized once to safetensors)."""
    output:
        prepared=f"{RESULTS}/checkpoints/{{ckpt}}/prepared.json",
    params:
        entry=ckpt_entry,
        cache_dir=config["cache_dir"],
        model_root=config["model_root"],
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/prepare/{{ckpt}}.log",
    benchmark:
        f"{BENCH}/prepare/{{ckpt}}.tsv"
    script:
        "../workflow_scripts/prepare_checkpoint.py"

rule quant_eval:
    """What each quantized format does to the checkpoint, end to end: maxact's calibration files applied by
    compressed-tensors and llm-compressor's SmoothQuant (and llama.cpp's quantizer, where built), scored against the
    unquantized model on held-out corpus samples (ΔNLL/token, logits and final-hidden rel L2, top-1, clip rate)."""
    input:
        prepared=rules.prepare_checkpoint.output.prepared,
        tokens=ckpt_tokens,
        stats=rules.measure.output.stats,
        calibration=rules.calibration.output.manifest,
        files=calibration_files(),
    output:
        result=f"{RESULTS}/quant_eval/{{ckpt}}/quant_eval.json",
    params:
        quant_eval=canonical(config["quant_eval"]),
        corpus=canonical(config["corpus"]),
        resources_dir=f"{workflow.basedir}/resources",
        add_special_tokens=config["tokenization"]["add_special_tokens"],
        cache_dir=config["cache_dir"],
        tokens_group=ckpt_group,
    resources:
        gpu=ckpt_gpus,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/quant_eval/{{ckpt}}.log",
    benchmark:
        f"{BENCH}/quant_eval/{{ckpt}}.tsv"
    script:
        "../workflow_scripts/quant_eval.py"

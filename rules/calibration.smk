rule calibration:
    """Calibration files (measure.exports: SmoothQuant act_scales, llama.cpp imatrix, compressed-tensors input scales,
    AWQ statistics) from one checkpoint's recorded linear-layer inputs, with the measurement's provenance."""
    input:
        linear_inputs=f"{RESULTS}/measure/{{ckpt}}/linear_inputs.safetensors",
        stats=rules.measure.output.stats,
    output:
        manifest=f"{RESULTS}/calibration/{{ckpt}}/calibration.json",
        files=calibration_files(),
    params:
        exports=EXPORTS,
        fill_uncovered=config["measure"]["fill_uncovered"],
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/calibration/{{ckpt}}.log",
    script:
        "../workflow_scripts/calibration.py"

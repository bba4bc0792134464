rule corpus:
    """Materialise the study corpus (one record per sample) and record its sha256."""
    output:
        corpus=f"{RESULTS}/corpus/corpus.jsonl.gz",
        manifest=f"{RESULTS}/corpus/manifest.json",
    params:
        corpus=canonical(config["corpus"]),
        resources_dir=f"{workflow.basedir}/resources",
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/corpus.log",
    script:
        "../workflow_scripts/corpus.py"

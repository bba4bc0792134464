rule tokenize:
    """Tokenize the corpus once per tokenizer group with that group's own tokenizer."""
    input:
        corpus=rules.corpus.output.corpus,
        manifest=rules.corpus.output.manifest,
        prepared=group_prepared,
    output:
        tokens=f"{RESULTS}/tokens/{{group}}/tokens.parquet",
    params:
        tokenization=canonical(config["tokenization"]),
        tokenizer_from=group_tokenizer_from,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/tokenize/{{group}}.log",
    script:
        "../workflow_scripts/tokenize_corpus.py"

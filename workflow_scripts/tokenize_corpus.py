"""Rule tokenize: tokenize the corpus with the tokenizer group's own tokenizer."""
from maxact.corpus.records import read_corpus
from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint, write_tokens
from maxact.io import read_json
from maxact.models.checkpoints import load_tokenizer
from maxact.provenance import environment, timestamp
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    prepared = read_json(snakemake.input.prepared)
    corpus_manifest = read_json(snakemake.input.manifest)
    tok = load_tokenizer(prepared)
    settings = dict(snakemake.params.tokenization)
    df = tokenize_records(read_corpus(snakemake.input.corpus), tok, settings["max_seq_len"], settings["add_special_tokens"])
    meta = {
        "group": snakemake.wildcards.group,
        "tokenizer_from": prepared["name"],
        "tokenizer_sha256": tokenizer_fingerprint(tok),
        "corpus_sha256": corpus_manifest["sha256"],
        "max_seq_len": settings["max_seq_len"],
        "add_special_tokens": settings["add_special_tokens"],
        "split_special_tokens": True,
        "n_samples": len(df),
        "n_tokens": int(df["n_tokens"].sum()),
        "n_truncated": int(df["truncated"].sum()),
        "environment": environment(),
        "timestamp": timestamp(),
    }
    log.info("tokenized %d samples, %d tokens (%d truncated)", len(df), meta["n_tokens"], meta["n_truncated"])
    write_tokens(df, snakemake.output.tokens, meta)

"""Rule tokenize: tokenize the corpus with the tokenizer group's own tokenizer."""
from maxact.corpus.records import read_corpus
from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint, truncation_message, truncation_summary, write_tokens
from maxact.io import read_json
from maxact.models.checkpoints import load_tokenizer
from maxact.provenance import environment, timestamp
from maxact.rulelog import rule_logging

with rule_logging(snakemake) as log:
    prepared = read_json(snakemake.input.prepared)
    corpus_manifest = read_json(snakemake.input.manifest)
    tok = load_tokenizer(prepared)
    settings = dict(snakemake.params.tokenization)
    df = tokenize_records(read_corpus(snakemake.input.corpus), tok, settings["max_seq_len"], settings["add_special_tokens"],
                          truncate=settings["truncate"])
    truncation = truncation_summary(df, settings["max_seq_len"])
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
        "truncate": settings["truncate"],
        "n_truncated": truncation["samples"],
        "truncation": truncation,
        "environment": environment(),
        "timestamp": timestamp(),
    }
    log.info("tokenized %d samples, %d tokens (%d truncated)", len(df), meta["n_tokens"], meta["n_truncated"])
    if msg := truncation_message(truncation, f"tokenizer group {snakemake.wildcards.group!r}"):
        log.warning(msg)
    write_tokens(df, snakemake.output.tokens, meta)

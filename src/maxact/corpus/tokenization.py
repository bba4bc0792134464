"""Per-family tokenization of the corpus.

Default policy is the paper's: no special tokens added (no BOS/EOS); ``add_special_tokens=True``
follows each tokenizer's own convention instead.  ``split_special_tokens=True`` keeps literal
``<bos>``-like strings in the text as text.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maxact.errors import InputError
from maxact.io import atomic_save


class TokenCacheError(InputError):
    pass


def tokenizer_fingerprint(tok) -> str:
    """Hash of everything that decides token ids: vocabulary/merges/normalizer and special tokens."""
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary stands in
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    # Special-token *names* (e.g. an instruct model's eos) are not hashed: with split_special_tokens they
    # do not change ids; the added-token table and post-processor are in the backend string above.
    h.update(str(getattr(tok, "add_bos_token", None)).encode())
    h.update(str(getattr(tok, "add_eos_token", None)).encode())
    return h.hexdigest()


def tokenize_records(records: list[dict], tok, max_seq_len: int, add_special_tokens: bool = False,
                     truncate: bool = True) -> pd.DataFrame:
    """One row per record: its token ids (at most ``max_seq_len``), and how many tokens it had before any cut.

    ``truncate=False`` refuses, naming them, samples longer than ``max_seq_len`` instead of cutting them;
    :func:`truncation_summary` counts what a cut dropped (reported by every caller, never silent)."""
    if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
        raise TokenCacheError(f"max_seq_len must be a positive integer (got {max_seq_len!r})")
    rows = []
    for r in records:
        full = tok(r["text"], add_special_tokens=add_special_tokens, split_special_tokens=True, truncation=False)["input_ids"]
        ids = full[:max_seq_len]
        rows.append(
            {
                "sample_id": r["id"],
                "category": r.get("category"),
                "n_chars": len(r["text"]),
                "n_tokens": len(ids),
                "n_tokens_untruncated": len(full),
                "truncated": len(full) > max_seq_len,
                "input_ids": ids,
            }
        )
    empty = [r["sample_id"] for r in rows if r["n_tokens"] == 0]
    if empty:
        raise TokenCacheError(f"samples tokenize to zero tokens: {empty[:5]} - drop them from the corpus")
    long = [(r["sample_id"], r["n_tokens_untruncated"]) for r in rows if r["truncated"]]
    if long and not truncate:
        shown = ", ".join(f"{sid!r} ({n:,} tokens)" for sid, n in long[:10]) + (f" and {len(long) - 10} more" if len(long) > 10 else "")
        raise TokenCacheError(
            f"{len(long)} sample(s) are longer than max_seq_len {max_seq_len:,} tokens and truncation is off: {shown}. "
            "Raise max_seq_len (tokenization.max_seq_len / --max-seq-len), drop or split these samples, or allow "
            "truncation (tokenization.truncate: true; on the CLI leave out --no-truncate), which cuts them and reports it."
        )
    return pd.DataFrame(rows)


def truncation_summary(df: pd.DataFrame, max_seq_len: int | None) -> dict:
    """What cutting samples to ``max_seq_len`` dropped: ``{"samples", "tokens_dropped", "max_seq_len", "sample_ids"}``
    (the first 20 ids of the cut samples, longest first)."""
    if "n_tokens_untruncated" not in df:
        return {"samples": 0, "tokens_dropped": 0, "max_seq_len": max_seq_len, "sample_ids": []}
    dropped = (df["n_tokens_untruncated"] - df["n_tokens"]).astype("int64")
    cut = df[dropped > 0].assign(_d=dropped[dropped > 0]).sort_values("_d", ascending=False, kind="stable")
    return {"samples": int(len(cut)), "tokens_dropped": int(dropped.sum()), "max_seq_len": max_seq_len,
            "sample_ids": [str(x) for x in cut["sample_id"].head(20)]}


def truncation_message(summary: dict, what: str) -> str | None:
    """A one-line warning for a non-empty :func:`truncation_summary`, else None."""
    if not summary.get("samples"):
        return None
    return (f"{what}: {summary['samples']} sample(s) longer than max_seq_len {summary['max_seq_len']:,} were cut to it, "
            f"{summary['tokens_dropped']:,} token(s) dropped (longest cut first: {', '.join(summary['sample_ids'][:5])}). "
            "Raise max_seq_len to keep them whole, or set truncation off to refuse them.")


def write_tokens(df: pd.DataFrame, path, meta: dict) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({b"maxact": json.dumps(meta).encode()})
    atomic_save(path, lambda tmp: pq.write_table(table, tmp))


def read_tokens(path, expect_corpus_sha: str | None = None, expect_tokenizer: str | None = None) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"maxact", b"{}"))
    if expect_corpus_sha and meta.get("corpus_sha256") != expect_corpus_sha:
        raise TokenCacheError(
            f"tokenized cache {path} was made from corpus sha256 {meta.get('corpus_sha256')}, but the corpus is now "
            f"{expect_corpus_sha}. Delete the cache file (or run snakemake with --forcerun tokenize) to re-tokenize."
        )
    if expect_tokenizer and meta.get("tokenizer_sha256") != expect_tokenizer:
        raise TokenCacheError(
            f"tokenized cache {path} was made with tokenizer {meta.get('tokenizer_sha256', '?')[:12]}, but this "
            f"checkpoint's tokenizer is {expect_tokenizer[:12]}. Give this checkpoint its own tokenizer_group."
        )
    return table.to_pandas(), meta

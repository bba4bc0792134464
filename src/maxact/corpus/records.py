"""The study corpus records: validating, reading, writing and subsetting them.

This is the core the rest of ``maxact.corpus`` builds on (it imports nothing else from the package):
``maxact.corpus.build`` writes its output with it and ``maxact.corpus.materialize`` (the workflow's
``materialize_corpus``) reads, subsets and writes records with it.

Record format (one JSON object a line): ``id`` (unique), ``category``, ``language`` (ISO 639-1),
``text``, ``source`` ({package, version, path}), ``licence``, ``sha256`` (of the UTF-8 text); code records
also carry ``programming_language``.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import zlib
from collections.abc import Mapping
from pathlib import Path

from maxact import schema
from maxact.errors import InputError
from maxact.io import atomic_write_bytes, sha256_bytes, sha256_file

__all__ = ["CorpusError", "REQUIRED_KEYS", "DEFAULT_CATEGORIES", "validate_records", "read_corpus",
           "write_corpus", "sha256_file", "sha256_text", "largest_remainder", "proportional_subset",
           "DEFAULT_CORPUS_CONFIG"]

REQUIRED_KEYS = ("id", "category", "language", "text", "source", "licence", "sha256")
DEFAULT_CATEGORIES = ("code", "technical_docs", "multilingual", "math", "scientific", "dialogue_qa",
                      "literature", "encyclopedic")
#: Defaults of the `corpus` config keys read by maxact.corpus.materialize.materialize_corpus: the corpus
#: config schema's (corpus.schema.yaml), their one source.
DEFAULT_CORPUS_CONFIG = schema.defaults(schema=schema.CORPUS)


class CorpusError(InputError):
    """A corpus file or record set is invalid; the message names the file/record and the fix."""


def sha256_text(text: str) -> str:
    """sha256 hex digest of ``text`` encoded as UTF-8 (a record's ``sha256``). ``sha256_file`` is maxact.io's."""
    return sha256_bytes(text.encode("utf-8"))


# ------------------------------------------------------------------ validation
def validate_records(records, known_categories=None, *, where: str = "corpus", check_sha: bool = False) -> None:
    """Raise ``CorpusError`` for a missing key, unknown category, duplicate id, empty text or empty corpus."""
    records = list(records)
    if not records:
        raise CorpusError(f"{where}: the corpus is empty (0 records); point the corpus config at a file "
                          f"with at least one record or lower the filters")
    known = set(known_categories) if known_categories is not None else None
    seen: dict[str, int] = {}
    for i, r in enumerate(records, 1):
        label = f"{where}: record {i} (id={r.get('id')!r})" if isinstance(r, dict) else f"{where}: record {i}"
        if not isinstance(r, dict):
            raise CorpusError(f"{label} is a {type(r).__name__}, not a JSON object; write one object a line")
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise CorpusError(f"{label} lacks key(s) {missing}; every record needs {list(REQUIRED_KEYS)}")
        rid = r["id"]
        if not isinstance(rid, str) or not rid:
            raise CorpusError(f"{label} has an empty or non-string id; give each record a unique string id")
        if rid in seen:
            raise CorpusError(f"{label}: duplicate id {rid!r} (first at record {seen[rid]}); ids must be unique")
        seen[rid] = i
        if known is not None and r["category"] not in known:
            raise CorpusError(f"{label} has unknown category {r['category']!r}; use one of {sorted(known)} "
                              f"or add it to corpus.categories")
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise CorpusError(f"{label} has empty text; drop the record or fill in its text")
        if not isinstance(r["source"], dict):
            raise CorpusError(f"{label}: source must be an object {{package, version, path}}")
        if check_sha and r["sha256"] != sha256_text(r["text"]):
            raise CorpusError(f"{label}: sha256 {r['sha256']} does not match its text "
                              f"({sha256_text(r['text'])}); recompute it")


# ------------------------------------------------------------------ io
def read_corpus(path) -> list[dict]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` file (UTF-8, one JSON object a line; blank lines ignored)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus file {path} does not exist")
    opener = gzip.open if path.name.endswith(".gz") else open
    out = []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{path}: line {lineno} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                      f"re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}: line {lineno} is not valid JSON ({e.msg}); "
                                      f"write one JSON object a line") from None
                if not isinstance(rec, dict):
                    raise CorpusError(f"{path}: line {lineno} is a JSON {type(rec).__name__}, not an object")
                out.append(rec)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, CorpusError):
            raise
        raise CorpusError(f"{path}: cannot read ({e}); is it a valid {'gzip' if path.name.endswith('.gz') else 'text'} file?") from None
    return out


def _serialise(records) -> bytes:
    buf = io.StringIO()
    for r in records:
        buf.write(json.dumps(r, ensure_ascii=False, sort_keys=False, separators=(",", ":")))
        buf.write("\n")
    return buf.getvalue().encode("utf-8")


def write_corpus(records, path) -> None:
    """Write ``records`` (in the given order) atomically; gzip with mtime=0 when ``path`` ends in .gz."""
    path = Path(path)
    data = _serialise(records)
    if path.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(data)
        data = buf.getvalue()
    atomic_write_bytes(path, data)


# ------------------------------------------------------------------ subsetting
def largest_remainder(n: int, counts: Mapping, *, capped: bool = True, normalise_first: bool = False) -> dict:
    """Largest-remainder (Hamilton) allocation of ``n`` items over ``counts`` (key -> size or weight).

    Each key gets the integer part of its quota, then the items left over go one each to the keys with the
    largest fractional part of their quota; equal fractional parts go to the smaller key first. With
    ``capped`` (``counts`` are sizes) no key gets more than its count; pass ``capped=False`` for weights.
    Quotas are floats: ``n * c / total`` by default, ``(c / total) * n`` with ``normalise_first``. The two
    round differently, so where fractional parts are equal in exact arithmetic, rounding (not the key) can
    decide which key gets the extra item; each caller keeps the form it has always used so that its draws
    stay reproducible. Returns key -> items, in the order of ``counts``.
    """
    total = sum(counts.values())
    if normalise_first:
        quotas = {k: c / total * n for k, c in counts.items()}
    else:
        quotas = {k: n * c / total for k, c in counts.items()}
    alloc = {k: min(counts[k], int(q)) if capped else int(q) for k, q in quotas.items()}
    rest = n - sum(alloc.values())
    for k in sorted(counts, key=lambda k: (-(quotas[k] - int(quotas[k])), k)):
        if rest <= 0:
            break
        if not capped or alloc[k] < counts[k]:
            alloc[k] += 1
            rest -= 1
    return alloc


def proportional_subset(records, n: int, seed: int, repeat: int = 0) -> list[dict]:
    """A seeded subset of ``n`` records whose category proportions follow the corpus (largest remainder).

    ``repeat`` selects an independent draw (its own seed stream) for bootstrap-style repeats.
    Returned sorted by id.
    """
    records = list(records)
    if n >= len(records):
        return sorted(records, key=lambda r: r["id"])
    if n <= 0:
        return []
    by_cat: dict[str, list] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        by_cat.setdefault(r["category"], []).append(r)
    alloc = largest_remainder(n, {c: len(v) for c, v in by_cat.items()})
    out = []
    for c in sorted(by_cat):
        rng = random.Random(f"maxact-corpus-subset:{seed}:{repeat}:{c}")
        out.extend(rng.sample(by_cat[c], alloc[c]))
    return sorted(out, key=lambda r: r["id"])

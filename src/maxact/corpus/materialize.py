"""Materialising the study corpus: ``materialize_corpus(corpus_cfg, out_path, resources_dir)``.

The entry point used by the workflow. It takes records from the configured source (the shipped file,
a fresh build with ``maxact.corpus.build``, a stdlib slice, a Hugging Face dataset or local files),
subsets, validates and writes them with ``maxact.corpus.records``. The ``corpus`` config keys and their
defaults (``maxact.corpus.records.DEFAULT_CORPUS_CONFIG``) are documented in the corpus config schema.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import sysconfig
import time
from collections import Counter
from pathlib import Path

from maxact.corpus.build import DEFAULT_PROPORTIONS, build_corpus
from maxact.corpus.records import (
    DEFAULT_CORPUS_CONFIG,
    CorpusError,
    proportional_subset,
    read_corpus,
    sha256_file,
    sha256_text,
    validate_records,
    write_corpus,
)
from maxact.corpus.sources.text import chunk_text, clean_text, rng_for

__all__ = ["SOURCES", "materialize_corpus", "stdlib_corpus", "source_records", "heldout_records"]

SOURCES = ("default", "extended", "build", "stdlib", "hf", "files")


# ------------------------------------------------------------------ sources
def _load_manifest(resources_dir) -> tuple[Path, dict]:
    mpath = Path(resources_dir) / "corpus" / "MANIFEST.json"
    if not mpath.exists():
        raise CorpusError(f"{mpath} is missing; restore resources/corpus/ from git or set corpus.source: build")
    with open(mpath, encoding="utf-8") as f:
        return mpath, json.load(f)


def _from_default(cfg, resources_dir):
    path = Path(cfg.get("path") or Path(resources_dir) / "corpus" / "default.jsonl.gz")
    mpath, manifest = _load_manifest(resources_dir)
    actual = sha256_file(path) if path.exists() else None
    if actual is None:
        raise CorpusError(f"shipped corpus {path} is missing; restore it from git (git checkout -- {path}) "
                          f"or set corpus.source: build")
    if actual != manifest.get("sha256"):
        raise CorpusError(f"shipped corpus {path} has sha256 {actual} but {mpath} records {manifest.get('sha256')}; "
                          f"restore the file from git (git checkout -- {path}) or rebuild both with "
                          f"`python -m maxact.corpus.build --out {path}`")
    return read_corpus(path), actual, {"path": str(path), "manifest": str(mpath)}


EXTENDED_FILE = "extended.jsonl.gz"
EXTENDED_MANIFEST = "extended.MANIFEST.json"


def _from_extended(cfg, resources_dir):
    """The shipped 5,000 (verified) followed by the 15,000 of the extended edition (verified against its
    manifest, which also names the 5,000 it was drawn disjoint from)."""
    base, base_sha, base_info = _from_default({**cfg, "path": None}, resources_dir)
    d = Path(resources_dir) / "corpus"
    path, mpath = d / EXTENDED_FILE, d / EXTENDED_MANIFEST
    rebuild = (f"python -m maxact.corpus.build --edition extended --pins-from {mpath}")
    if not path.exists() or not mpath.exists():
        raise CorpusError(f"the extended corpus {path} or its manifest {mpath} is missing; restore both from git "
                          f"(git checkout -- {d}) or rebuild them with `{rebuild}`")
    with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    actual = sha256_file(path)
    if actual != manifest.get("sha256"):
        raise CorpusError(f"extended corpus {path} has sha256 {actual} but {mpath} records {manifest.get('sha256')}; "
                          f"restore both from git (git checkout -- {d}) or rebuild them with `{rebuild}`")
    if (manifest.get("base") or {}).get("sha256") != base_sha:
        raise CorpusError(f"{mpath} was drawn disjoint from a corpus with sha256 {(manifest.get('base') or {}).get('sha256')}, "
                          f"not the shipped one ({base_sha}); rebuild it with `{rebuild}`")
    ext = read_corpus(path)
    ids = {r["id"] for r in base}
    clash = sorted(r["id"] for r in ext if r["id"] in ids)[:5]
    if clash:
        raise CorpusError(f"{path} repeats ids of the shipped corpus ({clash}); rebuild it with `{rebuild}`")
    combined = hashlib.sha256(f"{base_sha}+{actual}".encode()).hexdigest()
    return base + ext, combined, {**base_info, "extended": str(path), "extended_manifest": str(mpath),
                                  "extended_sha256": actual, "base_sha256": base_sha,
                                  "n_base": len(base)}


def _from_build(cfg, resources_dir):
    cache = Path(cfg.get("build_cache") or ".cache/corpus_build")
    out = cache / "built" / "corpus.jsonl.gz"
    pins = None
    if cfg.get("build_pin_versions", True):
        try:
            pins = _load_manifest(resources_dir)[1]["settings"]["pins"]
        except (CorpusError, KeyError):
            pins = None
    m = build_corpus(cache, out, cfg.get("proportions") or DEFAULT_PROPORTIONS,
                     n_samples=int(cfg.get("build_n_samples") or 5000), seed=int(cfg.get("build_seed") or 0),
                     sources=cfg.get("build_sources"), pins=pins,
                     licenses_dir=cache / "built" / "LICENSES", manifest_path=cache / "built" / "MANIFEST.json")
    return read_corpus(out), m["sha256"], {"build_cache": str(cache), "built": str(out),
                                           "package_versions": m["settings"]["pins"]}


def stdlib_corpus(seed: int = 0, n_per_category: int = 12) -> list[dict]:
    """A small corpus from the running Python: stdlib source (code), docstrings (technical_docs) and the
    licence text (filed as encyclopedic). No downloads; about a second, cached per process."""
    return copy.deepcopy(_stdlib_corpus(int(seed), int(n_per_category)))


@functools.lru_cache(maxsize=4)
def _stdlib_corpus(seed: int, n_per_category: int) -> list[dict]:
    import ast
    import platform

    root = Path(sysconfig.get_paths()["stdlib"])
    ver = platform.python_version()
    files = sorted(p for p in root.glob("*.py"))
    rng = random.Random(f"stdlib:{seed}")
    files = sorted(rng.sample(files, min(len(files), 60)))
    recs = {"code": [], "technical_docs": [], "encyclopedic": []}

    def add(cat, text, path, **extra):
        for i, c in enumerate(chunk_text(text, rng_for(seed, "stdlib", path), 800, 6000)):
            if len(recs[cat]) >= n_per_category:
                return
            r = {"id": "", "category": cat, "language": "en", **extra, "text": c,
                 "source": {"package": "cpython-stdlib", "version": ver, "path": f"{path}#{i}"},
                 "licence": "PSF-2.0", "sha256": sha256_text(c)}
            recs[cat].append(r)

    for f in files:
        try:
            src = f.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        add("code", clean_text(src), "/" + f.name, programming_language="python")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        docs = [ast.get_docstring(n) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        docs = [d for d in docs if d and len(d) > 60]
        if docs:
            add("technical_docs", clean_text("\n\n".join(docs)), "/" + f.name + ":docstrings")
    lic = root / "LICENSE.txt"
    if lic.exists():
        add("encyclopedic", clean_text(lic.read_text("utf-8", "replace")), "/LICENSE.txt")
    out = []
    for cat in sorted(recs):
        for k, r in enumerate(recs[cat]):
            r["id"] = f"{cat}-{k:05d}"
            out.append(r)
    return out


def _normalise_row(row: dict, i: int, cfg: dict, text: str, origin: str, version: str = "", serial: int | None = None) -> dict:
    cat = row.get(cfg.get("category_field") or "category") or cfg.get("default_category") or "mixed"
    lang = row.get(cfg.get("language_field") or "language") or cfg.get("default_language") or "und"
    rid = row.get("id")
    rec = {"id": str(rid) if rid not in (None, "") else f"{cat}-{i if serial is None else serial:05d}", "category": str(cat), "language": str(lang)}
    if row.get("programming_language"):
        rec["programming_language"] = row["programming_language"]
    src = row.get("source") if isinstance(row.get("source"), dict) else None
    rec.update({"text": text,
                "source": src or {"package": origin, "version": version, "path": f"row/{i}"},
                "licence": row.get("licence") or row.get("license") or cfg.get("licence") or "unknown",
                "sha256": sha256_text(text)})
    return rec


def _rows_to_records(rows, cfg, origin, version="", tokenizer=None, start=0):
    text_field = cfg.get("text_field") or "text"
    token_field = cfg.get("token_field") or "input_ids"
    out = []
    for i, row in enumerate(rows):
        if text_field in row and row[text_field] is not None:
            text = row[text_field]
        elif token_field in row and row[token_field] is not None:
            if tokenizer is None:
                raise CorpusError(f"{origin}: row {i} has token ids in {token_field!r} but no text field "
                                  f"{text_field!r}; set corpus.hf_decode_tokenizer to the tokenizer that made them")
            ids = list(row[token_field])
            text = tokenizer.decode(ids, skip_special_tokens=True)
        else:
            raise CorpusError(f"{origin}: row {i} has neither {text_field!r} nor {token_field!r}; "
                              f"set corpus.text_field to the text column (columns: {sorted(row)})")
        if not isinstance(text, str):
            raise CorpusError(f"{origin}: row {i} field {text_field!r} is not a string")
        out.append(_normalise_row(row, i, cfg, text, origin, version, serial=start + i))
    return out


def _load_tokenizer(name):
    if not name:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _from_hf(cfg, resources_dir):
    import datasets

    ds_id = cfg.get("hf_dataset")
    if not ds_id:
        raise CorpusError("corpus.source is 'hf' but corpus.hf_dataset is not set; give a hub id or local path")
    split = cfg.get("hf_split") or "train"
    p = Path(ds_id)
    source_sha = None
    if p.exists():
        if p.is_file():
            kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}.get(
                p.suffix, "parquet")
            ds = datasets.load_dataset(kind, data_files={split: str(p)}, split=split)
            source_sha = sha256_file(p)
        elif (p / "dataset_info.json").exists() or (p / "state.json").exists():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(p), split=split)
    else:
        ds = datasets.load_dataset(ds_id, revision=cfg.get("hf_revision"), split=split)
    tok = None
    text_field = cfg.get("text_field") or "text"
    if text_field not in ds.column_names:
        tok = _load_tokenizer(cfg.get("hf_decode_tokenizer"))
    recs = _rows_to_records(ds, cfg, str(ds_id), cfg.get("hf_revision") or "", tok)
    return recs, source_sha, {"hf_dataset": str(ds_id), "hf_revision": cfg.get("hf_revision"), "hf_split": split,
                              "decoded_with": cfg.get("hf_decode_tokenizer") if tok else None}


def _from_files(cfg, resources_dir):
    files = cfg.get("files") or []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise CorpusError("corpus.source is 'files' but corpus.files is empty; list .jsonl/.jsonl.gz/.parquet/.txt files")
    recs = []
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        if not f.exists():
            raise CorpusError(f"corpus file {f} (from corpus.files) does not exist")
        h.update(sha256_file(f).encode())
        name = f.name
        if name.endswith((".jsonl", ".jsonl.gz")):
            rows = read_corpus(f)
            recs.extend(_rows_to_records(rows, {**cfg, "default_category": cfg.get("files_category") or "mixed",
                                                "default_language": cfg.get("files_language") or "und"},
                                         str(f), start=len(recs)))
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows = pq.read_table(f).to_pylist()
            tok = None
            if rows and (cfg.get("text_field") or "text") not in rows[0]:
                tok = _load_tokenizer(cfg.get("hf_decode_tokenizer"))
            recs.extend(_rows_to_records(rows, {**cfg, "default_category": cfg.get("files_category") or "mixed",
                                                "default_language": cfg.get("files_language") or "und"},
                                         str(f), tokenizer=tok, start=len(recs)))
        else:
            data = f.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{f}: not valid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
            cat = cfg.get("files_category") or "mixed"
            recs.append({"id": f"{cat}-{f.stem}", "category": cat, "language": cfg.get("files_language") or "und",
                         "text": text, "source": {"package": "local-file", "version": "", "path": str(f)},
                         "licence": cfg.get("licence") or "unknown", "sha256": sha256_text(text)})
    return recs, h.hexdigest(), {"files": [str(f) for f in files]}


def source_records(corpus_cfg: dict, resources_dir) -> tuple[list[dict], str | None, dict]:
    """(every record of the configured source before any subset, its sha256, where it came from)."""
    cfg = {**DEFAULT_CORPUS_CONFIG, **(corpus_cfg or {})}
    source = cfg.get("source") or "default"
    if source not in SOURCES:
        raise CorpusError(f"corpus.source {source!r} is unknown; use one of {list(SOURCES)}")
    if source == "default":
        return _from_default(cfg, resources_dir)
    if source == "extended":
        return _from_extended(cfg, resources_dir)
    if source == "build":
        return _from_build(cfg, resources_dir)
    if source == "stdlib":
        return stdlib_corpus(int(cfg.get("seed") or 0)), None, {}
    if source == "hf":
        return _from_hf(cfg, resources_dir)
    return _from_files(cfg, resources_dir)


def heldout_records(corpus_cfg: dict, resources_dir, exclude_ids, n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """``n`` records of the study's corpus source that are not in ``exclude_ids`` (the measured, i.e. calibration,
    samples), category-proportional and seeded (a draw independent of the study's own subset). Where the source
    is the shipped 5,000 and fewer than ``n`` are left, the rest come from the extended edition's 15,000 (drawn
    disjoint from the 5,000). Returns (records sorted by id, {source, pool, drawn_from_extended})."""
    cfg = {**DEFAULT_CORPUS_CONFIG, **(corpus_cfg or {})}
    recs, sha, _ = source_records(cfg, resources_dir)
    exclude = {str(i) for i in exclude_ids}
    pool = [r for r in recs if str(r["id"]) not in exclude]
    info = {"source": cfg.get("source") or "default", "source_sha256": sha, "pool": len(pool), "excluded": len(exclude),
            "measured_ids_in_source": len(recs) - len(pool), "drawn_from_extended": 0}
    out = proportional_subset(pool, min(n, len(pool)), int(seed), repeat=1)
    if len(out) < n and info["source"] == "default":
        ext, _, _ = _from_extended(cfg, resources_dir)
        base = {str(r["id"]) for r in recs}
        more = [r for r in ext if str(r["id"]) not in base and str(r["id"]) not in exclude]
        extra = proportional_subset(more, min(n - len(out), len(more)), int(seed), repeat=1)
        info["drawn_from_extended"] = len(extra)
        info["pool"] += len(more)
        out = sorted(out + extra, key=lambda r: r["id"])
    if len(out) < n:
        raise CorpusError(f"only {len(out)} corpus samples are held out from the {len(exclude)} measured ones (source "
                          f"{info['source']!r}); quant_eval.n_samples asks {n}: lower quant_eval.n_samples, or measure fewer "
                          "samples (corpus.max_samples)")
    return out, info


def materialize_corpus(corpus_cfg: dict, out_path, resources_dir) -> dict:
    """Produce the study corpus at ``out_path`` (.jsonl.gz) from ``corpus_cfg`` and return its manifest."""
    t0 = time.perf_counter()
    cfg = {**DEFAULT_CORPUS_CONFIG, **(corpus_cfg or {})}
    source = cfg.get("source") or "default"
    recs, source_sha, info = source_records(cfg, resources_dir)
    n_total = len(recs)
    max_samples = cfg.get("max_samples")
    if max_samples is not None and int(max_samples) < len(recs):
        recs = proportional_subset(recs, int(max_samples), int(cfg.get("seed") or 0))
    validate_records(recs, known_categories=cfg.get("categories"), where=f"corpus ({source})")
    recs = sorted(recs, key=lambda r: r["id"])  # stable order whatever the source
    write_corpus(recs, out_path)
    return {
        "source": source,
        "n_samples": len(recs),
        "n_available": n_total,
        "counts_by_category": dict(sorted(Counter(r["category"] for r in recs).items())),
        "counts_by_language": dict(sorted(Counter(r["language"] for r in recs).items())),
        "sha256": sha256_file(out_path),
        "source_sha256": source_sha,
        "settings": {k: cfg.get(k) for k in sorted(cfg) if k in (corpus_cfg or {}) or k in ("source", "seed", "max_samples")},
        "info": info,
        "seconds": round(time.perf_counter() - t0, 3),
    }

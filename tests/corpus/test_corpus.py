"""The study corpus: the shipped file, materialize_corpus sources, validation errors, subsetting."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from maxact.corpus.materialize import materialize_corpus
from maxact.corpus.records import (
    DEFAULT_CORPUS_CONFIG,
    REQUIRED_KEYS,
    CorpusError,
    proportional_subset,
    read_corpus,
    sha256_file,
    validate_records,
    write_corpus,
)

ROOT = Path(__file__).resolve().parents[2]
RES = ROOT / "resources"
CORPUS = RES / "corpus" / "default.jsonl.gz"
MANIFEST = RES / "corpus" / "MANIFEST.json"
SCHEMA = ROOT / "src" / "maxact" / "schema" / "corpus.schema.yaml"
CATEGORIES = {"code", "technical_docs", "multilingual", "math", "scientific", "dialogue_qa", "literature",
              "encyclopedic"}


@pytest.fixture(scope="module")
def shipped():
    return read_corpus(CORPUS)


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text("utf-8"))


def _rec(i, cat="code", text=None, **kw):
    text = text if text is not None else f"sample {i} " * 20
    r = {"id": f"{cat}-{i:05d}", "category": cat, "language": "en", "text": text,
         "source": {"package": "p", "version": "1", "path": f"/f{i}"}, "licence": "MIT",
         "sha256": hashlib.sha256(text.encode()).hexdigest()}
    r.update(kw)
    return r


# ------------------------------------------------------------------ shipped corpus
def test_shipped_file_hash_and_size(manifest):
    assert CORPUS.stat().st_size <= 15 * 1024 * 1024
    assert sha256_file(CORPUS) == manifest["sha256"]
    with open(CORPUS, "rb") as f:
        head = f.read(10)
    assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0", "gzip mtime must be 0"


def test_shipped_counts_match_manifest(shipped, manifest):
    assert len(shipped) == manifest["n_samples"] == 5000
    assert dict(Counter(r["category"] for r in shipped)) == manifest["counts_by_category"]
    assert dict(Counter(r["language"] for r in shipped)) == manifest["counts_by_language"]
    assert set(manifest["counts_by_category"]) == CATEGORIES
    langs = set(manifest["counts_by_language"])
    assert len(langs) >= 10 and {"zh", "ja", "ru", "en"} <= langs
    # proportions follow the builder defaults
    props = manifest["settings"]["proportions"]
    for c, n in manifest["counts_by_category"].items():
        assert n == round(5000 * props[c])


def test_shipped_records_well_formed(shipped):
    validate_records(shipped, known_categories=CATEGORIES, check_sha=True)
    assert len({r["id"] for r in shipped}) == len(shipped)
    assert len({r["sha256"] for r in shipped}) == len(shipped)
    norm = {" ".join(r["text"].lower().split()) for r in shipped}
    assert len(norm) == len(shipped), "duplicate texts after whitespace/case normalisation"
    for r in shipped:
        assert set(REQUIRED_KEYS) <= set(r)
        assert r["source"]["package"] and r["source"]["version"] and r["source"]["path"]
        assert r["licence"]
        assert r["id"].startswith(r["category"] + "-")
        if r["category"] == "code":
            assert r.get("programming_language")
        assert "\x1b" not in r["text"] and "\x08" not in r["text"] and "\x00" not in r["text"]
    assert len({r["programming_language"] for r in shipped if r["category"] == "code"}) >= 3
    # scripts: CJK and Cyrillic present in their language's records
    zh = "".join(r["text"] for r in shipped if r["language"] == "zh")
    ru = "".join(r["text"] for r in shipped if r["language"] == "ru")
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in zh) > 10000
    assert sum("\u0400" <= ch <= "\u04ff" for ch in ru) > 10000


def test_shipped_length_spread(shipped, manifest):
    lengths = sorted(len(r["text"]) for r in shipped)
    assert 800 <= lengths[0] < 1000
    assert 12000 < lengths[-1] <= 14000
    assert lengths[len(lengths) // 2] > 2000
    assert manifest["length_chars"]["min"] == lengths[0] and manifest["length_chars"]["max"] == lengths[-1]
    # several long documents in literature
    assert sum(len(r["text"]) > 10000 for r in shipped if r["category"] == "literature") >= 20


def test_shipped_licences(shipped, manifest):
    lic = RES / "corpus" / "LICENSES"
    assert (lic / "README.md").exists()
    pkgs = {r["source"]["package"] for r in shipped}
    assert pkgs == set(manifest["source_packages"])
    for p in pkgs:
        assert (lic / f"{p}.txt").exists(), f"licence text of {p} missing"
        assert manifest["source_packages"][p]["version"]
        assert p in (lic / "README.md").read_text("utf-8")
    for r in shipped:
        assert r["source"]["version"] == manifest["source_packages"][r["source"]["package"]]["version"]


# ------------------------------------------------------------------ materialize_corpus
def test_materialize_default_subset(tmp_path, manifest):
    out = tmp_path / "corpus.jsonl.gz"
    t0 = time.perf_counter()
    m = materialize_corpus({"source": "default", "max_samples": 40, "seed": 0}, out, RES)
    assert time.perf_counter() - t0 < 20
    assert m["source"] == "default" and m["n_samples"] == 40
    assert m["source_sha256"] == manifest["sha256"]
    assert m["sha256"] == sha256_file(out)
    recs = read_corpus(out)
    assert len(recs) == 40 and [r["id"] for r in recs] == sorted(r["id"] for r in recs)
    assert set(m["counts_by_category"]) == CATEGORIES
    # same config -> same bytes
    out2 = tmp_path / "again.jsonl.gz"
    assert materialize_corpus({"source": "default", "max_samples": 40, "seed": 0}, out2, RES)["sha256"] == m["sha256"]


def test_materialize_default_full(tmp_path, manifest):
    m = materialize_corpus({"source": "default"}, tmp_path / "c.jsonl.gz", RES)
    assert m["n_samples"] == 5000
    assert m["counts_by_category"] == manifest["counts_by_category"]
    assert m["sha256"] == manifest["sha256"], "rewriting the shipped records must give identical bytes"


def test_materialize_default_hash_mismatch(tmp_path):
    res = tmp_path / "resources"
    (res / "corpus").mkdir(parents=True)
    shutil.copy(MANIFEST, res / "corpus" / "MANIFEST.json")
    write_corpus([_rec(1)], res / "corpus" / "default.jsonl.gz")
    with pytest.raises(CorpusError) as e:
        materialize_corpus({"source": "default"}, tmp_path / "out.jsonl.gz", res)
    msg = str(e.value)
    assert sha256_file(res / "corpus" / "default.jsonl.gz") in msg
    assert json.loads(MANIFEST.read_text())["sha256"] in msg
    assert "git checkout" in msg and "maxact.corpus.build" in msg


def test_materialize_stdlib(tmp_path):
    t0 = time.perf_counter()
    m = materialize_corpus({"source": "stdlib"}, tmp_path / "s.jsonl.gz", RES)
    assert time.perf_counter() - t0 < 20
    assert 24 <= m["n_samples"] <= 60
    assert len(m["counts_by_category"]) >= 3
    recs = read_corpus(tmp_path / "s.jsonl.gz")
    validate_records(recs, check_sha=True)
    m2 = materialize_corpus({"source": "stdlib", "max_samples": 12}, tmp_path / "s12.jsonl.gz", RES)
    assert m2["n_samples"] == 12 and len(m2["counts_by_category"]) >= 3
    assert materialize_corpus({"source": "stdlib", "max_samples": 12}, tmp_path / "again.jsonl.gz",
                              RES)["sha256"] == m2["sha256"]


def test_materialize_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "a.txt"
    txt.write_text("plain text sample " * 10, encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"row {i} " * 5, "category": "math"}) for i in range(3)) + "\n")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["parquet row one", "parquet row two"]}), pqf)
    m = materialize_corpus({"source": "files", "files": [str(txt), str(jl), str(pqf)], "files_category": "misc"},
                           tmp_path / "out.jsonl.gz", RES)
    assert m["n_samples"] == 6
    assert m["counts_by_category"] == {"math": 3, "misc": 3}
    assert m["source_sha256"]


# ------------------------------------------------------------------ hf on a local parquet fixture
def _tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "hello", "world", "maximum", "activation", "tokens", "decode", "me"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word-level pieces with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    return fast


def test_materialize_hf_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["first text sample", "second text sample", "third"],
                             "category": ["code", "math", "code"]}), f)
    m = materialize_corpus({"source": "hf", "hf_dataset": str(f), "hf_split": "train"}, tmp_path / "o.jsonl.gz", RES)
    assert m["n_samples"] == 3 and m["counts_by_category"] == {"code": 2, "math": 1}
    assert m["source_sha256"] == sha256_file(f)
    recs = read_corpus(tmp_path / "o.jsonl.gz")
    assert [r["text"] for r in recs] == ["first text sample", "third", "second text sample"]  # sorted by id
    validate_records(recs, check_sha=True)


def test_materialize_hf_token_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok_dir = tmp_path / "tok"
    tok = _tiny_tokenizer(tok_dir)
    sents = ["hello world", "maximum activation tokens", "decode me"]
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in sents]
    f = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"input_ids": ids}), f)
    cfg = {"source": "hf", "hf_dataset": str(f), "hf_decode_tokenizer": str(tok_dir), "default_category": "mixed"}
    m = materialize_corpus(cfg, tmp_path / "o.jsonl.gz", RES)
    assert m["n_samples"] == 3
    assert sorted(r["text"] for r in read_corpus(tmp_path / "o.jsonl.gz")) == sorted(sents)
    # without a tokenizer the error says what to set
    with pytest.raises(CorpusError, match="hf_decode_tokenizer"):
        materialize_corpus({"source": "hf", "hf_dataset": str(f)}, tmp_path / "x.jsonl.gz", RES)


# ------------------------------------------------------------------ bad input
def test_unknown_category_named(tmp_path):
    with pytest.raises(CorpusError, match=r"code-00002.*unknown category 'poetry'"):
        validate_records([_rec(1), _rec(2, cat="code", category="poetry")], known_categories=["code"])
    with pytest.raises(CorpusError, match="unknown category"):
        materialize_corpus({"source": "stdlib", "categories": ["code"]}, tmp_path / "o.jsonl.gz", RES)


def test_non_utf8_file_named(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(json.dumps(_rec(1)).encode() + b"\n" + b'{"id": "x", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError) as e:
        read_corpus(f)
    assert "bad.jsonl" in str(e.value) and "line 2" in str(e.value) and "UTF-8" in str(e.value)
    g = tmp_path / "bad.jsonl.gz"
    g.write_bytes(gzip.compress(f.read_bytes()))
    with pytest.raises(CorpusError, match=r"bad\.jsonl\.gz: line 2"):
        read_corpus(g)
    t = tmp_path / "bad.txt"
    t.write_bytes(b"caf\xe9")
    with pytest.raises(CorpusError, match="bad.txt"):
        materialize_corpus({"source": "files", "files": [str(t)]}, tmp_path / "o.jsonl.gz", RES)


def test_duplicate_id_named():
    with pytest.raises(CorpusError, match=r"duplicate id 'code-00001'.*first at record 1"):
        validate_records([_rec(1), _rec(2), _rec(1, text="other text")])


def test_empty_corpus_and_empty_text(tmp_path):
    with pytest.raises(CorpusError, match="empty"):
        validate_records([])
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    with pytest.raises(CorpusError, match="empty"):
        materialize_corpus({"source": "files", "files": [str(f)]}, tmp_path / "o.jsonl.gz", RES)
    with pytest.raises(CorpusError, match=r"code-00003.*empty text"):
        validate_records([_rec(3, text="  ")])


def test_missing_key_and_bad_json(tmp_path):
    r = _rec(1)
    del r["licence"]
    with pytest.raises(CorpusError, match=r"code-00001.*lacks key\(s\) \['licence'\]"):
        validate_records([r])
    f = tmp_path / "x.jsonl"
    f.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(CorpusError, match=r"x\.jsonl: line 2 is not valid JSON"):
        read_corpus(f)
    with pytest.raises(CorpusError, match="unknown"):
        materialize_corpus({"source": "nope"}, tmp_path / "o.jsonl.gz", RES)


# ------------------------------------------------------------------ io + subsetting
def test_write_corpus_reproducible_and_atomic(tmp_path):
    recs = [_rec(i) for i in range(5)]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "sub" / "b.jsonl.gz"
    write_corpus(recs, a)
    write_corpus(recs, b)
    assert a.read_bytes() == b.read_bytes()
    assert read_corpus(a) == recs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl.gz", "sub"]
    p = tmp_path / "plain.jsonl"
    write_corpus(recs, p)
    assert read_corpus(p) == recs and p.read_text().count("\n") == 5


def _pool():
    recs = []
    for cat, n in (("a", 500), ("b", 300), ("c", 150), ("d", 50)):
        recs += [_rec(i, cat=cat) for i in range(n)]
    return recs


def test_proportional_subset_proportions():
    recs = _pool()
    sub = proportional_subset(recs, 100, seed=0)
    assert len(sub) == 100
    assert Counter(r["category"] for r in sub) == {"a": 50, "b": 30, "c": 15, "d": 5}
    sub = proportional_subset(recs, 7, seed=0)  # largest remainder: 3.5, 2.1, 1.05, 0.35
    assert Counter(r["category"] for r in sub) == {"a": 4, "b": 2, "c": 1}
    assert [r["id"] for r in sub] == sorted(r["id"] for r in sub)
    assert len(proportional_subset(recs, 5000, seed=0)) == len(recs)


def test_proportional_subset_deterministic_and_repeats():
    recs = _pool()
    ids = lambda rs: [r["id"] for r in rs]  # noqa: E731
    a = proportional_subset(recs, 60, seed=3)
    assert ids(a) == ids(proportional_subset(list(reversed(recs)), 60, seed=3))
    r1 = proportional_subset(recs, 60, seed=3, repeat=1)
    r2 = proportional_subset(recs, 60, seed=3, repeat=2)
    assert ids(a) != ids(r1) != ids(r2)
    assert Counter(r["category"] for r in r1) == Counter(r["category"] for r in a)
    assert ids(proportional_subset(recs, 60, seed=4)) != ids(a)


# ------------------------------------------------------------------ schema fragment
def test_schema_fragment_documents_every_key():
    schema = yaml.safe_load(SCHEMA.read_text("utf-8"))
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    props = schema["properties"]
    for k, p in props.items():
        assert p.get("description"), k
        assert "default" in p, k
    assert set(props) == set(DEFAULT_CORPUS_CONFIG)
    for k, v in DEFAULT_CORPUS_CONFIG.items():
        assert props[k]["default"] == v, k
    import jsonschema

    jsonschema.validate({"source": "default", "max_samples": 40, "seed": 0}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"sauce": "default"}, schema)

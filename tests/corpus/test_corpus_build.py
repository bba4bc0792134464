"""The corpus builder (maxact.corpus.build): text helpers (fast) and a real small rebuild (slow)."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from maxact.corpus.build import DEFAULT_PROPORTIONS, allocate, available_sources, build_corpus, main
from maxact.corpus.materialize import materialize_corpus
from maxact.corpus.records import read_corpus, sha256_file, validate_records
from maxact.corpus.sources.text import (
    NearDupIndex,
    chunk_text,
    clean_text,
    draw_size,
    html_to_text,
    language_ok,
    render_man,
    rng_for,
    stable_seed,
    strip_rst,
)

ROOT = Path(__file__).resolve().parents[2]


def _paragraphs(n, seed=0):
    rng = rng_for(seed, "paras")
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    return "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(n))


def test_chunk_text_bounds_boundaries_determinism():
    text = _paragraphs(3000)
    a = chunk_text(text, rng_for(0, "x"))
    b = chunk_text(text, rng_for(0, "x"))
    c = chunk_text(text, rng_for(1, "x"))
    assert a == b and a != c
    assert all(800 <= len(ch) <= 14000 for ch in a)
    for ch in a:  # cut at paragraph boundaries: every chunk is a run of whole paragraphs
        i = text.index(ch)
        assert i == 0 or text[i - 2:i] == "\n\n"
        j = i + len(ch)
        assert j == len(text) or text[j:j + 2] == "\n\n"
    lengths = [len(ch) for ch in a]
    assert min(lengths) < 1500 and max(lengths) > 9000


def test_chunk_text_long_lines_and_tiny_docs():
    assert chunk_text("short text", rng_for(0)) == []
    long_line = "x" * 40000
    chunks = chunk_text(long_line, rng_for(0))
    assert all(len(c) <= 14000 for c in chunks) and sum(map(len, chunks)) >= 28000


def test_draw_size_log_uniform():
    rng = rng_for(0, "sizes")
    xs = [draw_size(rng) for _ in range(4000)]
    assert 800 <= min(xs) and max(xs) <= 14000
    assert abs(statistics.median(xs) - (800 * 14000) ** 0.5) < 400


def test_stable_seed_independent_of_hash_seed():
    code = "from maxact.corpus.sources.text import stable_seed; print(stable_seed('a', 1))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    outs = {subprocess.run([os.sys.executable, "-c", code], env={**env, "PYTHONHASHSEED": s},
                           capture_output=True, text=True, check=True).stdout.strip() for s in ("1", "2")}
    assert outs == {str(stable_seed("a", 1))}


def test_near_dup_index():
    idx = NearDupIndex()
    base = _paragraphs(20, seed=5)
    assert idx.add(base)
    assert not idx.add(base)  # exact
    assert not idx.add("  " + base.upper().replace("\n\n", "\n"))  # same after normalisation
    words = base.split(" ")
    words[len(words) // 2] = "CHANGED"
    assert not idx.add(" ".join(words))  # near-exact
    assert idx.add(_paragraphs(20, seed=6))  # different text


def test_clean_text_strips_codes():
    raw = "B\x08Bo\x08ol\x08ld\x08d and _\x08u_\x08n\r\n\x1b[1mansi\x1b[0m\x00\x07 ok\n\n\n\n\nend  \n"
    assert clean_text(raw) == "Bold and un\nansi ok\n\nend"
    assert clean_text("caf\u0065\u0301") == "caf\u00e9"  # NFC


def test_markup_helpers():
    t = html_to_text("<html><head><style>x{}</style></head><body><h1>Title</h1><p>Some <b>bold</b>\ntext"
                     "</p><script>var a;</script><pre>  code\n    indented</pre></body></html>")
    assert "Title" in t and "Some bold text" in t and "var a" not in t and "    indented" in t
    r = strip_rst(".. index:: foo\n   single: bar\n\nUse :func:`os.path.join` and ``x``.\n")
    assert r == "Use os.path.join and x."


def test_language_ok():
    assert language_ok("Dies ist ein Text in deutscher Sprache und so weiter " * 5, "de")
    assert not language_ok("This is the text that you should read when the tool is used " * 5, "de")
    assert language_ok("Это текст на русском языке " * 5, "ru")
    assert not language_ok("This is English only text " * 5, "ja")
    assert language_ok("anything", "en")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_render_man():
    page = b'.TH FOO 1\n.SH NAME\nfoo \\- do things\n.SH DESCRIPTION\n\\fBfoo\\fR does \\fIthings\\fR.\n'
    out = render_man(page)
    assert out and "foo - do things" in out.replace("\u2010", "-") and "\x08" not in out and "\x1b" not in out


def test_allocate_largest_remainder():
    a = allocate(5000, DEFAULT_PROPORTIONS)
    assert sum(a.values()) == 5000 and a["code"] == 900 and a["multilingual"] == 800
    assert allocate(7, {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}) == {"a": 4, "b": 2, "c": 1, "d": 0}
    assert sum(allocate(31, DEFAULT_PROPORTIONS).values()) == 31


def test_sources_registry_and_cli_list(capsys):
    src = available_sources()
    assert {s["category"] for s in src.values()} == set(DEFAULT_PROPORTIONS)
    assert main(["--list"]) == 0
    assert "shakespeare" in json.loads(capsys.readouterr().out)


def test_fetch_without_apt_get_says_so(tmp_path, monkeypatch):
    from maxact.corpus.sources import fetch

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(fetch.FetchError, match="apt-get is not available.*dict-devil"):
        fetch.Fetcher(tmp_path).deb("dict-devil")


# ------------------------------------------------------------------ slow: real packages
SLICE = ["devil", "jargon", "debian_faq_zh"]
SLICE_PKGS = ["dict-devil", "jargon-text", "debian-faq-zh-cn"]


def _apt_ready():
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not available: the builder fetches Debian packages with them")

    def has_candidate():
        p = subprocess.run(["apt-cache", "policy", SLICE_PKGS[0]], capture_output=True, text=True)
        cand = [l.split(":", 1)[1].strip() for l in p.stdout.splitlines() if l.strip().startswith("Candidate:")]
        return bool(cand) and cand[0] != "(none)"

    if not has_candidate():
        if os.geteuid() != 0:
            pytest.skip("apt package lists are empty and 'apt-get update' needs root")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        if not has_candidate():
            pytest.skip(f"apt cannot find {SLICE_PKGS[0]} (no Debian mirror reachable?)")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_small_slice_from_real_packages(tmp_path):
    _apt_ready()
    cache = tmp_path / "cache"
    out1 = tmp_path / "one" / "corpus.jsonl.gz"
    m1 = build_corpus(cache, out1, None, n_samples=30, seed=0, sources=SLICE)
    recs = read_corpus(out1)
    validate_records(recs, check_sha=True)
    assert m1["n_samples"] == len(recs) == 30
    counts = Counter(r["category"] for r in recs)
    assert set(counts) == {"literature", "encyclopedic", "dialogue_qa"} and min(counts.values()) >= 9
    assert m1["counts_by_language"].get("zh", 0) >= 5
    assert all(800 <= len(r["text"]) <= 14000 for r in recs)
    assert len({r["text"] for r in recs}) == 30
    assert set(m1["source_packages"]) == set(SLICE_PKGS)
    for p in SLICE_PKGS:
        assert (out1.parent / "LICENSES" / f"{p}.txt").exists()
        assert m1["source_packages"][p]["version"]
    assert json.loads((out1.parent / "MANIFEST.json").read_text())["sha256"] == sha256_file(out1)
    # same packages + settings -> same bytes (second run reuses the cache)
    out2 = tmp_path / "two" / "corpus.jsonl.gz"
    m2 = build_corpus(cache, out2, None, n_samples=30, seed=0, sources=SLICE)
    assert m2["sha256"] == m1["sha256"] == sha256_file(out2)
    # a different seed gives a different draw
    m3 = build_corpus(cache, tmp_path / "three" / "c.jsonl.gz", None, n_samples=30, seed=1, sources=SLICE)
    assert m3["sha256"] != m1["sha256"]
    # the workflow entry point, source: build, reaches the same corpus
    m4 = materialize_corpus({"source": "build", "build_cache": str(cache), "build_sources": SLICE,
                             "build_n_samples": 30}, tmp_path / "mat.jsonl.gz", ROOT / "resources")
    assert m4["n_samples"] == 30 and m4["source_sha256"] == m1["sha256"]
    assert m4["sha256"] == m1["sha256"]

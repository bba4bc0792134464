"""Encyclopedic: FOLDOC (Free On-line Dictionary of Computing) and the Jargon File."""
from __future__ import annotations

import gzip

from maxact.corpus.sources.base import Doc, read_maybe_gz, source
from maxact.corpus.sources.text import clean_text, decode_bytes

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(fx, pkg, name) -> str:
    """All entries of a dictd database (``.index`` + ``.dict.dz``) in index order, blank-line separated."""
    root = fx.deb(pkg)
    d = root / "usr/share/dictd"
    data = gzip.decompress((d / f"{name}.dict.dz").read_bytes())
    spans = set()
    for line in (d / f"{name}.index").read_text("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        spans.add((_b64(parts[1]), _b64(parts[2])))
    out = []
    for off, ln in sorted(spans):
        t = decode_bytes(data[off:off + ln], fallback="latin-1")
        if t and t.strip():
            out.append(clean_text(t))
    return "\n\n".join(out)


@source("foldoc", "encyclopedic", [("deb", "dict-foldoc")], "Free On-line Dictionary of Computing")
def foldoc(fx, seed):
    yield Doc("encyclopedic", "en", dictd_entries(fx, "dict-foldoc", "foldoc"), "dict-foldoc",
              "/usr/share/dictd/foldoc.dict.dz", "GFDL-1.1-or-later", "dict-foldoc")


@source("jargon", "encyclopedic", [("deb", "jargon-text")], "The Jargon File 4.4.7")
def jargon(fx, seed):
    root = fx.deb("jargon-text")
    f = root / "usr/share/doc/jargon-text/jargon.txt.gz"
    t = decode_bytes(read_maybe_gz(f), fallback="latin-1")
    yield Doc("encyclopedic", "en", clean_text(t), "jargon-text", "/usr/share/doc/jargon-text/jargon.txt.gz",
              "public-domain (Jargon File)", "jargon-text")


@source("gcide", "encyclopedic", [("deb", "dict-gcide")],
        "GNU Collaborative International Dictionary of English (Webster's 1913 and WordNet glosses)",
        editions=("extended",))
def gcide(fx, seed):
    yield Doc("encyclopedic", "en", dictd_entries(fx, "dict-gcide", "gcide"), "dict-gcide",
              "/usr/share/dictd/gcide.dict.dz", "GPL-3.0-or-later", "dict-gcide")

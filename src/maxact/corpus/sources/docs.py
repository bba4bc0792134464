"""Technical documentation: CPython reST docs, Linux man pages (English), Debian Reference (English)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from maxact.corpus.sources.base import Doc, pick, read_maybe_gz, rel, scaled, source
from maxact.corpus.sources.text import clean_text, decode_bytes, render_man, strip_rst

PYDOC = "usr/share/doc/python3.11/html/_sources"


@source("python_docs", "technical_docs", [("deb", "python3.11-doc")], "CPython 3.11 documentation reST sources (minus FAQ)")
def python_docs(fx, seed):
    root = fx.deb("python3.11-doc")
    base = root / PYDOC
    files = [p for p in base.rglob("*.rst.txt") if "faq" not in p.parts and "whatsnew" not in p.parts]
    for f in pick(files, scaled(300), seed, "python-docs"):
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("technical_docs", "en", strip_rst(t), "python3.11-doc", rel(f, root), "PSF-2.0", "python3.11-doc")


def man_pages(fx, seed, pkg, lang, licence, category, k=150, sections=None):
    root = fx.deb(pkg)
    files = [p for p in (root / "usr/share/man").rglob("*.gz") if p.is_file() and not p.is_symlink()]
    if sections:
        files = [p for p in files if p.parent.name in sections]
    k = scaled(k)
    files = pick(files, k * 2, seed, pkg)
    datas = []
    for f in files:
        d = read_maybe_gz(f)
        if d.lstrip().startswith(b".so ") or len(d) < 300:
            continue
        datas.append((f, d))
    datas = datas[:k]
    with ThreadPoolExecutor(max_workers=4) as ex:
        texts = list(ex.map(lambda fd: render_man(fd[1]), datas))
    for (f, _), t in zip(datas, texts):
        if t:
            yield Doc(category, lang, t, pkg, rel(f, root), licence, lang if category == "multilingual" else pkg)


@source("manpages_en", "technical_docs", [("deb", "manpages"), ("deb", "manpages-dev")], "Linux man-pages (English), rendered with groff")
def manpages_en(fx, seed):
    yield from man_pages(fx, seed, "manpages", "en", "GPL-2.0-or-later AND Linux-man-pages-copyleft", "technical_docs", k=120)
    yield from man_pages(fx, seed, "manpages-dev", "en", "GPL-2.0-or-later AND Linux-man-pages-copyleft", "technical_docs", k=120)


def debref(fx, pkg, lang, category):
    root = fx.deb(pkg)
    for f in sorted((root / "usr/share/debian-reference").glob("*.txt.gz")):
        t = decode_bytes(read_maybe_gz(f))
        if t:
            yield Doc(category, lang, clean_text(t), pkg, rel(f, root), "GPL-2.0-or-later",
                      lang if category == "multilingual" else pkg)


@source("debian_reference_en", "technical_docs", [("deb", "debian-reference-en")], "Debian Reference (English), text edition")
def debian_reference_en(fx, seed):
    yield from debref(fx, "debian-reference-en", "en", "technical_docs")

"""Dialogue / Q&A: Debian FAQ (several languages), CPython FAQ, fortune cookies (quotes, dialogues)."""
from __future__ import annotations

import re

from maxact.corpus.sources.base import Doc, read_maybe_gz, rel, source
from maxact.corpus.sources.docs import PYDOC
from maxact.corpus.sources.text import clean_text, decode_bytes, strip_rst

# sets left out: ASCII art and anything offensive-leaning
FORTUNE_EXCLUDE = {"ascii-art", "asciiart", "art", "banner", "ethnic", "men-women", "drugs", "sex", "off",
                   "racism", "religion", "politics", "zippy", "kids"}
LITERATURE_FORTUNES = {"literature", "songs-poems", "love", "people", "wisdom", "humorists", "paradoxum"}


def fortune_files(fx, pkg):
    """``[(path, text)]`` for the fortune files in ``pkg``; fortunes are separated by blank lines."""
    root = fx.deb(pkg)
    base = root / "usr/share/games/fortunes"
    if not base.exists():
        return []
    files = sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))
    out = []
    for f in files:
        if f.name in FORTUNE_EXCLUDE or "off" in f.relative_to(base).parts:
            continue
        u8 = f.with_name(f.name + ".u8")
        data = (u8 if u8.exists() else f).read_bytes()
        t = decode_bytes(data, fallback="koi8-r" if pkg == "fortunes-ru" else None)
        if t is None:
            continue
        items = [clean_text(x) for x in re.split(r"\n%\n|^%\n", t.replace("\r\n", "\n"), flags=re.M)]
        items = [x for x in items if x.strip() and x.strip() != "%"]
        if items:
            out.append((rel(f, root), "\n\n".join(items)))
    return out


@source("fortunes_en", "dialogue_qa", [("deb", "fortunes"), ("deb", "fortunes-min")], "fortune cookies (English): quotes and short dialogues")
def fortunes_en(fx, seed):
    for pkg in ("fortunes-min", "fortunes"):
        for path, text in fortune_files(fx, pkg):
            if path.rsplit("/", 1)[-1] in LITERATURE_FORTUNES:
                continue
            yield Doc("dialogue_qa", "en", text, pkg, path, "BSD-4-Clause-UC (fortune-mod; public-domain quotations)", pkg)


FAQ = {"en": "debian-faq", "de": "debian-faq-de", "fr": "debian-faq-fr", "it": "debian-faq-it", "zh": "debian-faq-zh-cn"}


def _make_faq(lang, pkg):
    def fn(fx, seed):
        root = fx.deb(pkg)
        for f in sorted((root / "usr/share/doc/debian/FAQ").glob("*.txt.gz")):
            t = decode_bytes(read_maybe_gz(f))
            if t:
                yield Doc("dialogue_qa", lang, clean_text(t), pkg, rel(f, root), "GPL-2.0-or-later", pkg)
    return fn


for _lang, _pkg in FAQ.items():
    source(f"debian_faq_{_lang}", "dialogue_qa", [("deb", _pkg)], f"The Debian FAQ ({_lang})")(_make_faq(_lang, _pkg))


@source("python_faq", "dialogue_qa", [("deb", "python3.11-doc")], "CPython FAQ (questions and answers)")
def python_faq(fx, seed):
    root = fx.deb("python3.11-doc")
    for f in sorted((root / PYDOC / "faq").glob("*.rst.txt")):
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("dialogue_qa", "en", strip_rst(t), "python3.11-doc", rel(f, root), "PSF-2.0", "python3.11-doc")

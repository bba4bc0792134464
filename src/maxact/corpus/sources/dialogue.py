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

# translations the shipped 5,000 did not draw on: the extended edition only
FAQ_EXTENDED = {"ja": "debian-faq-ja", "ko": "debian-faq-ko", "nl": "debian-faq-nl", "pt": "debian-faq-pt",
                "ru": "debian-faq-ru"}
for _lang, _pkg in FAQ_EXTENDED.items():
    source(f"debian_faq_{_lang}", "dialogue_qa", [("deb", _pkg)], f"The Debian FAQ ({_lang})",
           editions=("extended",))(_make_faq(_lang, _pkg))


@source("python_faq", "dialogue_qa", [("deb", "python3.11-doc")], "CPython FAQ (questions and answers)")
def python_faq(fx, seed):
    root = fx.deb("python3.11-doc")
    for f in sorted((root / PYDOC / "faq").glob("*.rst.txt")):
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("dialogue_qa", "en", strip_rst(t), "python3.11-doc", rel(f, root), "PSF-2.0", "python3.11-doc")


# ----------------------------------------------------------------- extended edition only
# Real multi-turn dialogue and question-and-answer documents, so that the 15,000 samples of the extended
# corpus are not mostly fortune cookies. Registered for the "extended" edition only: the shipped 5,000 keep
# their sources and a rebuild of them stays byte-identical.
EXT = ("extended",)

CHATTERBOT_LANG = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "hinglish": "hi-Latn", "indonesian": "id", "italian": "it", "japanese": "ja",
    "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru",
    "spanish": "es", "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}


def chatterbot_conversations(data: bytes) -> str | None:
    """A chatterbot-corpus YAML file as text: each conversation's turns alternate between two speakers (A, B),
    one turn a line, conversations separated by a blank line."""
    import yaml

    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    convs = (doc or {}).get("conversations") or []
    blocks = []
    for conv in convs:
        turns = [str(t).strip() for t in (conv if isinstance(conv, list) else [conv]) if str(t).strip()]
        if len(turns) >= 2:
            blocks.append("\n".join(f"{'AB'[i % 2]}: {t}" for i, t in enumerate(turns)))
    return clean_text("\n\n".join(blocks)) if blocks else None


@source("chatterbot", "dialogue_qa", [("wheel", "chatterbot-corpus")],
        "chatterbot-corpus: multi-turn conversations in 28 languages (BSD-3-Clause)", editions=EXT)
def chatterbot(fx, seed):
    import zipfile

    z = zipfile.ZipFile(fx.wheel("chatterbot-corpus"))
    for n in sorted(z.namelist()):
        parts = n.split("/")
        if len(parts) != 4 or parts[:2] != ["chatterbot_corpus", "data"] or not n.endswith(".yml"):
            continue
        lang = CHATTERBOT_LANG.get(parts[2])
        text = chatterbot_conversations(z.read(n)) if lang else None
        if text:
            yield Doc("dialogue_qa", lang, text, "chatterbot-corpus", "/" + n, "BSD-3-Clause", f"chatterbot-{lang}")


_POD_CODE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>>+|[A-Z]<([^<>]*)>")


def strip_pod(text: str) -> str:
    """Perl POD as text: headings keep their words, formatting codes their contents, commands go."""
    for _ in range(3):  # nested codes (C<L<...>>)
        text = _POD_CODE.sub(lambda m: m.group(1) or m.group(2) or "", text)
    out = []
    for line in text.split("\n"):
        m = re.match(r"^=(head\d|item)\s*(.*)$", line)
        if m:
            out.append(m.group(2))
        elif not line.startswith("="):
            out.append(line)
    return clean_text("\n".join(out))


@source("perlfaq", "dialogue_qa", [("deb", "perl-doc")], "The Perl FAQ (perlfaq1-9): questions and answers",
        editions=EXT)
def perlfaq(fx, seed):
    root = fx.deb("perl-doc")
    for f in sorted(root.glob("usr/share/perl/*/pod/perl*faq*.pod")):
        if f.name == "perlfaq.pod":  # the table of contents
            continue
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("dialogue_qa", "en", strip_pod(t), "perl-doc", rel(f, root), "Artistic-1.0-Perl OR GPL-1.0-or-later",
                      "perl-doc")


# (package, glob, language, licence): FAQ documents in Debian's documentation packages
HTML_FAQS = [
    ("zsh-doc", "usr/share/doc/zsh-common/html/FAQ0*.html", "en", "MIT-like (Zsh FAQ, Peter Stephenson)"),
    ("python-django-doc", "usr/share/doc/python-django-doc/html/faq/[!i]*.html", "en", "BSD-3-Clause"),
    ("git-doc", "usr/share/doc/git-doc/gitfaq.html", "en", "GPL-2.0-only"),
    ("fetchmail", "usr/share/doc/fetchmail/fetchmail-FAQ.html", "en", "GPL-2.0-or-later"),
    ("xterm", "usr/share/doc/xterm/xterm.faq.html", "en", "MIT"),
    ("apache2-doc", "usr/share/doc/apache2-doc/manual/en/ssl/ssl_faq.html", "en", "Apache-2.0"),
    ("apache2-doc", "usr/share/doc/apache2-doc/manual/fr/ssl/ssl_faq.html", "fr", "Apache-2.0"),
    ("ffmpeg-doc", "usr/share/doc/ffmpeg/manual/*faq.html", "en", "LGPL-2.1-or-later"),
    ("sqlite3-doc", "usr/share/doc/sqlite3/faq.html", "en", "public-domain"),
    ("libcurl4-doc", "usr/share/doc/libcurl4/FAQ.gz", "en", "curl"),
] + [("weechat-doc", f"usr/share/doc/weechat-doc/html/weechat_faq.{lang}.html", lang, "GPL-3.0-or-later")
     for lang in ("de", "en", "es", "fr", "it", "ja", "pl", "sr")]


@source("doc_faqs", "dialogue_qa", sorted({("deb", p) for p, *_ in HTML_FAQS}),
        "FAQs of Debian documentation packages (zsh, Django, git, fetchmail, xterm, Apache SSL, FFmpeg, SQLite, "
        "curl, WeeChat in 8 languages)",
        editions=EXT)
def doc_faqs(fx, seed):
    from maxact.corpus.sources.text import html_to_text

    for pkg, pattern, lang, licence in HTML_FAQS:
        root = fx.deb(pkg)
        for f in sorted(root.glob(pattern)):
            t = decode_bytes(read_maybe_gz(f))
            if t:
                text = html_to_text(t) if f.name.endswith(".html") else clean_text(t)
                yield Doc("dialogue_qa", lang, text, pkg, rel(f, root), licence, pkg)

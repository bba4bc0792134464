"""Targeted probe inputs, measured apart from the corpus and reported apart.

The referee's open question: do unusual inputs elicit larger peaks than natural text?  Probe sets:
BOS-only and very short inputs, delimiter-heavy text, one token repeated, uniformly random token ids
(high entropy) and the longest input the model accepts.
"""

from __future__ import annotations

import random

SHORT_TEXTS = ["Hi", "1", ".", "the", "\n", "def"]
DELIMITER_TEXTS = [".", "\n", ". ", "!?;:", "----", ",", "\n\n", "...", "|", "\t"]
NATURAL = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
           "the proposed increase was too small, while others noted that revenue had fallen. ")


def make_probes(tok, max_len: int, longest_len: int, seed: int = 0, n_random: int = 4) -> dict[str, list[list[int]]]:
    """Token-id sequences per probe set (no special tokens unless the set is about them)."""
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
    return sets


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

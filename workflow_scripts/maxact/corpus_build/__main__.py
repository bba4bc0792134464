"""``python -m maxact.corpus_build --out resources/corpus/default.jsonl.gz`` rebuilds the study corpus."""
from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULT_N_SAMPLES, DEFAULT_PROPORTIONS, available_sources, build_corpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maxact.corpus_build", description=__doc__)
    ap.add_argument("--out", default="resources/corpus/default.jsonl.gz", help="output .jsonl.gz")
    ap.add_argument("--cache", default=".cache/corpus_build", help="download/extract cache folder")
    ap.add_argument("--n-samples", type=int, default=DEFAULT_N_SAMPLES)
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
    m = build_corpus(a.cache, a.out, props, n_samples=a.n_samples, seed=a.seed, sources=a.sources, pins=pins)
    print(json.dumps({k: m[k] for k in ("n_samples", "counts_by_category", "counts_by_language", "sha256",
                                         "file_size")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

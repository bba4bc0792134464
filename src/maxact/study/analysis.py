"""Supplementary analyses from the per-sample extremes the engine records in its one pass.

The maximum over any subset of the corpus is the maximum of the subset's per-sample maxima, so the paper's
bootstrap experiment A (its subsets, drawn as it draws them) and saturation curves are exact without running the
model again.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from maxact.corpus.records import largest_remainder
from maxact.points import GLOBAL_KINDS, parse_component, recompute_global_max

#: The paper's make_bootstrap_datasets.py: base seed; repeat r of size n is drawn with seed + n * 100 + r.
PAPER_BOOTSTRAP_SEED = 20260502
#: The corpus size the paper's subset sizes refer to (1,000 and 2,000 of 5,000: 20% and 40%).
PAPER_CORPUS_SIZE = 5000


def is_global_point(name: str) -> bool:
    return parse_component(name)[0] in GLOBAL_KINDS


def per_sample_global_max(per_sample: pd.DataFrame) -> pd.Series:
    """Per sample: max |a| over the points that count for the global maximum."""
    return per_sample_kind_max(per_sample, GLOBAL_KINDS)


#: Component kinds of the saturation curves: the global max's points, then each component kind on its own.
SATURATION_KINDS = {
    "global": GLOBAL_KINDS,
    "residual": frozenset({"hidden"}),
    "attention": frozenset({"attn"}),
    "mlp": frozenset({"mlp"}),
    "gate": frozenset({"mlp_gate", "moe_gate"}),
    "final_norm": frozenset({"final_norm"}),
}


def per_sample_kind_max(per_sample: pd.DataFrame, kinds) -> pd.Series:
    """Per sample: max |a| over the points of the given component kinds (NaN where a sample has none finite,
    or the checkpoint has no such point)."""
    cols = [c for c in per_sample.columns if c != "sample_id" and parse_component(c.rsplit(":", 1)[0])[0] in kinds]
    if not cols:
        return pd.Series(np.full(len(per_sample), np.nan), index=per_sample["sample_id"], name="max_abs")
    vals = per_sample[cols].abs().replace(np.inf, np.nan)
    return pd.Series(vals.max(axis=1).to_numpy(), index=per_sample["sample_id"], name="max_abs")


def saturation_reach(sat: pd.DataFrame, m: np.ndarray) -> dict:
    """Where a saturation curve reached 95% and 99% of its final value (the smallest subset size whose median max
    does), the last subset size at which the median still rose, and the last corpus position (1-based, corpus order)
    at which the running maximum set a new record."""
    full = float(sat["full_max"].iloc[-1])
    out = {"final": full}
    for frac in (0.95, 0.99):
        hit = sat[sat["median_max"] >= frac * full]
        out[f"n_{int(round(frac * 100))}"] = int(hit["n_samples"].iloc[0]) if len(hit) else None
    med = sat["median_max"].to_numpy()
    rises = [int(sat["n_samples"].iloc[i]) for i in range(1, len(med)) if med[i] > med[i - 1]]
    out["last_rise_n"] = rises[-1] if rises else None
    finite = np.where(np.isfinite(m), m, -np.inf)
    running = np.maximum.accumulate(finite) if len(finite) else finite
    records = np.flatnonzero(np.diff(np.concatenate([[-np.inf], running])) > 0)
    out["last_record_position"] = int(records[-1]) + 1 if len(records) else None
    return out


def proportional_indices(categories: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A category-proportional subset of size n (largest-remainder allocation), without replacement."""
    cats, counts = np.unique(categories, return_counts=True)
    n = min(n, len(categories))
    # keyed by position in the sorted categories, so equal remainders go to the first category;
    # quotas (count / total) * n, as this function has always computed them (see largest_remainder)
    alloc = largest_remainder(n, {i: int(c) for i, c in enumerate(counts)}, normalise_first=True)
    out = [rng.choice(np.flatnonzero(categories == c), size=k, replace=False) for c, k in zip(cats, alloc.values()) if k]
    return np.concatenate(out) if out else np.array([], dtype=int)


def saturation(m: np.ndarray, categories: np.ndarray, n_points: int = 12, draws: int = 200, start: int = 50, seed: int = 0) -> pd.DataFrame:
    """Global max against number of samples (50 .. all) with bootstrap bands."""
    n_all = len(m)
    sizes = sorted({int(round(v)) for v in np.geomspace(min(start, n_all), n_all, n_points)})
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        vals = np.array([np.nanmax(m[proportional_indices(categories, n, rng)]) for _ in range(draws if n < n_all else 1)])
        rows.append({"n_samples": n, "median_max": float(np.median(vals)), "q05": float(np.quantile(vals, 0.05)),
                     "q95": float(np.quantile(vals, 0.95)), "full_max": float(np.nanmax(m))})
    return pd.DataFrame(rows)


def plateau_verdict(sat: pd.DataFrame, tolerance: float = 0.05) -> dict:
    """Plateaued when the median maximum over half the corpus is within ``tolerance`` of the full maximum."""
    full = sat["full_max"].iloc[-1]
    n_all = sat["n_samples"].iloc[-1]
    half = sat[sat["n_samples"] <= n_all / 2]
    if half.empty:
        return {"plateaued": None, "reason": "corpus too small for a saturation curve"}
    ratio = float(half["median_max"].iloc[-1] / full)
    return {"plateaued": bool(ratio >= 1 - tolerance), "half_corpus_ratio": ratio, "n_half": int(half["n_samples"].iloc[-1]),
            "n_all": int(n_all), "tolerance": tolerance}


def supplementary(per_sample: pd.DataFrame, corpus: pd.DataFrame, sizes: Sequence[int], repeats: int, name: str,
                  seed: int = PAPER_BOOTSTRAP_SEED) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One checkpoint's bootstrap (the paper's experiment A, :func:`paper_bootstrap`), saturation curve and plateau
    verdict, from its per-sample table and the corpus (sample_id and category, in corpus order)."""
    m_series = per_sample_global_max(per_sample)
    b, drawn = paper_bootstrap(m_series, corpus, sizes, repeats, seed)
    cats = corpus.set_index("sample_id")["category"].reindex(m_series.index).fillna("unknown").to_numpy()
    m = m_series.to_numpy()
    s = saturation(m, cats, start=min(50, max(2, len(m) // 10)))
    b.insert(0, "checkpoint", name)
    b.insert(1, "source", "measured")
    verdict = plateau_verdict(s)
    # per component kind: the same subsets (same seed) over each kind's per-sample maxima
    reach, curves = {}, [s.assign(kind="global")]
    for kind, kinds in SATURATION_KINDS.items():
        mk = m if kind == "global" else per_sample_kind_max(per_sample, kinds).to_numpy()
        if not np.isfinite(mk).any():
            continue
        sk = s if kind == "global" else saturation(mk, cats, start=min(50, max(2, len(mk) // 10)))
        if kind != "global":
            curves.append(sk.assign(kind=kind))
        reach[kind] = saturation_reach(sk, mk)
    s = pd.concat(curves, ignore_index=True)
    s.insert(0, "checkpoint", name)
    verdict["reach"] = reach
    verdict["bootstrap_sizes"] = {"requested": drawn["sizes"], "used": drawn["drawn"], "note": drawn["note"]}
    return b, s, verdict


# --------------------------------------------------------------------------- the paper's bootstrap experiment A



def paper_subset(categories: Sequence[str], n: int, seed: int) -> list[int]:
    """The paper's category-proportional subset of ``n`` of the corpus positions whose categories are given in corpus
    order: quotas n * count / total, floors, the remainder one each to the largest fractional parts (ties in the
    order the categories first appear), ``random.Random(seed).sample`` from each category in that order (with
    replacement only where a category is too small), positions sorted."""
    buckets: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        buckets.setdefault(c, []).append(i)
    total = sum(len(v) for v in buckets.values())
    raw = {c: n * len(idx) / total for c, idx in buckets.items()}
    counts = {c: int(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - counts[c], reverse=True)[: n - sum(counts.values())]:
        counts[c] += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for c, k in counts.items():
        pool = buckets[c]
        chosen += rng.sample(pool, k) if k <= len(pool) else [rng.choice(pool) for _ in range(k)]
    return sorted(chosen)


def paper_bootstrap_row(maxima: Sequence[float], full: float) -> dict:
    """One row of the paper's table from the repeats' maxima: mean, its "CV%" (which is (max - min) / mean, the
    spread of the repeats: it reproduces every published value, e.g. 6.9% for 122, 114, 114, 114, 114), the
    coefficient of variation proper (population std / mean), and the difference of the mean to the full corpus."""
    mean = float(np.mean(maxima))
    return {**{f"r{i}": float(v) for i, v in enumerate(maxima)}, "mean": mean,
            "cv_percent_paper": 100 * (max(maxima) - min(maxima)) / mean if mean else 0.0,
            "cv_percent_std": 100 * float(np.std(maxima)) / mean if mean else 0.0, "full_max": float(full),
            "diff_to_full_percent": 100 * (mean - full) / full if full else 0.0}


def paper_bootstrap(per_sample_max: pd.Series, corpus: pd.DataFrame, sizes: Sequence[int], repeats: int = 5,
                    seed: int = PAPER_BOOTSTRAP_SEED) -> tuple[pd.DataFrame, dict]:
    """The paper's bootstrap experiment A, exact from per-sample maxima (no model run): for each size, ``repeats``
    subsets drawn as the paper draws them (:func:`paper_subset`, over ``corpus``'s sample_id and category in corpus
    order), the global max of each. Sizes are the paper's against its 5,000 samples; a smaller corpus draws the same
    fractions of itself (said in the note). Returns the table and what was drawn."""
    ids = list(corpus["sample_id"])
    cats = corpus["category"].fillna("unknown").astype(str).tolist()
    m = per_sample_max.reindex(ids).to_numpy(dtype=float)
    full = float(np.nanmax(m)) if len(m) else float("nan")
    rows, scaled = [], []
    for n in sizes:
        used = n
        if n >= len(ids):  # not a subset of this corpus: the same fraction of it as of the paper's 5,000
            used = max(2, min(len(ids) - 1, round(n * len(ids) / PAPER_CORPUS_SIZE)))
            scaled.append(f"{n} -> {used}")
        maxima = [float(np.nanmax(m[paper_subset(cats, used, seed + n * 100 + r)])) for r in range(repeats)]
        rows.append({"size": n, "drawn": used, **paper_bootstrap_row(maxima, full)})
    note = (f"the corpus has {len(ids)} samples, not more than the size(s) asked: drawn as the same fraction of it as of "
            f"the paper's {PAPER_CORPUS_SIZE:,} ({'; '.join(scaled)})") if scaled else None
    return pd.DataFrame(rows), {"sizes": list(sizes), "drawn": [r["drawn"] for r in rows], "repeats": repeats, "seed": seed,
                                "note": note}


_EXP_A = re.compile(r"^(?P<model>.+)_s(?P<size>\d+)_r(?P<repeat>\d+)_activation_stats\.json(\.gz)?$")


def published_bootstrap(exp_a_files: Sequence[str | Path], full_max: Mapping[str, float]) -> pd.DataFrame:
    """The paper's own experiment A from its published files (``<model>_s<size>_r<repeat>_activation_stats.json``):
    the global max of each repeat recomputed from its per-layer statistics, in the same layout."""
    found: dict[tuple[str, int], dict[int, float]] = {}
    for p in exp_a_files:
        mt = _EXP_A.match(Path(p).name)
        if not mt:
            continue
        opener = gzip.open if str(p).endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as f:
            d = json.load(f)
        found.setdefault((mt["model"], int(mt["size"])), {})[int(mt["repeat"])] = abs(recompute_global_max(d["per_layer_stats"])[0])
    rows = []
    for (model, size), reps in sorted(found.items()):
        if model not in full_max:
            continue
        rows.append({"checkpoint": model, "source": "published", "size": size, "drawn": size,
                     **paper_bootstrap_row([reps[r] for r in sorted(reps)], full_max[model])})
    return pd.DataFrame(rows)

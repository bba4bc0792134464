"""Supplementary analyses from the per-sample extremes the engine records in its one pass.

The maximum over any subset of the corpus is the maximum of the subset's per-sample maxima, so
bootstrap stability and saturation curves are exact without running the model again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maxact.corpus.records import largest_remainder
from maxact.points import GLOBAL_KINDS, parse_component


def is_global_point(name: str) -> bool:
    return parse_component(name)[0] in GLOBAL_KINDS


def per_sample_global_max(per_sample: pd.DataFrame) -> pd.Series:
    """Per sample: max |a| over the points that count for the global maximum."""
    cols = [c for c in per_sample.columns if c != "sample_id" and is_global_point(c.rsplit(":", 1)[0])]
    vals = per_sample[cols].abs().replace(np.inf, np.nan)
    return pd.Series(vals.max(axis=1).to_numpy(), index=per_sample["sample_id"], name="max_abs")


def proportional_indices(categories: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A category-proportional subset of size n (largest-remainder allocation), without replacement."""
    cats, counts = np.unique(categories, return_counts=True)
    n = min(n, len(categories))
    # keyed by position in the sorted categories, so equal remainders go to the first category;
    # quotas (count / total) * n, as this function has always computed them (see largest_remainder)
    alloc = largest_remainder(n, {i: int(c) for i, c in enumerate(counts)}, normalise_first=True)
    out = [rng.choice(np.flatnonzero(categories == c), size=k, replace=False) for c, k in zip(cats, alloc.values()) if k]
    return np.concatenate(out) if out else np.array([], dtype=int)


def bootstrap(m: np.ndarray, categories: np.ndarray, sizes: list[int], seeds: int = 5) -> pd.DataFrame:
    full = float(np.nanmax(m))
    rows = []
    for n in sizes:
        if n > len(m):
            continue
        maxima = [float(np.nanmax(m[proportional_indices(categories, n, np.random.default_rng(s))])) for s in range(seeds)]
        mean = float(np.mean(maxima))
        rows.append({"subset_size": n, "seeds": seeds, "mean_max": mean, "cv_percent": 100 * float(np.std(maxima)) / mean if mean else 0.0,
                     "min_max": min(maxima), "max_max": max(maxima), "full_max": full, "diff_to_full_percent": 100 * (mean - full) / full})
    return pd.DataFrame(rows)


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


def supplementary(per_sample: pd.DataFrame, categories: pd.Series, sizes: list[int], seeds: int, name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    m_series = per_sample_global_max(per_sample)
    cats = categories.reindex(m_series.index).fillna("unknown").to_numpy()
    m = m_series.to_numpy()
    # Sizes beyond a small corpus are scaled to fractions of it, so the default study shows the analysis too;
    # the table and the verdict say so (requested_size, bootstrap_sizes).
    requested = sorted(sizes)
    scaled = max(sizes) >= len(m)
    if scaled:
        sizes = sorted({max(2, int(len(m) * f)) for f in (0.2, 0.4)})
    b = bootstrap(m, cats, sizes, seeds)
    s = saturation(m, cats, start=min(50, max(2, len(m) // 10)))
    b.insert(0, "checkpoint", name)
    b.insert(2, "requested_size", [requested[min(i, len(requested) - 1)] for i in range(len(b))] if scaled else b["subset_size"])
    s.insert(0, "checkpoint", name)
    verdict = plateau_verdict(s)
    verdict["bootstrap_sizes"] = {"requested": requested, "used": sorted(sizes),
                                  "note": (f"the corpus has {len(m)} samples, not more than the requested sizes: 20% and 40% "
                                           "of it were drawn instead") if scaled else None}
    return b, s, verdict

"""Stage ``extremes``: what a larger corpus would find, from one checkpoint's per-sample extremes table.

``extremes_of_table`` fits :func:`maxact.study.extremes.fit_extremes` to the per-sample maxima of the points that
count for the global max (or one component kind), optionally on a subset (the first N samples in corpus order, or
the samples of a given id list), and adds what the fit was given: the table's sha256, the checkpoint, the settings
and the library versions. ``validate_prediction`` fits a subset and compares its prediction for the whole with the
maximum measured on the whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maxact import provenance
from maxact.errors import InputError
from maxact.io import sha256_file
from maxact.study.analysis import SATURATION_KINDS, per_sample_kind_max
from maxact.study.extremes import DEFAULT_SIZES, METHODS, ExtremesError, fit_extremes

__all__ = ["read_per_sample", "extremes_of_table", "validate_prediction", "headroom"]


def read_per_sample(path) -> pd.DataFrame:
    """The per-sample extremes table (``sample_id``, ``<point>:max``, ``<point>:min``); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give the per_sample_extremes.parquet of a measured result folder")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); give the "
                         f"per_sample_extremes.parquet that `maxact measure` writes") from None
    if "sample_id" not in df.columns or not any(c.endswith((":max", ":min")) for c in df.columns):
        raise InputError(f"{path}: not a per-sample extremes table (needs sample_id and <point>:max/<point>:min "
                         f"columns; has {list(df.columns)[:6]})")
    return df


def _result_info(path: Path) -> dict:
    """Checkpoint name, model id and revision from the activation_stats.json beside the table, where there is one."""
    stats = path.parent / "activation_stats.json"
    if not stats.is_file():
        return {}
    try:
        with open(stats, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    prov = d.get("provenance") or {}
    return {"checkpoint": d.get("checkpoint") or d.get("model_name"), "model_id": prov.get("model_id"),
            "revision": prov.get("resolved_revision") or prov.get("revision"), "corpus_sha256": prov.get("corpus_sha256"),
            "global_max": d.get("global_max_activation")}


def _maxima(df: pd.DataFrame, kind: str) -> pd.Series:
    if kind not in SATURATION_KINDS:
        raise InputError(f"--kind {kind!r} is unknown; choose one of {', '.join(SATURATION_KINDS)}")
    return per_sample_kind_max(df, SATURATION_KINDS[kind])


def extremes_of_table(path, sizes: Sequence[int] = DEFAULT_SIZES, method: str = "gpd", *, kind: str = "global",
                      first: int | None = None, ids: Sequence[str] | None = None, tail_fraction: float = 0.1,
                      min_exceedances: int = 50, atom_share: float = 0.05) -> dict:
    """The ``maxact extremes`` document for one per-sample extremes table."""
    if method not in METHODS + ("auto",):
        raise InputError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS + ('auto',))}")
    path = Path(path)
    df = read_per_sample(path)
    m = _maxima(df, kind)
    subset = None
    if ids is not None:
        want = [str(i) for i in ids]
        have = set(m.index.astype(str))
        missing = [i for i in want if i not in have]
        if missing:
            raise InputError(f"{len(missing)} sample id(s) of the subset are not in {path} (e.g. {missing[:3]})")
        m = m[m.index.astype(str).isin(set(want))]
        subset = {"ids": len(want)}
    if first is not None:
        if first < 20 or first > len(m):
            raise InputError(f"--first must be from 20 to the table's {len(m)} samples (got {first})")
        m = m.iloc[:first]
        subset = {**(subset or {}), "first": int(first)}
    try:
        doc = fit_extremes(m.to_numpy(dtype=float), sizes, method, tail_fraction=tail_fraction,
                           min_exceedances=min_exceedances, atom_share=atom_share)
    except ExtremesError as e:
        raise InputError(f"{path}: {e}") from None
    info = _result_info(path)
    if doc["structural_peak"] is not None:
        at = m.index[m.to_numpy() == doc["structural_peak"]]
        doc["structural_samples_example"] = [str(x) for x in at[:5]]
    doc["kind"] = kind
    doc["provenance"] = {"per_sample_extremes": str(path), "per_sample_sha256": sha256_file(path), **info,
                         "subset": subset,
                         "settings": {"sizes": [int(s) for s in sizes], "method": method, "kind": kind,
                                      "tail_fraction": tail_fraction, "min_exceedances": min_exceedances,
                                      "atom_share": atom_share},
                         "library_versions": provenance.library_versions(), "created": provenance.timestamp()}
    return doc


def validate_prediction(path, fit_ids: Sequence[str] | None = None, *, first: int | None = None, method: str = "gpd",
                        kind: str = "global", **kw) -> dict:
    """Fit a subset (``fit_ids`` or the first ``first`` samples) and predict the median maximum over the whole table;
    the measured maximum of the whole is inside the 90% interval or not."""
    df = read_per_sample(path)
    m_all = _maxima(df, kind)
    n_all = int(np.isfinite(m_all.to_numpy(dtype=float)).sum())
    doc = extremes_of_table(path, [n_all], method, kind=kind, first=first, ids=fit_ids, **kw)
    rl = doc["return_levels"][0]
    measured = float(np.nanmax(m_all.to_numpy(dtype=float)))
    lo = rl["lower"] if rl["lower"] is not None else -math.inf
    hi = rl["upper"] if rl["upper"] is not None else math.inf
    return {"n_fit": doc["n_samples"], "n_predicted": n_all, "subset_max": doc["observed_max"],
            "predicted": rl["estimate"], "lower": rl["lower"], "upper": rl["upper"], "measured": measured,
            "inside": bool(lo <= measured <= hi), "shape": doc["shape"]["estimate"],
            "structural_share": doc["structural_share"]}


def headroom(doc: dict) -> list[dict]:
    """For each size N: how far above the measured max a static scale must sit to hold the median maximum of N
    samples of traffic (the estimate and the interval's upper end), as ratios to the measured max."""
    obs = doc.get("observed_max")
    out = []
    for r in doc.get("return_levels") or []:
        if not obs:
            continue
        out.append({"n_samples": r["n_samples"], "estimate_ratio": r["estimate"] / obs,
                    "upper_ratio": (r["upper"] / obs) if r.get("upper") is not None else None})
    return out


def quarter_validation(path, categories: pd.Series | None, n_quarters: int = 4, seed: int = 0, **kw) -> dict:
    """Fit each of ``n_quarters`` random, category-proportional quarters of the corpus and predict the median maximum
    over the whole: how often the measured maximum of the whole falls inside the 90% interval."""
    from maxact.study.analysis import proportional_indices

    df = read_per_sample(path)
    ids = df["sample_id"].astype(str).to_numpy()
    cats = (categories.reindex(ids).fillna("unknown").astype(str).to_numpy() if categories is not None
            else np.array(["all"] * len(ids)))
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_quarters):
        pick = proportional_indices(cats, max(1, len(ids) // 4), rng)
        try:
            rows.append({"quarter": q, **validate_prediction(path, fit_ids=list(ids[np.sort(pick)]), **kw)})
        except InputError as e:
            rows.append({"quarter": q, "error": str(e)})
    done = [r for r in rows if "inside" in r]
    return {"what": "each quarter (random, category-proportional) fitted alone predicts the median maximum over the "
                    "whole corpus; inside: the maximum measured on the whole lies in the 90% interval",
            "quarters": rows, "inside": sum(r["inside"] for r in done), "of": len(done), "seed": seed}


def extremes_checkpoint(per_sample_path, categories: pd.Series | None, cfg: dict) -> dict:
    """The extremes rule's document: the fit of the global max's points (the keys of ``maxact extremes``), the same
    per component kind, and the quarter validation; a corpus too small to fit gives ``status: not_fitted`` and why."""
    kw = {"tail_fraction": cfg["tail_fraction"], "min_exceedances": cfg["min_exceedances"],
          "atom_share": cfg["atom_share"]}
    try:
        doc = extremes_of_table(per_sample_path, cfg["sizes"], cfg["method"], **kw)
    except InputError as e:
        info = _result_info(Path(per_sample_path))
        return {"status": "not_fitted", "reason": str(e), "return_levels": [], "shape": None, "endpoint": None,
                "structural_share": None, "gof": None, "method": None,
                "provenance": {"per_sample_extremes": str(per_sample_path), **info, "settings": cfg,
                               "library_versions": provenance.library_versions(), "created": provenance.timestamp()}}
    doc["status"] = "fitted"
    # the estimate as a curve from the corpus size to the largest size asked (the report's figure)
    grid = sorted({int(round(v)) for v in np.geomspace(doc["n_samples"], max(max(cfg["sizes"]), doc["n_samples"] + 1), 9)})
    doc["curve"] = extremes_of_table(per_sample_path, grid, cfg["method"], **kw)["return_levels"]
    kinds = {}
    for kind in SATURATION_KINDS:
        if kind == "global":
            continue
        try:
            d = extremes_of_table(per_sample_path, cfg["sizes"], cfg["method"], kind=kind, **kw)
        except InputError as e:
            kinds[kind] = {"status": "not_fitted", "reason": str(e)}
            continue
        kinds[kind] = {k: d[k] for k in ("return_levels", "shape", "endpoint", "structural_share", "observed_max",
                                         "model")}
    doc["kinds"] = kinds
    doc["headroom"] = headroom(doc)
    doc["validation"] = quarter_validation(per_sample_path, categories, method=cfg["method"], **kw)
    return doc

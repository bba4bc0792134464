"""Stage ``extremes``: what a larger corpus would find, from one checkpoint's per-sample extremes table.

``extremes_of_table`` fits :func:`maxact.study.extremes.fit_extremes` to the per-sample maxima of the points that
count for the global max (or one component kind), optionally on a subset (the first N samples in corpus order, or
the samples of a given id list), and adds what the fit was given: the table's sha256, the checkpoint, the settings
and the library versions. ``validate_prediction`` fits a subset and compares its prediction for the whole with the
maximum measured on the whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maxact import provenance
from maxact.errors import InputError
from maxact.io import sha256_file
from maxact.study.analysis import SATURATION_KINDS, per_sample_kind_max, proportional_indices
from maxact.study.extremes import DEFAULT_SIZES, METHODS, ExtremesError, covers, fit_extremes

__all__ = ["Table", "load_table", "read_per_sample", "extremes_of_table", "validate_prediction", "headroom",
           "quarter_validation", "extremes_checkpoint"]


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


@dataclass(frozen=True)
class Table:
    """A per-sample extremes table read once, with its hash and the result it belongs to: every fit of one stage
    run reads it from here, not from the file again."""

    path: Path
    df: pd.DataFrame
    sha256: str
    info: dict


def load_table(path) -> Table:
    path = Path(path)
    return Table(path, read_per_sample(path), sha256_file(path), _result_info(path))


def _table(source) -> Table:
    return source if isinstance(source, Table) else load_table(source)


def _maxima(df: pd.DataFrame, kind: str) -> pd.Series:
    if kind not in SATURATION_KINDS:
        raise InputError(f"--kind {kind!r} is unknown; choose one of {', '.join(SATURATION_KINDS)}")
    return per_sample_kind_max(df, SATURATION_KINDS[kind])


def extremes_of_table(source, sizes: Sequence[int] = DEFAULT_SIZES, method: str = "gpd", *, kind: str = "global",
                      first: int | None = None, ids: Sequence[str] | None = None, tail_fraction: float = 0.1,
                      min_exceedances: int = 50, atom_share: float = 0.05) -> dict:
    """The ``maxact extremes`` document for one per-sample extremes table (a path, or a :class:`Table` already read)."""
    if method not in METHODS + ("auto",):
        raise InputError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS + ('auto',))}")
    table = _table(source)
    path = table.path
    m = _maxima(table.df, kind)
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
    if doc["structural_peak"] is not None:
        at = m.index[m.to_numpy() == doc["structural_peak"]]
        doc["structural_samples_example"] = [str(x) for x in at[:5]]
    doc["kind"] = kind
    doc["provenance"] = {"per_sample_extremes": str(path), "per_sample_sha256": table.sha256, **table.info,
                         "subset": subset,
                         "settings": {"sizes": [int(s) for s in sizes], "method": method, "kind": kind,
                                      "tail_fraction": tail_fraction, "min_exceedances": min_exceedances,
                                      "atom_share": atom_share},
                         "library_versions": provenance.library_versions(), "created": provenance.timestamp()}
    return doc


def validate_prediction(source, fit_ids: Sequence[str] | None = None, *, first: int | None = None, method: str = "gpd",
                        kind: str = "global", **kw) -> dict:
    """Fit a subset (``fit_ids`` or the first ``first`` samples) and predict the median maximum over the whole table;
    the measured maximum of the whole is inside the 90% interval or not."""
    table = _table(source)
    m_all = _maxima(table.df, kind).to_numpy(dtype=float)
    n_all = int(np.isfinite(m_all).sum())
    doc = extremes_of_table(table, [n_all], method, kind=kind, first=first, ids=fit_ids, **kw)
    rl = doc["return_levels"][0]
    measured = float(np.nanmax(m_all))
    return {"n_fit": doc["n_samples"], "n_predicted": n_all, "subset_max": doc["observed_max"],
            "predicted": rl["estimate"], "lower": rl["lower"], "upper": rl["upper"], "measured": measured,
            "inside": covers(rl, measured), "shape": doc["shape"]["estimate"],
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


def quarter_validation(source, categories: pd.Series | None, n_quarters: int = 4, seed: int = 0, **kw) -> dict:
    """Fit each of ``n_quarters`` random, category-proportional quarters of the corpus and predict the median maximum
    over the whole: how often the measured maximum of the whole falls inside the 90% interval."""
    table = _table(source)
    ids = table.df["sample_id"].astype(str).to_numpy()
    cats = (categories.reindex(ids).fillna("unknown").astype(str).to_numpy() if categories is not None
            else np.array(["all"] * len(ids)))
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_quarters):
        pick = proportional_indices(cats, max(1, len(ids) // 4), rng)
        try:
            rows.append({"quarter": q, **validate_prediction(table, fit_ids=list(ids[np.sort(pick)]), **kw)})
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
    sizes = [int(n) for n in cfg["sizes"]]
    try:
        table = load_table(per_sample_path)
        # one fit for the sizes asked and for the report's curve from the corpus size to the largest of them
        n = int(np.isfinite(_maxima(table.df, "global").to_numpy(dtype=float)).sum())
        grid = sorted({int(round(v)) for v in np.geomspace(max(n, 1), max(max(sizes), n + 1), 9)})
        doc = extremes_of_table(table, sorted(set(sizes) | set(grid)), cfg["method"], **kw)
    except InputError as e:
        info = _result_info(Path(per_sample_path))
        return {"status": "not_fitted", "reason": str(e), "return_levels": [], "shape": None, "endpoint": None,
                "structural_share": None, "gof": None, "method": None,
                "provenance": {"per_sample_extremes": str(per_sample_path), **info, "settings": cfg,
                               "library_versions": provenance.library_versions(), "created": provenance.timestamp()}}
    doc["status"] = "fitted"
    by_n = {r["n_samples"]: r for r in doc["return_levels"]}
    doc["return_levels"] = [by_n[n] for n in sizes]
    doc["curve"] = [by_n[n] for n in grid]
    doc["provenance"]["settings"]["sizes"] = sizes
    kinds = {}
    for kind in SATURATION_KINDS:
        if kind == "global":
            continue
        try:
            d = extremes_of_table(table, sizes, cfg["method"], kind=kind, **kw)
        except InputError as e:
            kinds[kind] = {"status": "not_fitted", "reason": str(e)}
            continue
        kinds[kind] = {k: d[k] for k in ("return_levels", "shape", "endpoint", "structural_share", "observed_max",
                                         "model")}
    doc["kinds"] = kinds
    doc["headroom"] = headroom(doc)
    doc["validation"] = quarter_validation(table, categories, method=cfg["method"], **kw)
    return doc

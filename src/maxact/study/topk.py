"""Top values in the paper's form: the ``<model>_top5_stats.json`` files the paper publishes, and the structural
indicators its ``scan_top5.py`` derives from them.

The paper's collector keeps, per point eligible for the massive-activation criterion (embedding output, residual
stream, attention and MLP outputs, final norm), the K = 100 largest |a| with their signs; its file holds them per
point (``topk_*``, and the first 5/10/100 as ``top5_*``, ``top10_*``, ``top100_*``), and a global list: the
union of every point's top 5, sorted by (|a|, signed value) from the largest, cut to K. maxact keeps the same top
values per point with their provenance (``top_activations``), so the file is written from a result without running
the model again. Two differences are said in the file (``note``): maxact's top values are finite (NaN and inf are
counted apart, never a top value), and with ``measure.topk`` below 5 a point gives fewer than 5 values to the global
list than the paper's would.

The indicators, as ``scan_top5.py`` computes them from such a file:

- ``saturated``: every value of the global list is the same (a repeated structural peak);
- ``concentration``: the top value over the mean of the global list;
- ``sign``: ``all-pos``, ``all-neg`` or ``mixed`` over the global list's signed values;
- ``decay5_over_1``: the fifth value over the first;
- ``hot_points``: the points whose own largest value is within 90% of the top (``n_hot_layers`` of the paper).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Mapping

from maxact.points import GLOBAL_KINDS, kind_of

K = 100  # the paper's top-K per point and the length of its global list
HOT = 0.9


def top5_stats(result: Mapping, k: int = K) -> dict:
    """A maxact result as the paper's ``_top5_stats.json`` (see the module docstring)."""
    per_point: dict[str, dict] = {}
    for point, rows in (result.get("top_activations") or {}).items():
        if kind_of(point) not in GLOBAL_KINDS or not rows:
            continue
        ordered = sorted(rows, key=lambda r: -abs(r["value"]))[:k]
        signed = [float(r["value"]) for r in ordered]
        absolute = [abs(v) for v in signed]
        entry = {"topk_abs": absolute, "topk_signed": signed, "top_k": len(absolute),
                 "topk_abs_mean": sum(absolute) / len(absolute), "topk_signed_mean": sum(signed) / len(signed)}
        for n in (5, 10, 100):
            entry[f"top{n}_abs"], entry[f"top{n}_signed"] = absolute[:n], signed[:n]
        entry["top5_abs_mean"] = sum(absolute[:5]) / min(5, len(absolute))
        entry["top5_signed_mean"] = sum(signed[:5]) / min(5, len(signed))
        per_point[point] = entry
    pairs = sorted(((a, s) for e in per_point.values() for a, s in zip(e["top5_abs"], e["top5_signed"])), reverse=True)[:k]
    glob_abs = [a for a, _ in pairs]
    return {
        "model_name": result.get("checkpoint") or result.get("model_name"),
        "model_id": (result.get("provenance") or {}).get("model_id"),
        "model_type": result.get("model_type"),
        "num_hidden_layers": result.get("num_hidden_layers"),
        "hidden_size": result.get("hidden_size"),
        "num_samples": result.get("num_samples"),
        "max_seq_len": result.get("max_seq_len"),
        "global_top5_abs": glob_abs,
        "global_top5_signed": [s for _, s in pairs],
        "global_top5_abs_mean": sum(glob_abs) / len(glob_abs) if glob_abs else 0.0,
        "per_layer_stats": per_point,
        "source": "maxact: written from the result's top values per point (top_activations), in the paper's form",
        "top_k_recorded": (recorded := min((len(v) for v in (result.get("top_activations") or {}).values()), default=0)),
        "note": " ".join(filter(None, [
            "maxact's top values are finite: NaN/inf are counted apart (result 'nonfinite')" if result.get("nonfinite") else None,
            f"measure.topk was {recorded}, below 5: the global list is not the paper's" if 0 < recorded < 5 else None])) or None,
    }


def indicators(top5: Mapping) -> dict | None:
    """``scan_top5.py``'s structural indicators of one top-5 file (None when it has no global list)."""
    abs5, signed5 = top5.get("global_top5_abs"), top5.get("global_top5_signed")
    if not abs5 or not signed5:
        return None
    top1 = abs5[0]
    mean = sum(abs5) / len(abs5)
    all_pos, all_neg = all(x > 0 for x in signed5), all(x < 0 for x in signed5)
    hot = sorted(((name, ls["top5_abs"][0]) for name, ls in (top5.get("per_layer_stats") or {}).items()
                  if ls.get("top5_abs") and ls["top5_abs"][0] >= HOT * top1), key=lambda t: -t[1])
    return {
        "model": top5.get("model_name"),
        "top1_abs": top1,
        "top_mean": mean,
        "n_top": len(abs5),
        "saturated": all(abs(a - top1) < 1e-9 for a in abs5),
        "sign": "all-pos" if all_pos else "all-neg" if all_neg else "mixed",
        "concentration": top1 / mean if mean > 0 else float("inf"),
        "decay5_over_1": abs5[4] / top1 if len(abs5) > 4 and top1 > 0 else None,
        "n_hot_points": len(hot),
        "hot_points": [name for name, _ in hot],
    }


def read_top5(path: str | Path) -> dict:
    """A top-5 file, plain or gzipped (the vendored published ones)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def top5_name(checkpoint: str) -> str:
    return f"{checkpoint}_top5_stats.json"

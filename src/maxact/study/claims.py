"""The paper's headline claims, recomputed from result records (never typed in).

``compute_claims(records)`` derives every number from the records' ``per_layer_stats``:
span of global maxima, where the global maximum sits (residual stream or not), matched MoE/dense
ratios, generation/size/instruct/VL/training-trajectory trends. ``compare_measured_published``
puts a measured checkpoint beside the paper's published file of the same checkpoint.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from maxact.errors import InputError
from maxact.points import RESIDUAL_KINDS, components_at_global_max, forward_order_key, parse_component
from maxact.study.resultset import claims_status, global_row

#: Roles left out of a generation/size trend when the same generation has a base/dense/MoE checkpoint.
_VARIANT_ROLES = ("instruct", "vlm", "intermediate")
#: "<run>-<N>T": a checkpoint after N trillion training tokens (e.g. Ling-mini-5T).
_TOKENS_RE = re.compile(r"^(?P<prefix>.+?)-(?P<tokens>\d+(?:\.\d+)?)T$")
_FAMILY_GEN_RE = re.compile(r"^(?P<lineage>[a-z][a-z_-]*?)-?(?P<gen>\d+(?:\.\d+)?)$")


def pairs_from_config(cfg: Mapping) -> list[dict]:
    """The matched MoE/dense pairs of a study config dict."""
    return [{"moe": x["moe"], "dense": x["dense"]} for x in cfg.get("matched_pairs") or []]


# --------------------------------------------------------------------------- helpers

def _rows(records: Iterable[Mapping]) -> list[dict]:
    out = []
    for r in records:
        row = global_row(r)
        row["published_name"] = (r.get("meta") or {}).get("published_name")
        row["_record"] = r
        out.append(row)
    return out


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per checkpoint: a measured result that is in the main analysis replaces the published one of the
    same checkpoint (matched by ``published_name`` or identical name); one that is not stays beside it.
    Returns (kept, superseded)."""
    measured = [r for r in rows if r["source"] == "measured" and r["main_analysis"]]
    covered = {r["name"] for r in measured} | {r["published_name"] for r in measured if r["published_name"]}
    kept, superseded, seen = [], [], set()
    for r in rows:
        if r["source"] == "published" and r["name"] in covered:
            superseded.append(r)
            continue
        key = (r["source"], r["name"])
        if key in seen:
            raise InputError(f"two {r['source']} result files for checkpoint {r['name']!r}: {r['path']} and another; "
                             "remove one, or give the checkpoints different names")
        seen.add(key)
        kept.append(r)
    return kept, superseded


def _measured_here(rows: list[dict], published_names: set[str]) -> list[dict]:
    """The checkpoints measured here: whether each is in the claims and why, and whether the paper has it."""
    out = []
    for r in rows:
        if r["source"] != "measured":
            continue
        raw = r["_record"]["raw"]
        prov = raw.get("provenance") or {}
        pname = r["published_name"] or (r["name"] if r["name"] in published_names else None)
        out.append({"name": r["name"], "in_claims": bool(r["main_analysis"]), "why": claims_status(r["_record"])[1],
                    "published_name": pname if pname in published_names else None,
                    "weights": prov.get("weights_note") or ("hub weights" if prov.get("source") == "hub" else prov.get("source")),
                    "model_id": prov.get("model_id"), "global_max": _num(r["global_max"]), "component": r["component"]})
    return sorted(out, key=lambda e: e["name"])


def _num(x):
    if x is None:
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _point(r: Mapping) -> dict:
    return {"name": r["name"], "source": r["source"], "params_b": _num(r["params_b"]),
            "global_max": _num(r["global_max"]), "global_max_abs": _num(r["global_max_abs"]),
            "component": r["component"], "layer": _num(r["layer"])}


def _gen_key(g) -> tuple:
    try:
        return (0, float(g), str(g))
    except (TypeError, ValueError):
        return (1, 0.0, str(g))


def lineage(family: str | None) -> tuple[str | None, str | None]:
    """``'qwen2.5'`` -> ``('qwen', '2.5')``; ``'gemma3'`` -> ``('gemma', '3')``; ``'qwen2.5-vl'`` -> itself, None."""
    if not family:
        return None, None
    m = _FAMILY_GEN_RE.match(str(family).lower())
    if not m:
        return str(family), None
    return m.group("lineage").rstrip("-_"), m.group("gen")


def _prefer_core(rows: list[dict]) -> list[dict]:
    """Base/dense/MoE checkpoints when there are any, else everything (e.g. a generation only published as -it)."""
    core = [r for r in rows if r.get("role") not in _VARIANT_ROLES]
    return core or rows


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined."""
    if len(x) < 2:
        return None
    rx = pd.Series(list(x), dtype=float).rank(method="average").to_numpy()
    ry = pd.Series(list(y), dtype=float).rank(method="average").to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ratio(a, b):
    return None if not b else float(a) / float(b)


# --------------------------------------------------------------------------- claims

def compute_claims(records: Sequence[Mapping], pairs: Sequence[Mapping] = (), main_only: bool = True) -> dict:
    """Every headline number of the paper, derived from ``records`` (JSON-serialisable).

    Measured results replace the published ones of the same checkpoint. ``main_only`` restricts the
    span/residual/family/size claims to main-analysis checkpoints; matched pairs, base-vs-instruct,
    text-vs-VL and the training trajectory use every checkpoint they name.
    """
    everything, superseded = _dedupe(_rows(records))
    # The claims are the paper's: over its published checkpoints, and the checkpoints measured here that the config
    # put in the main analysis (they replace their published result). Other measured checkpoints stand beside them.
    rows = [r for r in everything if r["source"] == "published" or r["main_analysis"]]
    main = [r for r in rows if r["main_analysis"]] if main_only else list(rows)
    by_name = _names(rows)

    claims: dict = {
        "n_checkpoints": len(rows),
        "n_main": sum(1 for r in rows if r["main_analysis"]),
        "main_only": bool(main_only),
        "sources": {s: sum(1 for r in rows if r["source"] == s) for s in sorted({r["source"] for r in rows})},
        "superseded_published": sorted(r["name"] for r in superseded),
        "not_main": sorted(r["name"] for r in rows if not r["main_analysis"]),
        "measured_here": _measured_here(everything, {r["name"] for r in everything if r["source"] == "published"}
                                        | {r["name"] for r in superseded}),
    }
    claims["span_orders_of_magnitude"] = _span(main)
    claims["residual_share"] = _residual_share(main)
    claims["matched_pairs"] = _matched_pairs(by_name, pairs)
    claims["family_trends"] = _family_trends(main)
    claims["base_vs_instruct"] = _base_vs_instruct(rows)
    claims["text_vs_vl"] = _text_vs_vl(rows)
    claims["size_trend"] = _size_trend(main)
    claims["training_trajectory"] = _training_trajectory(rows)
    return claims


def _span(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["global_max_abs"] and r["global_max_abs"] > 0]
    if not pos:
        return {"value": None, "n": 0, "max": None, "min": None}
    hi = max(pos, key=lambda r: (r["global_max_abs"], r["name"]))
    lo = min(pos, key=lambda r: (r["global_max_abs"], r["name"]))
    return {
        "value": math.log10(hi["global_max_abs"] / lo["global_max_abs"]),
        "n": len(pos),
        "ratio": hi["global_max_abs"] / lo["global_max_abs"],
        "max": _point(hi),
        "min": _point(lo),
    }


def _residual_share(rows: list[dict]) -> dict:
    exceptions = []
    n_res = 0
    for r in rows:
        if r["kind"] in RESIDUAL_KINDS:
            n_res += 1
            continue
        tied = [c for c in components_at_global_max(r["_record"]["raw"]["per_layer_stats"])
                if parse_component(c)[0] in RESIDUAL_KINDS]
        exceptions.append({"name": r["name"], "source": r["source"], "component": r["component"], "kind": r["kind"],
                           "layer": _num(r["layer"]), "global_max": _num(r["global_max"]),
                           "residual_ties": tied})
    n = len(rows)
    return {"n_residual": n_res, "n_total": n, "share": (n_res / n) if n else None,
            "exceptions": sorted(exceptions, key=lambda e: e["name"]),
            "note": "residual_ties lists residual-stream components whose extreme equals the global max exactly "
                    "(the location is the earliest in the forward pass)"}


def _matched_pairs(by_name: Mapping[str, dict], pairs: Sequence[Mapping]) -> list[dict]:
    out = []
    for p in pairs or []:
        moe, dense = by_name.get(p["moe"]), by_name.get(p["dense"])
        entry = {"moe": p["moe"], "dense": p["dense"]}
        if moe is None or dense is None:
            entry.update(missing=[n for n, r in ((p["moe"], moe), (p["dense"], dense)) if r is None],
                         moe_max=None, dense_max=None, ratio=None)
        else:
            entry.update(moe_max=moe["global_max_abs"], dense_max=dense["global_max_abs"],
                         moe_source=moe["source"], dense_source=dense["source"],
                         moe_location=moe["component"], dense_location=dense["component"],
                         ratio=_ratio(dense["global_max_abs"], moe["global_max_abs"]))
        out.append(entry)
    return out


def _family_trends(rows: list[dict]) -> dict:
    """Per lineage (family slug minus its generation: qwen2.5/qwen3/qwen3.5 -> qwen, gemma2/gemma3 -> gemma),
    one entry per generation in order, plus size-matched comparisons between consecutive generations."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        line, fam_gen = lineage(r["family"])
        if line is None:
            continue
        gen = r["generation"] if r["generation"] is not None else fam_gen
        if gen is None:
            continue
        groups.setdefault(line, {}).setdefault(str(gen), []).append(r)
    out = {}
    for line in sorted(groups):
        gens = groups[line]
        if len(gens) < 2:
            continue
        order = sorted(gens, key=_gen_key)
        stages = []
        for g in order:
            sel = _prefer_core(gens[g])
            vals = [r["global_max_abs"] for r in sel]
            stages.append({
                "generation": g,
                "families": sorted({r["family"] for r in sel}),
                "n": len(sel),
                "median_global_max": float(np.median(vals)),
                "max_global_max": float(max(vals)),
                "checkpoints": [_point(r) for r in sorted(sel, key=lambda r: (r["params_b"] or 0, r["name"]))],
            })
        medians = [s["median_global_max"] for s in stages]
        matched = []
        for a, b in zip(order, order[1:]):
            matched += _size_matched(_prefer_core(gens[a]), _prefer_core(gens[b]), a, b)
        out[line] = {
            "generations": [s["generation"] for s in stages],
            "stages": stages,
            "median_direction": _direction(medians),
            "size_matched": matched,
        }
    return out


def _size_matched(older: list[dict], newer: list[dict], ga: str, gb: str, max_size_ratio: float = 2.5) -> list[dict]:
    """Pair each newer checkpoint with the older one nearest in parameter count (log scale), same
    architecture class (MoE with MoE, others together), sizes within ``max_size_ratio``."""
    out = []
    for nb in sorted(newer, key=lambda r: (r["params_b"] or 0, r["name"])):
        if not nb["params_b"]:
            continue
        cands = [o for o in older if o["params_b"] and ((o.get("role") == "moe") == (nb.get("role") == "moe"))]
        if not cands:
            continue
        best = min(cands, key=lambda o: (abs(math.log(o["params_b"] / nb["params_b"])), o["name"]))
        size_ratio = max(best["params_b"], nb["params_b"]) / min(best["params_b"], nb["params_b"])
        if size_ratio > max_size_ratio:
            continue
        out.append({"older": best["name"], "older_generation": ga, "newer": nb["name"], "newer_generation": gb,
                    "older_params_b": best["params_b"], "newer_params_b": nb["params_b"],
                    "older_max": best["global_max_abs"], "newer_max": nb["global_max_abs"],
                    "ratio": _ratio(nb["global_max_abs"], best["global_max_abs"])})
    return out


def _direction(vals: Sequence[float]) -> str:
    if len(vals) < 2:
        return "n/a"
    d = np.diff(vals)
    if np.all(d > 0):
        return "increasing"
    if np.all(d < 0):
        return "decreasing"
    if np.all(d >= 0):
        return "non-decreasing"
    if np.all(d <= 0):
        return "non-increasing"
    return "non-monotone"


def _names(rows: list[dict]) -> dict[str, dict]:
    """name -> row, plus a measured row's ``published_name`` as an alias."""
    out = {r["name"]: r for r in rows}
    for r in rows:
        if r["published_name"]:
            out.setdefault(r["published_name"], r)
    return out


def _base_vs_instruct(rows: list[dict]) -> list[dict]:
    names = _names(rows)
    out, seen = [], set()
    for base in sorted(names):
        for suffix in ("-Instruct", "-instruct", "-it", "-IT", "-Chat", "-chat"):
            inst = names.get(base + suffix)
            if inst is None:
                continue
            b = names[base]
            if inst is b or (b["name"], inst["name"]) in seen:
                continue
            seen.add((b["name"], inst["name"]))
            out.append({"base": names[base]["name"], "instruct": inst["name"], "base_max": b["global_max_abs"],
                        "instruct_max": inst["global_max_abs"], "ratio": _ratio(inst["global_max_abs"], b["global_max_abs"]),
                        "base_location": b["component"], "instruct_location": inst["component"],
                        "same_location": b["component"] == inst["component"],
                        "same_value": b["global_max"] == inst["global_max"]})
    return out


def _text_vs_vl(rows: list[dict]) -> list[dict]:
    names = _names(rows)
    out, seen = [], set()
    for name in sorted(names):
        if not re.search(r"-VL-", name, flags=re.IGNORECASE):
            continue
        text_name = re.sub(r"-VL-", "-", name, flags=re.IGNORECASE)
        cands = [text_name]
        if re.search(r"-Instruct$", text_name):
            cands.append(text_name[: -len("-Instruct")])
        for t in cands:
            if t in names:
                vl, tx = names[name], names[t]
                if vl is tx or (tx["name"], vl["name"]) in seen:
                    continue
                seen.add((tx["name"], vl["name"]))
                out.append({"text": tx["name"], "vl": vl["name"], "text_max": tx["global_max_abs"], "vl_max": vl["global_max_abs"],
                            "ratio": _ratio(vl["global_max_abs"], tx["global_max_abs"]),
                            "text_location": tx["component"], "vl_location": vl["component"]})
                break
    return out


def _size_trend(rows: list[dict]) -> dict:
    """Per family (per family and generation where a family holds several, e.g. gemma2 with Gemma 1's
    gemma-2b): Spearman of params vs log10 global max over base/dense checkpoints (MoE and variants
    left out when at least two dense ones remain)."""
    by_fam: dict[str, list[dict]] = {}
    for r in rows:
        if r["family"] and r["params_b"] and r["global_max_abs"]:
            by_fam.setdefault(r["family"], []).append(r)
    fams: dict[str, list[dict]] = {}
    for fam, rs in by_fam.items():
        gens = {r["generation"] for r in rs}
        for r in rs:
            fams.setdefault(fam if len(gens) == 1 else f"{fam}:{r['generation']}", []).append(r)
    out = {}
    for fam in sorted(fams):
        core = _prefer_core(fams[fam])
        dense = [r for r in core if r.get("role") != "moe"]
        sel = sorted(dense if len(dense) >= 2 else core, key=lambda r: (r["params_b"], r["name"]))
        x = [r["params_b"] for r in sel]
        y = [math.log10(r["global_max_abs"]) for r in sel]
        out[fam] = {"n": len(sel), "spearman_params_vs_log_max": spearman(x, y) if len(sel) >= 3 else None,
                    "direction": _direction([r["global_max_abs"] for r in sel]) if len(set(x)) == len(x) else "n/a",
                    "points": [_point(r) for r in sel],
                    "left_out": sorted(r["name"] for r in fams[fam] if r not in sel)}
    return out


def _training_trajectory(rows: list[dict]) -> dict:
    groups: dict[str, list[tuple[float, dict]]] = {}
    for r in rows:
        m = _TOKENS_RE.match(r["name"])
        if not m:
            continue
        tokens = float(m.group("tokens"))
        groups.setdefault(m.group("prefix"), []).append((tokens, r))
    out = {}
    for prefix in sorted(groups):
        pts = sorted(groups[prefix], key=lambda t: t[0])
        if len(pts) < 2:
            continue
        vals = [r["global_max_abs"] for _, r in pts]
        out[prefix] = {
            "stages": [{"tokens_t": t, **_point(r)} for t, r in pts],
            "direction": _direction(vals),
            "monotone": _direction(vals) in ("increasing", "decreasing", "non-decreasing", "non-increasing"),
            "first_to_last_ratio": _ratio(vals[-1], vals[0]),
        }
    return out


# --------------------------------------------------------------------------- measured vs published

def bf16_step(v: float) -> float:
    """One bf16 ulp at |v|: 2**(floor(log2|v|) - 7); 0 for v == 0."""
    v = abs(float(v))
    if v == 0 or not math.isfinite(v):
        return 0.0
    return 2.0 ** (math.floor(math.log2(v)) - 7)


COMPARE_COLUMNS = ["name", "published_name", "component", "kind", "layer", "stat", "measured", "published",
                   "abs_diff", "bf16_step", "within_bf16_step"]


def compare_measured_published(records: Sequence[Mapping]) -> pd.DataFrame:
    """Per component max/min of each measured record beside its published counterpart (matched by
    ``meta.published_name``, else identical name); tolerance one bf16 step at the published value."""
    published = {r["name"]: r for r in records if r["source"] == "published"}
    rows = []
    for m in records:
        if m["source"] != "measured":
            continue
        pname = (m.get("meta") or {}).get("published_name") or m["name"]
        p = published.get(pname)
        if p is None:
            continue
        ms, ps = m["raw"]["per_layer_stats"], p["raw"]["per_layer_stats"]
        for comp in sorted(set(ms) & set(ps), key=forward_order_key):
            kind, layer = parse_component(comp)
            for stat in ("max", "min"):
                a, b = (ms[comp] or {}).get(stat), (ps[comp] or {}).get(stat)
                if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                    continue
                diff = abs(float(a) - float(b))
                step = bf16_step(b)
                rows.append({"name": m["name"], "published_name": pname, "component": comp, "kind": kind, "layer": layer,
                             "stat": stat, "measured": float(a), "published": float(b), "abs_diff": diff,
                             "bf16_step": step, "within_bf16_step": bool(diff <= step)})
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    df["layer"] = df["layer"].astype("Int64")
    return df


# --------------------------------------------------------------------------- markdown

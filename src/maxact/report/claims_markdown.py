"""The claims (:func:`maxact.study.claims.compute_claims`) as Markdown: headings, tables, one line per claim."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-2):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines + [""]


def claims_markdown(claims: Mapping) -> str:
    """Human-readable tables of the claims (for the report)."""
    L: list[str] = ["## The paper's claims, recomputed from the result files", ""]
    src = claims.get("sources") or {}
    here = claims.get("measured_here") or []
    scope = (f"Over {claims.get('n_checkpoints')} checkpoints: {src.get('published', 0)} of the paper's published results"
             + (f" and {src['measured']} measured here in the main analysis" if src.get("measured") else "") + ".")
    beside = [m for m in here if not m["in_claims"]]
    if beside:
        scope += (f" {len(beside)} checkpoint(s) measured here stand beside them, not counted: "
                  + "; ".join(f"{m['name']} ({m['why']})" for m in beside) + ".")
    L += [scope, ""]
    sp = claims.get("span_orders_of_magnitude") or {}
    L += _table(["claim", "value"], [
        ["checkpoints (all / main analysis)", f"{claims.get('n_checkpoints')} / {claims.get('n_main')}"],
        ["span of global max abs activation (orders of magnitude, main analysis)", sp.get("value")],
        ["largest global max", f"{(sp.get('max') or {}).get('name')} ({_fmt((sp.get('max') or {}).get('global_max_abs'))})"],
        ["smallest global max", f"{(sp.get('min') or {}).get('name')} ({_fmt((sp.get('min') or {}).get('global_max_abs'))})"],
        ["global max in the residual stream", f"{(claims.get('residual_share') or {}).get('n_residual')} of {(claims.get('residual_share') or {}).get('n_total')}"],
    ])
    if claims.get("superseded_published"):
        L += [f"Measured results replace the published ones of: {', '.join(claims['superseded_published'])}.", ""]
    ex = (claims.get("residual_share") or {}).get("exceptions") or []
    if ex:
        L += ["### Global maximum outside the residual stream", ""]
        L += _table(["checkpoint", "component", "kind", "layer", "global max", "residual ties"],
                    [[e["name"], e["component"], e["kind"], e["layer"], e["global_max"], ", ".join(e["residual_ties"]) or "none"] for e in ex])
    mp = claims.get("matched_pairs") or []
    if mp:
        L += ["### Matched MoE / dense pairs", ""]
        L += _table(["MoE", "dense", "MoE max", "dense max", "dense / MoE"],
                    [[p["moe"], p["dense"], p.get("moe_max"), p.get("dense_max"), p.get("ratio")] for p in mp])
    ft = claims.get("family_trends") or {}
    if ft:
        L += ["### Generations", ""]
        rows = []
        for lin, t in ft.items():
            for s in t["stages"]:
                rows.append([lin, s["generation"], s["n"], s["median_global_max"], s["max_global_max"],
                             ", ".join(c["name"] for c in s["checkpoints"])])
        L += _table(["lineage", "generation", "n", "median max", "max", "checkpoints"], rows)
        sm = [m for t in ft.values() for m in t["size_matched"]]
        if sm:
            L += _table(["older", "newer", "older max", "newer max", "newer / older"],
                        [[m["older"], m["newer"], m["older_max"], m["newer_max"], m["ratio"]] for m in sm])
    bi = claims.get("base_vs_instruct") or []
    if bi:
        L += ["### Base vs instruct", ""]
        L += _table(["base", "instruct", "base max", "instruct max", "instruct / base", "same location"],
                    [[b["base"], b["instruct"], b["base_max"], b["instruct_max"], b["ratio"], b["same_location"]] for b in bi])
    tv = claims.get("text_vs_vl") or []
    if tv:
        L += ["### Text vs vision-language", ""]
        L += _table(["text", "VL", "text max", "VL max", "VL / text"],
                    [[t["text"], t["vl"], t["text_max"], t["vl_max"], t["ratio"]] for t in tv])
    st = claims.get("size_trend") or {}
    if st:
        L += ["### Size trend per family (Spearman, params vs log max)", ""]
        L += _table(["family", "n", "spearman", "checkpoints"],
                    [[f, s["n"], s["spearman_params_vs_log_max"], ", ".join(p["name"] for p in s["points"])] for f, s in st.items()])
    tt = claims.get("training_trajectory") or {}
    if tt:
        L += ["### Training trajectory", ""]
        rows = [[pfx, _fmt(s["tokens_t"]) + "T", s["name"], s["global_max_abs"], s["component"]] for pfx, t in tt.items() for s in t["stages"]]
        L += _table(["run", "tokens", "checkpoint", "global max", "location"], rows)
        L += [f"{pfx}: {t['direction']} over training (last / first = {_fmt(t['first_to_last_ratio'])})." for pfx, t in tt.items()] + [""]
    return "\n".join(L)

"""The study-level stages of the workflow: aggregate (tables + claims) and render (figures + report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plotting
from .claims import claims_markdown, compare_measured_published, compute_claims, default_paper_config
from .io import atomic_save, atomic_write_text, read_json, write_json
from .report import render_report, write_table
from .resultset import discover_result_files, global_table, layer_table, load_config_meta, load_result, meta_from_config

INT8_COLUMNS = ["name", "source", "family", "policy", "reference_global_max_abs", "mean_sqnr_db", "mean_rel_rmse", "mean_rel_mae", "mean_clip_rate", "threshold", "point"]


def meta_lookup(checkpoints: list[dict]) -> dict[str, dict]:
    """name -> meta: the paper config's (it names the published checkpoints), overridden by the study's."""
    paper = default_paper_config()
    base = load_config_meta(paper) if paper.exists() else {}
    return {**base, **meta_from_config({"checkpoints": checkpoints})}


def int8_table(int8_paths: list[str], meta: dict, published_dir: str | None) -> pd.DataFrame:
    rows = []
    for p in int8_paths:
        d = read_json(p)
        for pol, m in (d.get("policies") or {}).items():
            rows.append({"name": d["checkpoint"], "source": "measured", "family": meta.get(d["checkpoint"], {}).get("family"),
                         "policy": pol, "reference_global_max_abs": d.get("reference_global_max_abs"), "point": d.get("point"), **m})
    if published_dir:
        q = Path(published_dir) / "quant" / "quant_sanity_summary.json"
        if q.exists():
            for r in read_json(q):
                rows.append({"name": r["model_name"], "source": "published",
                             "family": meta.get(r["model_name"], {}).get("family") or r.get("family"),
                             "policy": r["policy"], "reference_global_max_abs": r.get("reference_global_max_abs"),
                             **{k: r.get(k) for k in ("mean_sqnr_db", "mean_rel_rmse", "mean_rel_mae", "mean_clip_rate")}})
    df = pd.DataFrame(rows)
    for c in INT8_COLUMNS:
        if c not in df:
            df[c] = np.nan
    return df[INT8_COLUMNS]


def sqnr_peak_correlation(it: pd.DataFrame) -> dict:
    """Per INT-8 policy: correlation of SQNR (dB) with log10 of the peak across checkpoints."""
    from .claims import spearman

    out = {}
    d = it.dropna(subset=["mean_sqnr_db", "reference_global_max_abs"])
    d = d[np.isfinite(d["mean_sqnr_db"]) & (d["reference_global_max_abs"] > 0)]
    for pol, g in d.groupby("policy"):
        x = np.log10(g["reference_global_max_abs"].to_numpy(dtype=float))
        y = g["mean_sqnr_db"].to_numpy(dtype=float)
        pearson = float(np.corrcoef(x, y)[0, 1]) if len(g) >= 3 and np.std(x) > 0 and np.std(y) > 0 else None
        out[pol] = {"n": int(len(g)), "pearson_r": pearson, "spearman_rho": spearman(list(x), list(y)) if len(g) >= 3 else None,
                    "checkpoints": sorted(g["name"].astype(str))}
    return out


def aggregate_for_workflow(stats_paths, int8_paths, published_dir, checkpoints, matched_pairs, outputs) -> dict:
    meta = meta_lookup(checkpoints)
    records = [load_result(p, meta) for p in stats_paths]
    if published_dir:
        records += [load_result(p, meta) for p in discover_result_files([published_dir])]
    gt = global_table(records)
    lt = layer_table(records)
    pairs = matched_pairs or None
    claims = compute_claims(records, pairs=pairs)
    cmp = compare_measured_published(records)
    atomic_save(outputs["global_table"], lambda tmp: gt.to_csv(tmp, index=False))
    atomic_save(outputs["layer_table"], lambda tmp: lt.to_parquet(tmp, index=False))
    atomic_save(outputs["comparison"], lambda tmp: cmp.to_csv(tmp, index=False))
    it = int8_table(int8_paths, meta, published_dir)
    atomic_save(outputs["int8_table"], lambda tmp: it.to_csv(tmp, index=False))
    claims["int8_sqnr_vs_log_peak"] = sqnr_peak_correlation(it)
    write_json(outputs["claims"], claims)
    return claims


def _policy_text(stats: list[dict]) -> str:
    pol = sorted({json.dumps(s["provenance"]["tokenization"].get("add_special_tokens")) for s in stats})
    if pol == ["false"]:
        return "no special tokens added (no BOS/EOS), as in the paper; split_special_tokens=True"
    if pol == ["true"]:
        return "each tokenizer's own special-token convention (add_special_tokens=True); split_special_tokens=True"
    return "mixed across checkpoints (see each checkpoint's provenance)"


def render_for_workflow(inputs: dict, outputs: dict, study: str, config: dict) -> None:
    fig_dir, tab_dir = Path(outputs["figures"]), Path(outputs["tables"])
    gt = pd.read_csv(inputs["global_table"])
    lt = pd.read_parquet(inputs["layer_table"])
    it = pd.read_csv(inputs["int8_table"])
    claims = read_json(inputs["claims"])
    stats = [dict(read_json(p), path=p) for p in _as_list(inputs["stats"])]
    int8_paths = {read_json(p)["checkpoint"]: p for p in _as_list(inputs["int8"])}
    for s in stats:
        s["int8_path"] = int8_paths.get(s["checkpoint"])

    figures = []

    def fig(paths, caption):
        figures.append({"png": paths[0], "pdf": paths[1], "caption": caption})

    fig(plotting.global_max_by_family(gt, fig_dir), "Global max |activation| per checkpoint (log axis), coloured by family; filled markers were measured here, hollow ones are the paper's published values; marker shape = role.")
    fig(plotting.layerwise_max(lt, fig_dir), "Max |a| of the residual stream per layer against relative depth, per family.")
    fig(plotting.component_depth_heatmap(lt, fig_dir), "Median over checkpoints of log10 max|a| per component and relative-depth bin: where peaks sit.")
    fig(plotting.int8_vs_peak(it, fig_dir), "Per-tensor INT-8 SQNR at the peak layer against the checkpoint's peak (log axis), per threshold policy.")

    for fn, caption in ((plotting.matched_pairs, "Matched dense/MoE pairs: global max of each, with the dense/MoE ratio (log axis)."),
                        (plotting.training_trajectory, "Global max over training tokens for intermediate checkpoints (Ling-mini 5T to 20T).")):
        paths = fn(claims, fig_dir)
        if paths:
            fig(paths, caption)
    boot = pd.read_csv(inputs["bootstrap"]) if Path(inputs["bootstrap"]).stat().st_size > 1 else pd.DataFrame()
    sat = pd.read_csv(inputs["saturation"]) if Path(inputs["saturation"]).stat().st_size > 1 else pd.DataFrame()
    verdicts = read_json(inputs["verdicts"])
    if len(sat):
        fig(plotting.saturation_curves(sat, fig_dir), "Saturation: median global max over category-proportional subsets against subset size, 5-95% band; dotted: full corpus. Exact from per-sample maxima (no re-measurement).")
    if len(boot):
        fig(plotting.bootstrap_stability(boot, fig_dir), "Bootstrap: subset maxima relative to the full-corpus maximum (mean and range over seeds).")

    tables = []
    gcols = [c for c in ["name", "source", "family", "role", "params_b", "global_max", "global_max_abs", "component", "layer", "relative_depth"] if c in gt]
    tables.append(write_table(gt.sort_values(["source", "family", "name"])[gcols], tab_dir, "global_max", "Global maximum activation per checkpoint"))
    tables.append(write_table(it, tab_dir, "int8_check", "INT-8 sanity check at the peak layer (means over evaluation samples)"))
    peak_rows = [{"checkpoint": s["checkpoint"], "global_max": s["global_max_activation"], "component": (s.get("peak") or {}).get("component"),
                  "sample_id": (s.get("peak") or {}).get("sample_id"), "position": (s.get("peak") or {}).get("position"),
                  "token_id": (s.get("peak") or {}).get("token_id"), "token": repr((s.get("peak") or {}).get("token")),
                  "channel": (s.get("peak") or {}).get("channel")} for s in stats]
    tables.append(write_table(pd.DataFrame(peak_rows), tab_dir, "peak_provenance", "Where each measured peak sits: sample, token position, token and channel"))
    corr = claims.get("int8_sqnr_vs_log_peak") or {}
    if corr:
        ct = pd.DataFrame([{"policy": k, "n": v["n"], "pearson_r": v["pearson_r"], "spearman_rho": v["spearman_rho"]} for k, v in corr.items()])
        tables.append(write_table(ct, tab_dir, "int8_correlation", "Correlation of INT-8 SQNR with log10 peak across checkpoints, per policy"))
    for s_ in stats:
        from .card import build_card, card_markdown

        int8 = read_json(s_["int8_path"]) if s_.get("int8_path") else None
        card = build_card(s_, int8)
        md_path = Path(outputs["cards"]) / f"{s_['checkpoint']}.activation_card.md"
        atomic_write_text(md_path, card_markdown(card))
        write_json(md_path.with_name(f"{s_['checkpoint']}.activation_card.json"), card)
        s_["card_path"] = str(md_path)
    if len(boot):
        tables.append(write_table(boot, tab_dir, "bootstrap", "Bootstrap stability of the global max (category-proportional subsets)"))
    if verdicts:
        vt = pd.DataFrame([{"checkpoint": k, **v} for k, v in verdicts.items()])
        tables.append(write_table(vt, tab_dir, "saturation_verdict", "Has the global max plateaued? (median over half the corpus within 5% of the full maximum)"))
    probe_rows = []
    for p in _as_list(inputs.get("probes", [])):
        pr = read_json(p)
        if "sets" not in pr:
            continue
        for set_name, v in pr["sets"].items():
            probe_rows.append({"checkpoint": pr["checkpoint"], "probe_set": set_name, "probe_max": v["global_max"],
                               "corpus_max": pr["corpus_global_max"], "ratio_to_corpus": v["ratio_to_corpus"],
                               "location": v["location"], "peak_token": repr(v["peak_token"]), "verdict": pr["verdict"]})
    if probe_rows:
        tables.append(write_table(pd.DataFrame(probe_rows), tab_dir, "probes",
                                  "Targeted probes vs the corpus: does any probe elicit a larger peak? (ratio > 1 = yes)"))
    cmp_path = Path(inputs["comparison"])
    cmp = pd.read_csv(cmp_path) if cmp_path.stat().st_size > 1 else pd.DataFrame()
    if len(cmp):
        tables.append(write_table(cmp, tab_dir, "measured_vs_published", "Measured vs published, per component (tolerance: one bf16 step)"))

    nonfinite = [{"checkpoint": s["checkpoint"], "component": k, **v} for s in stats for k, v in (s.get("nonfinite") or {}).items()]
    remote = [s["checkpoint"] for s in stats if s["provenance"].get("trust_remote_code")]
    corpus = read_json(inputs["corpus_manifest"])
    n_pub = int((gt["source"] == "published").sum())
    render_report(
        inputs["template"], outputs["report"],
        {
            "study": study, "n_measured": len(stats), "n_published": n_pub, "measured": stats,
            "figures": figures, "tables": tables, "claims_html": _md_to_html(claims_markdown(claims)),
            "claims_path": inputs["claims"], "nonfinite": nonfinite, "remote_code": remote, "corpus": corpus,
            "tokenization_policy": _policy_text(stats) if stats else "n/a",
            "published_note": (f"{n_pub} per-checkpoint result files published with the paper (public repository clx1415926/Max_act_llm, folder results/), "
                               "read by the same reader as the measured ones. No per-sample figures were published, so bootstrap "
                               "statistics cannot be recomputed for them.") if n_pub else "Published results are not included in this study.",
        },
    )


def _as_list(x):
    return [x] if isinstance(x, str) else list(x)


def _md_to_html(md: str) -> str:
    """Minimal Markdown (headings, pipe tables, paragraphs) to HTML for the claims block."""
    import html

    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[2:]]
            out.append("<table class='table'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|"):
            rows.append([c.strip() for c in s.strip("|").split("|")])
            continue
        flush()
        if s.startswith("#"):
            level = min(len(s) - len(s.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{html.escape(s.lstrip('#').strip())}</h{level}>")
        elif s.startswith(("- ", "* ")):
            out.append(f"<li>{html.escape(s[2:])}</li>")
        elif s:
            out.append(f"<p>{html.escape(s)}</p>")
    flush()
    return "\n".join(out)

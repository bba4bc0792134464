"""Stage ``render``: figures, tables, activation cards and the HTML report, from the aggregate's outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from maxact.io import atomic_write_text, read_json, write_json
from maxact.report import plotting
from maxact.report.card import build_card, card_markdown
from maxact.report.claims_markdown import claims_markdown
from maxact.report.html import render_report, write_table


def _policy_text(stats: list[dict]) -> str:
    pol = sorted({json.dumps(s["provenance"]["tokenization"].get("add_special_tokens")) for s in stats})
    if pol == ["false"]:
        return "no special tokens added (no BOS/EOS), as in the paper; split_special_tokens=True"
    if pol == ["true"]:
        return "each tokenizer's own special-token convention (add_special_tokens=True); split_special_tokens=True"
    return "mixed across checkpoints (see each checkpoint's provenance)"


def render_for_workflow(inputs: dict, outputs: dict, study: str) -> None:
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
    calibration = {}
    for p in _as_list(inputs.get("calibration", [])):
        m = read_json(p)
        calibration[m["provenance"]["checkpoint"]] = {**m, "dir": str(Path(p).parent), "path": p}
    for s_ in stats:
        int8 = read_json(s_["int8_path"]) if s_.get("int8_path") else None
        cal = calibration.get(s_["checkpoint"])
        if cal is not None:  # links relative to the cards folder
            cal = {**cal, "dir": os.path.relpath(cal["dir"], outputs["cards"])}
            s_["calibration_files"] = {"dir": calibration[s_["checkpoint"]]["dir"], **{k: cal[k] for k in ("files", "uncovered", "filled")},
                                    "not_recorded": cal.get("not_recorded", {})}  # manifests before it had none
        card = build_card(s_, int8, cal)
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
    """The claims' Markdown (headings, pipe tables, lists, paragraphs) as HTML, by markdown-it-py (CommonMark
    plus GFM tables; raw HTML in the text is escaped)."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return html.replace("<table>", "<table class='table'>")

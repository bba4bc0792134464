"""Stage ``render``: figures, tables, activation cards and the HTML report, from the aggregate's outputs.

The report folder is self-contained: every file the report or a card links (each checkpoint's result files and
calibration files, the claims) is placed under it (``files/``, hard links where the filesystem allows), and
every link is relative to the file that holds it, so the folder can be zipped or mailed on its own. A mirror of
it (``bundle``) is what Snakemake's own report embeds (``snakemake --report report.zip``), links included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from maxact.io import atomic_write_text, link_or_copy, mirror_tree, read_json, write_json
from maxact.quant.formats import LABELS, short_module
from maxact.report import plotting
from maxact.report.card import build_card, card_markdown, corpus_verdict, quant_eval_rows, revision_text, weights_text
from maxact.report.claims_markdown import claims_markdown
from maxact.report.html import render_report, write_table
from maxact.study.claims import lineage

#: Where the files a report links sit inside the report folder.
FILES = "files"
INT8_NOTE = ("Symmetric INT-8 of the hidden state at each checkpoint's peak layer. The definition column says how a row "
             "was computed: 'paper' = the paper's quant_sanity_check.py (histogram quantile, clamp-round-clamp, errors "
             "pooled over all evaluation tokens; the published rows are the paper's own), 'exact' = exact quantile and "
             "means over evaluation samples. per_channel and per_token are maxact's mitigations, not in the paper.")
TOP5_NOTE = ("From each checkpoint's top values in the paper's form (<model>_top5_stats.json: every eligible point's top 5, "
             "the largest 100 of them): saturated = all of them equal (a repeated structural peak); concentration = the top "
             "value over their mean; sign = all positive, all negative or mixed; decay5_over_1 = the fifth over the first; "
             "hot points = points whose own largest value is within 90% of the top.")
def _largest_estimate(doc: dict | None) -> float | None:
    """The extreme-value estimate of the median maximum over the largest N asked, where the checkpoint has one."""
    rls = (doc or {}).get("return_levels") or []
    return rls[-1]["estimate"] if rls else None


EXTREMES_NOTE = ("Each sample is a block: its maximum |a| over the points of the global max is one observation. A value "
                 "shared exactly by many samples (a structural peak, often the first token's massive activation) is taken "
                 "out as a point mass; the rest is fitted by a generalized Pareto tail above a threshold (or a generalized "
                 "extreme-value distribution where the corpus is too small for a tail), with scipy. 'est. max over N' is "
                 "the median of the maximum over N samples: a corpus of N samples exceeds it with probability 1/2. "
                 "Intervals: profile likelihood, 90%. Quarters: each random quarter of the corpus, fitted alone, predicts "
                 "the whole; the count says how often the measured maximum fell inside its 90% interval.")
QUANT_NOTE = ("Each format is applied by its consumer's own code to the layers maxact calibrated (LM head in full "
              "precision): compressed-tensors' quantized forward (FP8/INT8 static with maxact's input_scale files, dynamic "
              "per-token INT8 (W8A8) and FP8 as the reference), llm-compressor's SmoothQuant smoothing with maxact's "
              "act_scales.pt then W8A8. ΔNLL/token: mean next-token NLL minus the unquantized model's; rel L2 over all "
              "positions; top-1: share of positions with the same argmax token; clip rate: share of (token, layer) input "
              "rows with a value above the calibrated max |x| the static scale was made from; worst layer: the largest "
              "local error, the layer's quantized output against its unquantized output on the same input, per token. "
              "Verdict: safe up to the safe ΔNLL, breaks from the breaks ΔNLL (quant_eval settings).")
BOOTSTRAP_NOTE = ("The paper's experiment A, exact from per-sample maxima: category-proportional subsets drawn as the paper "
                  "draws them (make_bootstrap_datasets.py: seed 20260502 + 100 size + repeat), the global max of each "
                  "repeat r0..r4. The paper's 'CV%' is the spread (max - min) / mean of the repeats (it reproduces every "
                  "published value); CV% (std/mean) is the coefficient of variation proper. The published rows are the "
                  "paper's own runs (its exp_A files).")


def _policy_text(stats: list[dict]) -> str:
    pol = sorted({json.dumps(s["provenance"]["tokenization"].get("add_special_tokens")) for s in stats})
    if pol == ["false"]:
        return "no special tokens added (no BOS/EOS), as in the paper; split_special_tokens=True"
    if pol == ["true"]:
        return "each tokenizer's own special-token convention (add_special_tokens=True); split_special_tokens=True"
    return "mixed across checkpoints (see each checkpoint's provenance)"


def _short_weights(prov: dict) -> str:
    """A few words for figure labels: 'GGUF Q4_1', 'random init'."""
    if prov.get("source") == "random":
        return "random init"
    if prov.get("gguf"):
        return f"GGUF {prov['gguf'].get('quant_type')}"
    return ""


_GEN_SUFFIX = re.compile(r"(_text|_moe|_vl|-it|-instruct)$")


def family_note(family: str | None, model_type: str | None) -> str | None:
    """Why a checkpoint sits under a family label of another generation than its architecture (the paper's folder
    ``gemma2`` holds gemma-2b, a Gemma 1 model of model_type ``gemma``), or None."""
    if not family or not model_type:
        return None
    fam_line, fam_gen = lineage(family)
    mt_line, mt_gen = lineage(_GEN_SUFFIX.sub("", str(model_type).lower()))
    if fam_gen is None or fam_line != mt_line:
        return None
    mt_gen = mt_gen or "1"  # an architecture without a number is the first generation (gemma)
    if fam_gen == mt_gen or fam_gen.startswith(mt_gen + ".") or mt_gen.startswith(fam_gen + "."):
        return None
    return (f"listed under family {family} (the paper's folder), though its architecture is model_type {model_type} "
            f"(generation {mt_gen})")


def _files_of(s: dict, calibration: dict | None, int8_path: str | None, probes_path: str | None, files_dir: Path) -> dict:
    """Copy (or link) one measured checkpoint's files into the report folder; their paths there."""
    d = files_dir / s["checkpoint"]
    out = {"result": link_or_copy(s["path"], d / "activation_stats.json")}
    if int8_path:
        out["int8"] = link_or_copy(int8_path, d / "int8_check.json")
    if probes_path:
        out["probes"] = link_or_copy(probes_path, d / "probes.json")
    if calibration is not None:
        src = Path(calibration["path"]).parent
        out["calibration"] = [link_or_copy(src / f, d / "calibration" / f) for f in ["calibration.json", *calibration["files"]]]
    return out


def _measured_rows(stats: list[dict], claims: dict, n_paper: int) -> tuple[list[dict], str]:
    """One row per measured checkpoint for the report's opening section, and the sentence that says what they are."""
    here = {m["name"]: m for m in claims.get("measured_here") or []}
    rows = []
    for s in stats:
        prov = s["provenance"]
        h = here.get(s["checkpoint"], {})
        trunc = (prov.get("tokenization") or {}).get("truncation") or {}
        rows.append({
            "checkpoint": s["checkpoint"], "model_id": prov.get("model_id") or s.get("model_name"),
            "revision": revision_text(prov), "weights": weights_text(prov), "weights_short": _short_weights(prov),
            "published_name": h.get("published_name"), "in_claims": h.get("in_claims", False), "why": h.get("why", ""),
            "samples": s.get("num_samples"), "tokens": s.get("num_tokens"), "truncation": trunc,
            "global_max": s.get("global_max_activation"), "location": s.get("global_max_location"),
        })
    n_pub = sum(1 for r in rows if r["published_name"])
    kinds = ("; ".join(f"{r['checkpoint']} ({r['weights']})" for r in rows) if len(rows) <= 4 else
             ", ".join(sorted({r["weights"] for r in rows})) + " (each in the table below)")
    if not rows:
        return rows, "No checkpoint was measured in this study: the tables and figures show the paper's published results."
    if n_pub == 0:
        paper = (f"{'Neither' if len(rows) == 2 else 'None'} is among the paper's {n_paper} published checkpoints, so "
                 f"{'it is' if len(rows) == 1 else 'they are'} shown beside the paper's results, marked \"measured here\", "
                 "and not compared component by component.")
    else:
        paper = (f"{n_pub} of them are the paper's own checkpoints "
                 f"({', '.join(r['checkpoint'] + ' = ' + r['published_name'] for r in rows if r['published_name'])}) and are "
                 "compared with the published results component by component.")
    counted = [r["checkpoint"] for r in rows if r["in_claims"]]
    claims_s = (f"In the paper's claims: {', '.join(counted)} (put in the main analysis by the config)." if counted
                else "None is counted in the paper's claims, which are computed over the paper's checkpoints.")
    return rows, f"{len(rows)} checkpoint(s) measured here: {kinds}. {paper} {claims_s}"


def compact_points(names: str) -> str:
    """'layer_4_hidden, layer_5_hidden, layer_6_hidden, layer_9_mlp_output' -> 'hidden 4-6; mlp_output 9' (the
    report's short form of a list of points; the CSV keeps every name)."""
    from maxact.points import parse_component

    by_suffix: dict[str, list[int]] = {}
    other = []
    for n in [x.strip() for x in str(names).split(",") if x.strip()]:
        kind, layer = parse_component(n)
        if layer is None:
            other.append(n)
        else:
            by_suffix.setdefault(n.split("_", 2)[2], []).append(layer)
    parts = []
    for suffix, layers in by_suffix.items():
        layers = sorted(set(layers))
        runs, start = [], layers[0]
        for a, b in zip(layers, layers[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}-{a}" if a != start else f"{a}")
                start = b
        parts.append(f"{suffix} {', '.join(runs)}")
    return "; ".join(parts + other)


def _kv(d: dict | None) -> list[tuple[str, str]]:
    """A settings or libraries mapping as (key, value) pairs for a definition table."""
    out = []
    for k, v in sorted((d or {}).items()):
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v)) or "none"
        elif v is None:
            v = "none"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        out.append((str(k), str(v)))
    return out


def _int8_display(it: pd.DataFrame) -> pd.DataFrame:
    """The INT-8 table as the report shows it: readable column names, measured rows first."""
    if it.empty:
        return it
    d = it.copy()
    d["source"] = d["source"].map({"measured": "measured here", "published": "published"}).fillna(d["source"])
    d = d.sort_values(["source", "name", "policy"], key=lambda c: c.map({"measured here": 0, "published": 1}) if c.name == "source" else c)
    cols = {"name": "checkpoint", "source": "source", "policy": "policy", "definition": "definition",
            "reference_global_max_abs": "peak |a|", "mean_sqnr_db": "SQNR (dB)", "mean_rel_rmse": "rel. RMSE",
            "mean_rel_mae": "rel. MAE", "mean_clip_rate": "clip rate", "threshold": "threshold", "point": "layer",
            "note": "note"}
    for c in ("definition", "note"):
        if c not in d:
            d[c] = None
    return d[list(cols)].rename(columns=cols)


def render_for_workflow(inputs: dict, outputs: dict, study: str) -> None:
    report_dir = Path(outputs["report"]).parent
    fig_dir, tab_dir, card_dir, files_dir = (Path(outputs[k]) for k in ("figures", "tables", "cards", "files"))
    gt = pd.read_csv(inputs["global_table"])
    lt = pd.read_parquet(inputs["layer_table"])
    it = pd.read_csv(inputs["int8_table"])
    claims = read_json(inputs["claims"])
    stats = [dict(read_json(p), path=p) for p in _as_list(inputs["stats"])]
    int8_paths = {read_json(p)["checkpoint"]: p for p in _as_list(inputs["int8"])}
    probe_paths = {read_json(p)["checkpoint"]: p for p in _as_list(inputs.get("probes", []))}
    calibration = {}
    for p in _as_list(inputs.get("calibration", [])):
        m = read_json(p)
        calibration[m["provenance"]["checkpoint"]] = {**m, "path": p}

    # Every linked file inside the report folder.
    files_dir.mkdir(parents=True, exist_ok=True)
    claims_copy = link_or_copy(inputs["claims"], files_dir / "claims.json")
    for s in stats:
        s["files"] = _files_of(s, calibration.get(s["checkpoint"]), int8_paths.get(s["checkpoint"]),
                               probe_paths.get(s["checkpoint"]), files_dir)

    measured_rows, measured_sentence = _measured_rows(stats, claims, int((gt["source"] == "published").sum()))
    notes = {r["checkpoint"]: r["weights_short"] for r in measured_rows}
    weights = {r["checkpoint"]: r["weights"] for r in measured_rows}

    figures = []

    def fig(paths, caption):
        figures.append({"png": paths[0], "pdf": paths[1], "caption": caption})

    fig(plotting.global_max_by_family(gt, fig_dir, notes),
        "Global max |activation| per checkpoint (log axis), coloured by family; filled markers were measured here "
        f"({'; '.join(f'{k}: {v}' for k, v in weights.items()) or 'none'}), hollow ones are the paper's published "
        "values; marker shape = role. " + (measured_sentence.split('. ', 1)[1] if measured_rows else ""))
    fig(plotting.layerwise_max(lt, fig_dir), "Max |a| of the residual stream per layer against relative depth, per family "
        "(solid: measured here; dashed: the paper's published values).")
    fig(plotting.component_depth_heatmap(lt, fig_dir), "Median over checkpoints of log10 max|a| per component and "
        "relative-depth bin: where peaks sit.")
    fig(plotting.int8_vs_peak(it, fig_dir), "Per-tensor INT-8 SQNR at the peak layer against the checkpoint's peak (log "
        "axis), per threshold policy; each point is labelled with its checkpoint(s).")
    for fn, caption in ((plotting.matched_pairs, "Matched dense/MoE pairs: global max of each, with the dense/MoE ratio (log axis)."),
                        (plotting.training_trajectory, "Global max over training tokens for intermediate checkpoints (Ling-mini 5T to 20T).")):
        paths = fn(claims, fig_dir)
        if paths:
            fig(paths, caption)
    boot = pd.read_csv(inputs["bootstrap"]) if Path(inputs["bootstrap"]).stat().st_size > 1 else pd.DataFrame()
    sat = pd.read_csv(inputs["saturation"]) if Path(inputs["saturation"]).stat().st_size > 1 else pd.DataFrame()
    verdicts = read_json(inputs["verdicts"])
    if len(sat):
        fig(plotting.saturation_curves(sat, fig_dir), "Saturation: median global max over category-proportional subsets "
            "against subset size, 5-95% band; dotted: full corpus. Exact from per-sample maxima (no re-measurement).")
    if len(boot):
        fig(plotting.bootstrap_stability(boot, fig_dir), "Bootstrap: subset maxima relative to the full-corpus maximum "
            "(mean and range over seeds).")
    if len(sat) and "kind" in sat and (sat["kind"] != "global").any():
        fig(plotting.saturation_by_kind(sat, fig_dir), "Saturation per component kind (residual stream, attention, "
            "MLP/MoE, gate, final norm): median max over category-proportional subsets relative to its final value; "
            "dashed: 95%.")
    # results/extremes/<ckpt>/extremes.json: keyed by the checkpoint's folder, as the cards and probes look them up
    extremes = {Path(p).parent.name: read_json(p) for p in _as_list(inputs.get("extremes") or [])}
    for name, d in sorted(extremes.items()):
        if d.get("status") == "fitted":
            fig(plotting.extremes_curve(sat, d, name, fig_dir),
                f"{name}: observed saturation of the global max and the extreme-value estimate of the median maximum "
                f"over N samples (90% profile-likelihood band) to {max(r['n_samples'] for r in d['return_levels']):,} "
                f"samples. {corpus_verdict(d)}.")

    # results/quant_eval/<ckpt>/quant_eval.json: keyed by the checkpoint's folder, like the extremes
    quant = {Path(p).parent.name: read_json(p) for p in _as_list(inputs.get("quant_eval") or [])}
    qrows = [{"checkpoint": name, "format": LABELS.get(f, f), "global_max": abs(d["global_max_activation"]),
              "linear_input_max": (d.get("largest_linear_input") or {}).get("max_abs"), "delta_nll": e["delta_nll_per_token"]}
             for name, d in sorted(quant.items()) if d.get("global_max_activation") is not None
             for f, e in d["formats"].items() if f != "unquantized" and e.get("status") == "measured"]
    if qrows:
        fig(plotting.quant_delta_vs_max(pd.DataFrame(qrows), fig_dir),
            "ΔNLL per token of each quantized format (held-out samples, against the unquantized model) against the "
            "checkpoint's global max |activation| (left) and against its largest calibrated linear-layer input max |x|, "
            "what a per-tensor static scale is made from (right); static per-tensor INT8 labelled per checkpoint.")

    tables = []
    g = gt.copy()
    g["source"] = g["source"].map({"measured": "measured here", "published": "published"}).fillna(g["source"])
    g["in claims"] = g["main_analysis"].map({True: "yes", False: "no"})
    replaced = set(claims.get("superseded_published") or [])
    g.loc[(g["source"] == "published") & g["name"].isin(replaced), "in claims"] = "no: replaced by its measurement here"
    g["note"] = [family_note(f, m) or "" for f, m in zip(g["family"], g.get("model_type", [None] * len(g)))]
    gcols = [c for c in ["name", "source", "in claims", "family", "model_type", "role", "params_b", "global_max", "component",
                         "note"] if c in g]
    g = g.sort_values(["source", "family", "name"], key=lambda c: c.map({"measured here": 0, "published": 1}) if c.name == "source" else c)
    tables.append(write_table(g[gcols], tab_dir, "global_max", "Global maximum activation per checkpoint"))
    tables.append(write_table(_int8_display(it), tab_dir, "int8_check", "INT-8 sanity check at the peak layer",
                              note=INT8_NOTE))
    t5 = pd.read_csv(inputs["top5_table"]) if Path(inputs["top5_table"]).stat().st_size > 1 else pd.DataFrame()
    if len(t5):
        t5 = t5.assign(source=t5["source"].map({"measured": "measured here", "published": "published"}),
                       hot_points=t5["hot_points"].fillna("").map(compact_points))
        tables.append(write_table(t5.sort_values(["source", "name"], key=lambda c: c.map({"measured here": 0, "published": 1})
                                                 if c.name == "source" else c),
                                  tab_dir, "top5_indicators", "The top values: structural indicators (the paper's scan_top5.py)",
                                  note=TOP5_NOTE))
    peak_rows = [{"checkpoint": s["checkpoint"], "global_max": s["global_max_activation"], "component": (s.get("peak") or {}).get("component"),
                  "sample_id": (s.get("peak") or {}).get("sample_id"), "position": (s.get("peak") or {}).get("position"),
                  "token_id": (s.get("peak") or {}).get("token_id"), "token": repr((s.get("peak") or {}).get("token")),
                  "channel": (s.get("peak") or {}).get("channel")} for s in stats]
    tables.append(write_table(pd.DataFrame(peak_rows), tab_dir, "peak_provenance", "Where each measured peak sits: sample, token position, token and channel"))
    corr = claims.get("int8_sqnr_vs_log_peak") or {}
    if corr:
        ct = pd.DataFrame([{"policy": k, "n": v["n"], "pearson_r": v["pearson_r"], "spearman_rho": v["spearman_rho"]} for k, v in corr.items()])
        tables.append(write_table(ct, tab_dir, "int8_correlation", "Correlation of INT-8 SQNR with log10 peak across checkpoints, per policy"))
    for s in stats:
        int8 = read_json(int8_paths[s["checkpoint"]]) if s["checkpoint"] in int8_paths else None
        cal = calibration.get(s["checkpoint"])
        if cal is not None:  # the card links the copies in the report folder, relative to the card
            cal = {**cal, "dir": Path(os.path.relpath(files_dir / s["checkpoint"] / "calibration", card_dir)).as_posix()}
        card = build_card(s, int8, cal, extremes.get(s["checkpoint"]), quant.get(s["checkpoint"]))
        md_path = card_dir / f"{s['checkpoint']}.activation_card.md"
        atomic_write_text(md_path, card_markdown(card))
        write_json(md_path.with_name(f"{s['checkpoint']}.activation_card.json"), card)
        s["card_path"] = str(md_path)
    if len(boot):
        b = boot.assign(source=boot["source"].map({"measured": "measured here", "published": "published"}))
        b = b.rename(columns={"cv_percent_paper": "CV% (paper: range/mean)", "cv_percent_std": "CV% (std/mean)",
                              "full_max": "full corpus max", "diff_to_full_percent": "mean vs full (%)"})
        tables.append(write_table(b, tab_dir, "bootstrap", "Bootstrap experiment A: the global max over subsets of the corpus",
                                  note=BOOTSTRAP_NOTE))
    if verdicts:
        vt = pd.DataFrame([{"checkpoint": k, **{kk: vv for kk, vv in v.items() if kk not in ("bootstrap_sizes", "reach")}}
                           for k, v in verdicts.items()])
        tables.append(write_table(vt, tab_dir, "saturation_verdict", "Has the global max plateaued? (median over half the corpus within 5% of the full maximum)"))
        reach = [{"checkpoint": k, "kind": kind, "final max": r["final"], "reached 95% at": r["n_95"],
                  "reached 99% at": r["n_99"], "last rise at": r["last_rise_n"],
                  "last new record at sample": r["last_record_position"]}
                 for k, v in verdicts.items() for kind, r in (v.get("reach") or {}).items()]
        if reach:
            tables.append(write_table(pd.DataFrame(reach), tab_dir, "saturation_reach",
                                      "Where each saturation curve reached 95% and 99% of its final value (subset size), "
                                      "the last subset size at which its median still rose, and the last sample (corpus "
                                      "order) that set a new maximum"))
    if extremes:
        rows = []
        for name, d in sorted(extremes.items()):
            rl = {r["n_samples"]: r for r in d.get("return_levels") or []}

            def cell(n):
                r = rl.get(n)
                if not r:
                    return "n/a"
                lo = "open" if r["lower"] is None else f"{r['lower']:.4g}"
                hi = "open" if r["upper"] is None else f"{r['upper']:.4g}"
                return f"{r['estimate']:.4g} [{lo}, {hi}]"
            big = sorted(rl)
            ep = d.get("endpoint")
            val = d.get("validation") or {}
            rows.append({"checkpoint": name, "samples": d.get("n_samples"), "measured max": d.get("observed_max"),
                         "structural share": d.get("structural_share"),
                         "est. max over 20k": cell(20000) if 20000 in rl else (cell(big[0]) if big else "n/a"),
                         f"est. max over {big[-1]:,}" if big else "est. max": cell(big[-1]) if big else "n/a",
                         "endpoint": "none (unbounded)" if ep is None else
                         f"{ep['estimate']:.4g} [{'open' if ep['lower'] is None else format(ep['lower'], '.4g')}, "
                         f"{'open' if ep['upper'] is None else format(ep['upper'], '.4g')}]",
                         "quarters predicting the whole": f"{val.get('inside')}/{val.get('of')}" if val else "n/a",
                         "verdict": corpus_verdict(d)})
        tables.append(write_table(pd.DataFrame(rows), tab_dir, "corpus_enough",
                                  "Is the corpus enough? Measured max and the extreme-value estimate of the median maximum "
                                  "over N samples [90% profile-likelihood interval]", note=EXTREMES_NOTE))
    for name, d in sorted(quant.items()):
        view = quant_eval_rows(d)
        qt = pd.DataFrame([{"format": r["format"], "status": r["status"], "ΔNLL/token": r["delta_nll"],
                            "logits rel L2": r["logits_rel_l2"], "final hidden rel L2": r["final_hidden_rel_l2"],
                            "top-1 agreement": r["top1"], "clip rate (token rows)": r["clip_rate"],
                            "worst layer": short_module(r["worst_module"]) if r["worst_module"] else None,
                            "its per-token rel. error": r["worst_module_error"], "verdict": r["verdict"],
                            "why not run": r["reason"]} for r in view["rows"]])
        h = d.get("heldout") or {}
        tables.append(write_table(qt, tab_dir, f"quant_eval_{name}",
                                  f"{name}: what each quantized format does, end to end (consumers' own code, maxact's files)",
                                  note=(f"{view['verdict_line']}. Held out: {view['samples']} corpus samples not in the measurement "
                                        f"(so not in the calibration; {_ids(h.get('sample_ids') or [])}), {view['tokens']:,} tokens "
                                        f"(each cut to {view['max_tokens']}; "
                                        f"{(h.get('truncation') or {}).get('samples', 0)} cut); reference NLL "
                                        f"{view['reference_nll']:.4f}/token. " + QUANT_NOTE)))
        lc = d.get("llama_cpp") or {}
        if lc.get("status") == "measured":
            lrows = [{"type": t, "imatrix": lab.replace("_imatrix", "").replace("_", " "), "status": v.get("status"),
                      "PPL": v.get("ppl"), "±": v.get("ppl_error"), "ΔNLL/token vs F32": v.get("delta_nll_per_token"),
                      "size (MB)": v["size_bytes"] / 1e6 if v.get("size_bytes") else None, "note": v.get("reason")}
                     for t, row in lc["types"].items() for lab, v in row.items()]
            tables.append(write_table(pd.DataFrame(lrows), tab_dir, f"llama_cpp_{name}",
                                      f"{name}: llama.cpp's quantizer with and without maxact's imatrix (llama-perplexity)",
                                      note=f"Same held-out text; ctx {lc['ctx']}, {lc['base'].get('chunks')} chunks; F32 base "
                                           f"PPL {lc['base']['ppl']:.4g}. ΔNLL/token = ln PPL - ln PPL(F32)."))
    probe_rows = []
    for p in probe_paths.values():
        pr = read_json(p)
        if "sets" not in pr:
            continue
        for set_name, v in pr["sets"].items():
            est = _largest_estimate(extremes.get(pr["checkpoint"]))
            probe_rows.append({"checkpoint": pr["checkpoint"], "probe_set": set_name, "probe_max": v["global_max"],
                               "corpus_max": pr["corpus_global_max"], "ratio_to_corpus": v["ratio_to_corpus"],
                               "estimate_largest_N": est,
                               "ratio_to_estimate": (abs(v["global_max"]) / est) if (est and v["global_max"] is not None) else None,
                               "location": v["location"], "peak_token": repr(v["peak_token"])})
    if probe_rows:
        verdict_text = {read_json(p)["checkpoint"]: read_json(p).get("verdict") for p in probe_paths.values()}
        tables.append(write_table(pd.DataFrame(probe_rows), tab_dir, "probes",
                                  "Targeted probes vs the corpus: does any probe elicit a larger peak? (ratio > 1 = yes)",
                                  note=" ".join(f"{k}: {v}." for k, v in verdict_text.items() if v)))
    cmp_path = Path(inputs["comparison"])
    cmp = pd.read_csv(cmp_path) if cmp_path.stat().st_size > 1 else pd.DataFrame()
    cmp_note = None if len(cmp) else (
        "Empty: no checkpoint measured here is one of the paper's published checkpoints, so there is nothing to compare "
        "component by component. Measure one of the paper's checkpoints and name its published result with "
        "published_name in its config entry to fill this table.")
    tables.append(write_table(cmp, tab_dir, "measured_vs_published", "Measured vs published, per component (tolerance: one bf16 step)",
                              note=cmp_note))

    warnings = []
    for r in measured_rows:
        t = r["truncation"]
        if t.get("samples"):
            warnings.append(f"{r['checkpoint']}: {t['samples']} sample(s) longer than max_seq_len {t.get('max_seq_len')} were cut "
                            f"to it ({t['tokens_dropped']:,} tokens dropped; e.g. {', '.join(t.get('sample_ids', [])[:3])}).")
    for k, v in verdicts.items():
        note = (v.get("bootstrap_sizes") or {}).get("note")
        if note:
            warnings.append(f"{k}: bootstrap subsets: {note} (requested {v['bootstrap_sizes']['requested']}, used "
                            f"{v['bootstrap_sizes']['used']}).")
    for s in stats:
        i8 = read_json(int8_paths[s["checkpoint"]]) if s["checkpoint"] in int8_paths else {}
        sp = i8.get("split") or {}
        if sp and (sp["n_calib"] < sp["n_calib_requested"] or sp["n_eval"] < sp["n_eval_requested"]):
            warnings.append(f"{s['checkpoint']}: INT-8 check on {sp['n_calib']} calibration and {sp['n_eval']} evaluation "
                            f"samples (asked {sp['n_calib_requested']} and {sp['n_eval_requested']}; the corpus has "
                            f"{sp['n_available']}).")
        tr = i8.get("truncation") or {}
        if tr.get("samples"):
            warnings.append(f"{s['checkpoint']}: INT-8 check: {tr['samples']} sample(s) cut to int8.max_tokens {tr['max_tokens']} "
                            f"({tr['tokens_dropped']:,} tokens dropped).")
        if i8.get("undefined"):
            warnings.append(f"{s['checkpoint']}: INT-8 check ({i8.get('definition')} definition): {i8['undefined']}.")
        for pol, m in (i8.get("policies") or {}).items():
            if m.get("undefined"):
                warnings.append(f"{s['checkpoint']}: INT-8 policy {pol} ({i8.get('definition')} definition): {m['undefined']}.")
    nonfinite = [{"checkpoint": s["checkpoint"], "component": k, **v} for s in stats for k, v in (s.get("nonfinite") or {}).items()]
    remote = [s["checkpoint"] for s in stats if s["provenance"].get("trust_remote_code")]
    corpus = read_json(inputs["corpus_manifest"])
    n_pub = int((gt["source"] == "published").sum())
    for s in stats:
        s["settings_kv"] = _kv(s["provenance"].get("settings"))
        s["libraries_kv"] = _kv((s["provenance"].get("environment") or {}).get("libraries"))
        s["revision_text"] = revision_text(s["provenance"])
        m = calibration.get(s["checkpoint"]) or {}
        s["cal"] = {k: m.get(k) or default for k, default in (("uncovered", []), ("filled", {}), ("not_recorded", {}))} if m else None
    render_report(
        inputs["template"], outputs["report"],
        {
            "study": study, "n_measured": len(stats), "n_published": n_pub, "measured": stats,
            "measured_rows": measured_rows, "measured_sentence": measured_sentence, "warnings": warnings,
            "figures": figures, "tables": tables, "claims_html": _md_to_html(claims_markdown(claims)),
            "claims_path": str(claims_copy), "nonfinite": nonfinite, "remote_code": remote, "corpus": corpus,
            "tokenization_policy": _policy_text(stats) if stats else "n/a",
            "published_note": (f"{n_pub} per-checkpoint result files published with the paper (public repository clx1415926/Max_act_llm, folder results/), "
                               "read by the same reader as the measured ones. No per-sample figures were published, so bootstrap "
                               "statistics cannot be recomputed for them.") if n_pub else "Published results are not included in this study.",
        },
    )
    if outputs.get("bundle"):  # what `snakemake --report` embeds: the same folder, links and all
        bundle = Path(outputs["bundle"])
        shutil.rmtree(bundle, ignore_errors=True)
        link_or_copy(outputs["report"], bundle / Path(outputs["report"]).name)
        for d in (fig_dir, tab_dir, card_dir, files_dir):
            mirror_tree(d, bundle / d.relative_to(report_dir))


def _ids(ids: list, shown: int = 12) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _as_list(x):
    return [x] if isinstance(x, str) else list(x)


def _md_to_html(md: str) -> str:
    """The claims' Markdown (headings, pipe tables, lists, paragraphs) as HTML, by markdown-it-py (CommonMark
    plus GFM tables; raw HTML in the text is escaped)."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return html.replace("<table>", "<div class='scroll'><table class='table'>").replace("</table>", "</table></div>")

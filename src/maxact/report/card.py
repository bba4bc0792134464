"""Activation cards: the paper's recommendation that releases report their maximum activations.

A card (Markdown for a model card, plus JSON) gives M and where it sits, the split between the
residual stream, attention and MLP, the INT-8 verdict per policy, and the corpus/settings used.
"""

from __future__ import annotations

import os
from pathlib import Path

from maxact.errors import InputError
from maxact.io import atomic_write_text, read_json, write_json
from maxact.outdir import register_derived
from maxact.points import parse_component

# SQNR verdicts for INT-8 of the peak-layer hidden state (dB).
VERDICTS = ((20.0, "fine"), (10.0, "degraded"), (float("-inf"), "unusable"))
# Card wording for the component kinds of maxact.points.parse_component.
CARD_NAMES = {"attn": "attention", "hidden": "residual"}


def _kind(comp: str) -> str:
    kind = parse_component(comp)[0]
    return CARD_NAMES.get(kind, kind)


def revision_text(prov: dict) -> str:
    """What version of the weights was measured, in words: a hub revision (and the commit it resolved to), a GGUF
    file and its sha256, a local folder, or a seeded random initialisation; never ``None``."""
    if prov.get("source") == "random":
        return "random initialisation (seeded), not trained weights"
    if prov.get("gguf"):
        g = prov["gguf"]
        return f"GGUF file {g.get('file')} ({g.get('quant_type')}), sha256 {str(g.get('sha256'))[:16]}…"
    if prov.get("source") == "local":
        return "a local folder (no hub revision)"
    rev = prov.get("revision") or "main"
    return f"{rev} (commit {prov['resolved_revision']})" if prov.get("resolved_revision") else rev


def weights_text(prov: dict) -> str:
    """How the weights were held when measured, e.g. 'GGUF Q4_K_M dequantized to float32'."""
    dtype = (prov.get("settings") or {}).get("dtype")
    if prov.get("source") == "random":
        return f"random init, not trained ({dtype})"
    if prov.get("gguf"):
        return f"GGUF {prov['gguf'].get('quant_type')} weights dequantized to float32, measured in {dtype}"
    return f"{prov.get('source') or 'checkpoint'} weights, measured in {dtype}"


def verdict(sqnr_db: float | None) -> str:
    if sqnr_db is None:
        return "n/a"
    return next(v for t, v in VERDICTS if sqnr_db >= t)


def corpus_verdict(doc: dict | None) -> str:
    """One line: is the corpus enough? From an extremes document (the median maximum over the largest size asked,
    with its 90% interval, against the measured maximum)."""
    if not doc:
        return "no extreme-value estimate"
    if doc.get("status") == "not_fitted":
        return f"not estimated: {doc.get('reason')}"
    rls = doc.get("return_levels") or []
    if not rls:
        return "no extreme-value estimate"
    r, obs = rls[-1], doc["observed_max"]
    caveat = " (values repeat exactly: see the warning)" if doc.get("warnings") else ""
    n = f"{r['n_samples']:,}"
    lo = "open" if r.get("lower") is None else f"{r['lower']:.4g}"
    hi = "open" if r.get("upper") is None else f"{r['upper']:.4g}"
    est = f"{r['estimate']:.4g} (90% interval {lo} to {hi}; measured {obs:.4g})"
    if r.get("upper") is None:
        return f"not enough: the tail is not bounded by the data; {n} samples: median max {est}{caveat}"
    up = r["upper"] / obs - 1
    if up <= 0.05:
        return (f"enough: {n} samples would raise the maximum by at most {100 * up:+.1f}% at the 90% upper bound; "
                f"median max {est}{caveat}")
    return f"not enough: {n} samples would likely find more; median max {est}, up to {100 * up:+.0f}%{caveat}"


def build_card(result: dict, int8: dict | None, calibration: dict | None = None, extremes: dict | None = None,
               quant_eval: dict | None = None) -> dict:
    """The card's facts; ``calibration``: the checkpoint's calibration manifest with its folder (``dir``);
    ``extremes``: the checkpoint's extreme-value estimate (the extremes rule's document); ``quant_eval``: what each
    quantized format does to it (the quant_eval rule's document)."""
    split: dict[str, dict] = {}
    for comp, st in result["per_layer_stats"].items():
        if st.get("max") is None:
            continue
        k = _kind(comp)
        m = max(abs(st["max"]), abs(st["min"]))
        if m > split.get(k, {}).get("max_abs", -1):
            split[k] = {"max_abs": m, "component": comp}
    prov = result.get("provenance", {})
    card = {
        "checkpoint": result.get("checkpoint"),
        "model_id": prov.get("model_id") or result.get("model_name"),
        "revision": revision_text(prov),
        "weights": weights_text(prov),
        "M": abs(result["global_max_activation"]),
        "M_signed": result["global_max_activation"],
        "location": result["global_max_location"],
        "peak": result.get("peak"),
        "split": split,
        # the verdict reads the SQNR itself (the paper's summary writes an error-free result's infinite SQNR as 0 dB)
        "int8": {p: {"sqnr_db": v.get("mean_sqnr_db"), "clip_rate": v.get("mean_clip_rate"),
                     "verdict": verdict(v.get("sqnr_db", v.get("mean_sqnr_db")))}
                 for p, v in ((int8 or {}).get("policies") or {}).items()},
        "corpus_sha256": prov.get("corpus_sha256"),
        "num_samples": result.get("num_samples"),
        "num_tokens": result.get("num_tokens"),
        "tokenization": prov.get("tokenization"),
        "settings": prov.get("settings"),
        "weights_note": prov.get("weights_note"),
        "libraries": (prov.get("environment") or {}).get("libraries"),
    }
    if extremes is not None:
        card["extremes"] = {"verdict": corpus_verdict(extremes), "status": extremes.get("status", "fitted"),
                            "observed_max": extremes.get("observed_max"), "n_samples": extremes.get("n_samples"),
                            "headroom": extremes.get("headroom") or [],
                            "return_levels": extremes.get("return_levels") or [],
                            "structural_share": extremes.get("structural_share"), "method": extremes.get("method")}
    if quant_eval is not None:
        card["quant_eval"] = quant_eval_rows(quant_eval)
    if calibration is not None:
        card["calibration"] = {"dir": calibration.get("dir"), "files": calibration.get("files", []),
                               "uncovered": calibration.get("uncovered", []), "filled": calibration.get("filled", {}),
                               "fill_policy": calibration.get("fill_policy"), "not_recorded": calibration.get("not_recorded", {})}
    return card


QUANT_LABELS = {"unquantized": "unquantized (control)", "fp8_static": "FP8 static (maxact's input_scale)",
                "int8_static": "INT8 static per-tensor (maxact's input_scale)", "int8_dynamic": "INT8 dynamic per-token (W8A8)",
                "fp8_dynamic": "FP8 dynamic per-token", "smoothquant_w8a8": "SmoothQuant (maxact's act_scales) + W8A8"}


def quant_eval_rows(doc: dict) -> dict:
    """The card's and the report's view of a quant_eval document: one row per format, the verdict line and the
    held-out samples."""
    rows = []
    for f, e in (doc.get("formats") or {}).items():
        w = (e.get("worst_modules") or [{}])[0]
        clip = e.get("clip") or {}
        rows.append({"format": QUANT_LABELS.get(f, f), "status": e.get("status"),
                     "delta_nll": e.get("delta_nll_per_token"), "logits_rel_l2": e.get("logits_rel_l2"),
                     "final_hidden_rel_l2": e.get("final_hidden_rel_l2"), "top1": e.get("top1_agreement"),
                     "clip_rate": clip.get("token_rate") if clip else None, "worst_module": w.get("module"),
                     "worst_module_error": w.get("token_rel_l2"),
                     "verdict": e.get("verdict") or ("control" if f == "unquantized" else e.get("status")),
                     "reason": e.get("reason")})
    h = doc.get("heldout") or {}
    return {"rows": rows, "verdict_line": doc.get("verdict_line"), "samples": len(h.get("sample_ids") or []),
            "tokens": h.get("tokens"), "max_tokens": h.get("max_tokens"), "reference_nll": doc.get("reference_nll_per_token"),
            "llama_cpp": doc.get("llama_cpp")}


def _f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def card_markdown(card: dict) -> str:
    p = card.get("peak") or {}
    lines = [
        f"## Activation card: {card['checkpoint']}",
        "",
        f"- **Maximum activation M = {card['M']:.6g}** (signed {card['M_signed']:.6g}) at `{card['location']}`",
        f"- Peak: sample `{p.get('sample_id')}`, token position {p.get('position')}, token id {p.get('token_id')} ({p.get('token')!r}), channel {p.get('channel')}",
        f"- Model: `{card['model_id']}`, {card['revision']}" + (f"; {card['weights_note']}" if card.get("weights_note") else ""),
        f"- Corpus: {card['num_samples']} samples, {card['num_tokens']} tokens, sha256 `{card['corpus_sha256']}`",
        f"- Tokenization: {(card.get('tokenization') or {}).get('policy')}, max_seq_len {(card.get('tokenization') or {}).get('max_seq_len')}",
        "",
        "| where | max abs | component |",
        "|---|---|---|",
    ]
    for k in ("embedding", "residual", "attention", "mlp", "mlp_gate", "moe_gate", "router_logits", "final_norm"):
        if k in card["split"]:
            lines.append(f"| {k} | {card['split'][k]['max_abs']:.6g} | `{card['split'][k]['component']}` |")
    if card["int8"]:
        lines += ["", "| INT-8 policy | SQNR (dB) | clip rate | verdict |", "|---|---|---|---|"]
        for pol, v in card["int8"].items():
            sq = "n/a" if v["sqnr_db"] is None else f"{v['sqnr_db']:.2f}"
            cr = "n/a" if v["clip_rate"] is None else f"{v['clip_rate']:.2e}"
            lines.append(f"| {pol} | {sq} | {cr} | {v['verdict']} |")
    ex = card.get("extremes")
    if ex:
        lines += ["", f"**Is the corpus enough?** {ex['verdict']}"]
        if ex.get("headroom"):
            lines += ["", f"Headroom a static scale needs over the measured max {ex['observed_max']:.6g} "
                          f"({ex['n_samples']} samples) for N samples of traffic (median of the maximum over N; 90% upper bound):",
                      "", "| N samples | median max / measured | 90% upper / measured |", "|---|---|---|"]
            for h in ex["headroom"]:
                up = "open" if h["upper_ratio"] is None else f"{h['upper_ratio']:.3f}x"
                lines.append(f"| {h['n_samples']:,} | {h['estimate_ratio']:.3f}x | {up} |")
    qe = card.get("quant_eval")
    if qe:
        lines += ["", f"**Quantized formats** (end to end against the unquantized model on {qe['samples']} held-out corpus samples, "
                      f"{qe['tokens']:,} tokens, none of them in the calibration): {qe['verdict_line']}", "",
                  "| format | ΔNLL/token | logits rel L2 | top-1 agreement | clip rate (tokens) | verdict |", "|---|---|---|---|---|---|"]
        for r in qe["rows"]:
            if r["status"] != "measured":
                lines.append(f"| {r['format']} | - | - | - | - | {r['status'].replace('_', ' ')}: {r['reason']} |")
                continue
            lines.append(f"| {r['format']} | {_f(r['delta_nll'], '+.4f')} | {_f(r['logits_rel_l2'], '.4f')} | {_f(r['top1'], '.3f')} | "
                         f"{_f(r['clip_rate'], '.2e') if r['clip_rate'] is not None else '-'} | {r['verdict']} |")
        lc = qe.get("llama_cpp") or {}
        if lc.get("status") == "measured":
            lines += ["", f"llama.cpp (llama-perplexity, ctx {lc['ctx']}, same held-out text; F32 base PPL {lc['base']['ppl']:.4g}):", "",
                      "| type | ΔNLL/token with maxact's imatrix | without | PPL with | PPL without |", "|---|---|---|---|---|"]
            for t, row in lc["types"].items():
                w, wo = row.get("with_imatrix") or {}, row.get("without_imatrix") or {}
                lines.append(f"| {t} | {_f(w.get('delta_nll_per_token'), '+.4f')} | {_f(wo.get('delta_nll_per_token'), '+.4f') if wo.get('status') == 'measured' else wo.get('status', 'n/a')} | "
                             f"{_f(w.get('ppl'), '.4g')} | {_f(wo.get('ppl'), '.4g')} |")
        elif lc:
            lines += ["", f"llama.cpp part: {lc.get('status')} ({lc.get('reason')})"]
    cal = card.get("calibration")
    if cal:
        base = cal.get("dir") or "."
        lines += ["", "Calibration files: " + (", ".join(f"[{f}]({base}/{f})" for f in cal["files"]) or "none")]
        if cal["uncovered"]:
            lines.append(f"- No calibration token reached {len(cal['uncovered'])} module(s)/expert(s); left out of every file: "
                         + ", ".join(f"`{u}`" for u in cal["uncovered"]))
        else:
            lines.append("- Every linear layer and expert got calibration tokens.")
        if cal["filled"]:
            lines.append(f"- Filled ({cal['fill_policy']}): " + ", ".join(f"`{k}`" for k in cal["filled"]))
        for k, why in (cal.get("not_recorded") or {}).items():
            lines.append(f"- Not recorded: `{k}` ({why})")
    lines += ["", "Measured with maxact (symmetric INT-8 of the peak-layer hidden state; verdict: >= 20 dB fine, >= 10 dB degraded, else unusable)."]
    return "\n".join(lines) + "\n"


def write_card(result_dir, out_dir=None) -> list[str]:
    result_dir = Path(result_dir)
    stats_path = result_dir / "activation_stats.json"
    if not stats_path.exists():
        raise InputError(f"{stats_path} not found: point `maxact card` at a measure output folder")
    result = read_json(stats_path)
    int8 = None
    for cand in (result_dir / "int8_check.json", result_dir.parent.parent / "int8" / result_dir.name / "int8_check.json"):
        if cand.exists():
            int8 = read_json(cand)
            break
    out = Path(out_dir) if out_dir else result_dir
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    manifest = None
    for cand in (result_dir / "calibration.json", result_dir.parent.parent / "calibration" / result_dir.name / "calibration.json"):
        if cand.exists():  # links relative to the card's own folder, so they work wherever the pair is moved
            manifest = {**read_json(cand), "dir": Path(os.path.relpath(cand.parent.resolve(), out.resolve())).as_posix()}
            break
    extremes = None
    cand = result_dir.parent.parent / "extremes" / result_dir.name / "extremes.json"
    if cand.exists():
        extremes = read_json(cand)
    quant = None
    for cand in (result_dir / "quant_eval.json", result_dir.parent.parent / "quant_eval" / result_dir.name / "quant_eval.json"):
        if cand.exists():
            quant = read_json(cand)
            break
    card = build_card(result, int8, manifest, extremes, quant)
    name = card["checkpoint"] or result_dir.name
    md, js = out / f"{name}.activation_card.md", out / f"{name}.activation_card.json"
    atomic_write_text(md, card_markdown(card))
    write_json(js, card)
    if out.resolve() == result_dir.resolve():  # derived from these results: replaced results take it with them
        register_derived(out, [md.name, js.name])
    return [str(md), str(js)]

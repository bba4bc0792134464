"""Stage ``quant_eval``: what each quantized format does to one checkpoint, end to end, through its consumer's code.

The checkpoint's calibration files (the ``calibration`` rule's) are applied by compressed-tensors and
llm-compressor (:mod:`maxact.quant.formats`) and each format is scored against the unquantized model on
held-out corpus samples (:mod:`maxact.quant.evaluate`): samples of the study's corpus source that the
measurement, and therefore the calibration, never saw (by id), tokenized like the study (no special tokens),
cut to ``max_tokens`` (counted). Where llama.cpp's tools are built, ``llama-quantize`` with and without maxact's
imatrix and ``llama-perplexity`` on the same held-out text are added (:mod:`maxact.quant.llama_cpp`).

The verdict per format: safe (ΔNLL per token at most ``safe_delta_nll``), breaks (at least ``breaks_delta_nll``),
degrades in between; a format that breaks names the layer with the largest local error and the max |x| of its
input.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd

from maxact import provenance
from maxact.corpus.materialize import heldout_records
from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint, truncation_summary
from maxact.errors import InputError
from maxact.measurement.settings import MeasureSettings
from maxact.models.checkpoints import load_tokenizer
from maxact.models.kernels_used import kernels_used
from maxact.quant.evaluate import evaluate
from maxact.quant.formats import EXPORT_OF, FORMATS, LABELS, STATIC, read_amax, read_scale_names, short_module, smoothquant_available
from maxact.stages.loading import load

log = logging.getLogger(__name__)

__all__ = ["quant_eval_checkpoint", "verdict", "short_module", "DEFAULTS"]

DEFAULTS = {"formats": list(FORMATS), "n_samples": 8, "max_tokens": 256, "seed": 0, "smoothquant_alpha": 0.5,
            "safe_delta_nll": 0.05, "breaks_delta_nll": 0.5}


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def verdict(entry: dict, safe: float, breaks: float) -> dict:
    """{level: safe|degrades|breaks|not covered, text} of one format's result."""
    label = LABELS.get(entry["format"], entry["format"])
    if entry.get("status") != "measured":
        level = "not covered" if entry.get("status") == "not_covered" else "not run"
        return {"level": level, "text": f"{label}: {level} ({entry.get('reason')})"}
    d = entry["delta_nll_per_token"]
    if not math.isfinite(d):
        return {"level": "not finite", "text": f"{label}: not finite (ΔNLL {d}): the quantized forward overflowed or gave NaN"}
    level = "safe" if d <= safe else "breaks" if d >= breaks else "degrades"
    text = f"{label}: {level}" + ("" if level == "safe" else f" (ΔNLL {d:+.3g})")
    if level != "safe" and entry.get("worst_modules"):
        w = entry["worst_modules"][0]
        x = w.get("calibrated_max_abs") if entry["format"] in STATIC else w.get("heldout_max_abs")
        if x is not None:
            text += f", caused by `{short_module(w['module'])}` inputs up to {_num(x)}"
    return {"level": level, "text": text}


def quant_eval_checkpoint(prepared: dict, calib_dir: Path, result: dict, measured_ids, corpus_cfg: dict, resources_dir,
                          qcfg: dict | None = None, settings: MeasureSettings | dict | None = None,
                          add_special_tokens: bool = False, llama_cpp: dict | None = None,
                          heldout: list[dict] | None = None, strict: bool = True) -> dict:
    """The stage's document for one checkpoint (see the module docstring). ``heldout``: the held-out records
    themselves (``maxact quant-eval --texts``) instead of a draw from the corpus; none may be a measured sample.
    ``strict``: a format whose calibration file is missing is an error; otherwise it is listed as unavailable."""
    q = {**DEFAULTS, **{k: v for k, v in (qcfg or {}).items() if v is not None}}
    formats = list(q["formats"])
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"quant_eval.formats has unknown format(s) {unknown}; known: {', '.join(FORMATS)}")
    if not 0 <= float(q["smoothquant_alpha"]) <= 1:
        raise InputError(f"quant_eval.smoothquant_alpha must be within [0, 1] (got {q['smoothquant_alpha']})")
    if not 0 <= float(q["safe_delta_nll"]) < float(q["breaks_delta_nll"]):
        raise InputError("quant_eval.safe_delta_nll must be at least 0 and below quant_eval.breaks_delta_nll "
                         f"(got {q['safe_delta_nll']} and {q['breaks_delta_nll']})")
    calib_dir = Path(calib_dir)
    unavailable = {}
    for f in formats:
        file = FORMATS[f][1]
        if file and not (calib_dir / file).is_file():
            why = (f"reads {calib_dir / file}, which is missing: add {EXPORT_OF[file]} to measure.exports (and rerun the "
                   "calibration), or drop the format from quant_eval.formats")
            if strict:
                raise InputError(f"quant_eval format {f} {why}")
            unavailable[f] = why
            log.warning("%s: quant_eval: %s not run: it %s", prepared["name"], f, why)
    if "smoothquant_w8a8" in formats and "smoothquant_w8a8" not in unavailable and (why := smoothquant_available()):
        if strict:
            raise InputError(f"quant_eval format smoothquant_w8a8: {why}")
        unavailable["smoothquant_w8a8"] = why
        log.warning("%s: quant_eval: smoothquant_w8a8 not run: %s", prepared["name"], why)
    formats = [f for f in formats if f not in unavailable]
    # The modules quantized: the ones maxact calibrated (every input-scale file names the same set).
    names_file = next((calib_dir / FORMATS[f][1] for f in STATIC if (calib_dir / FORMATS[f][1]).is_file()),
                      calib_dir / "input_scales_int8.safetensors")
    if not names_file.is_file():
        raise InputError(f"{names_file} is missing: quant_eval quantizes the linear layers maxact calibrated, listed by "
                         "the input_scales export; add input_scales to measure.exports")
    module_names = read_scale_names(names_file)
    cal_max = max(read_amax(names_file).items(), key=lambda kv: kv[1])  # what a per-tensor static scale is made from

    t0 = time.perf_counter()
    tok = load_tokenizer(prepared)
    if heldout is not None:
        seen = {str(i) for i in measured_ids}
        clash = [str(r["id"]) for r in heldout if str(r["id"]) in seen]
        if clash:
            raise InputError(f"held-out texts include measured (calibration) samples by id: {clash[:5]}; give texts the "
                             "measurement did not see")
        records, pool = list(heldout), {"source": "given texts", "pool": len(heldout), "excluded": len(seen), "drawn_from_extended": 0}
    else:
        records, pool = heldout_records(corpus_cfg, resources_dir, measured_ids, int(q["n_samples"]), int(q["seed"]))
        if pool.get("measured_ids_in_source", 1) == 0:
            log.warning("%s: quant_eval: none of the %d measured sample ids is an id of the corpus source %r, so held-out "
                        "samples are excluded by id only and a measured text that is also in the corpus could be drawn; "
                        "give the held-out texts with --texts", prepared["name"], len(set(map(str, measured_ids))), pool["source"])
    df = tokenize_records(records, tok, int(q["max_tokens"]), add_special_tokens)
    trunc = truncation_summary(df, int(q["max_tokens"]))
    if trunc["samples"]:
        log.warning("%s: quant_eval: %d held-out sample(s) cut to quant_eval.max_tokens %d (%d tokens dropped)",
                    prepared["name"], trunc["samples"], int(q["max_tokens"]), trunc.get("tokens_dropped", 0))
    samples = [list(map(int, x)) for x in df["input_ids"]]
    s = MeasureSettings.of(settings)
    loaded = load(prepared, s)  # the measurement's dtype checks too (float16 refused where the family overflows it)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    ev = evaluate(loaded.model, samples, formats, module_names, calib_dir, alpha=float(q["smoothquant_alpha"]))
    t_eval = time.perf_counter() - t1
    for f, why in unavailable.items():
        ev["formats"][f] = {"format": f, "description": FORMATS[f][0], "status": "unavailable", "reason": why}
    fused = [n for n, p in loaded.model.named_parameters() if p.dim() == 3 and n.rsplit(".", 1)[-1] in ("gate_up_proj", "down_proj")]
    not_quantized = (f"{len(fused)} fused MoE expert weights are not nn.Linear layers and stay in "
                     f"{str(loaded.dtype).replace('torch.', '')}: only the {len(module_names)} calibrated linear layers are quantized"
                     if fused else None)
    verdicts = {f: verdict(e, float(q["safe_delta_nll"]), float(q["breaks_delta_nll"])) for f, e in ev["formats"].items()
                if f != "unquantized"}
    for f, e in ev["formats"].items():
        if f in verdicts:
            e["verdict"] = verdicts[f]["level"]
    doc = {
        "checkpoint": prepared["name"],
        "model_name": result.get("model_name"),
        "global_max_activation": result.get("global_max_activation"),
        "global_max_location": result.get("global_max_location"),
        "largest_linear_input": {"module": cal_max[0], "max_abs": cal_max[1]},
        **ev,
        "verdict_line": "; ".join(v["text"] for v in verdicts.values()) + (f" ({not_quantized})" if not_quantized else ""),
        "not_quantized": not_quantized,
        "heldout": {"sample_ids": [str(x) for x in df["sample_id"]],
                    "categories": {str(k): int(v) for k, v in pd.Series(df["category"]).fillna("none").value_counts().sort_index().items()},
                    "tokens": int(df["n_tokens"].sum()), "max_tokens": int(q["max_tokens"]), "truncation": trunc,
                    "add_special_tokens": add_special_tokens, **pool,
                    "note": "corpus samples not measured (so not in the calibration), by id"},
        "calibration": {"folder": str(calib_dir), "files": sorted({FORMATS[f][1] for f in formats if FORMATS[f][1]}),
                        "modules": len(module_names)},
        "seconds": {"load": round(t_load, 3), "evaluate": round(t_eval, 3)},
        "settings": {k: q[k] for k in DEFAULTS},
        "provenance": {
            "model_id": prepared.get("model_id"), "revision": prepared.get("revision"), "source": prepared.get("source"),
            "weights_note": prepared.get("weights_note"), "gguf": prepared.get("gguf"), "random_seed": prepared.get("random_seed"),
            "tokenizer_sha256": tokenizer_fingerprint(tok),
            # the scales' content (the files' metadata holds run facts such as times, which differ run to run)
            "calibration_scales_sha256": {f: _scales_digest(calib_dir / f)
                                          for f in sorted({FORMATS[x][1] for x in formats if FORMATS[x][1]}) if (calib_dir / f).is_file()},
            "resolved_revision": (result.get("provenance") or {}).get("resolved_revision"),
            "corpus_sha256": (result.get("provenance") or {}).get("corpus_sha256"),
            "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
            "kernels": kernels_used(loaded.model),
            "libraries": {**provenance.library_versions(), **_quant_libraries()},
            "environment": provenance.environment(), "timestamp": provenance.timestamp(),
        },
    }
    if llama_cpp is not None:
        from maxact.quant.llama_cpp import llama_cpp_eval

        # the same text the PyTorch formats were scored on: each held-out sample as cut to max_tokens
        doc["llama_cpp"] = llama_cpp_eval(prepared, calib_dir, [tok.decode(x) for x in samples], llama_cpp)
    return doc


def _scales_digest(path: Path) -> str:
    """sha256 over a calibration file's tensors (names, dtypes, shapes and values, in name order)."""
    import hashlib

    import torch

    if path.suffix == ".pt":
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _quant_libraries() -> dict:
    import importlib.metadata as md

    out = {}
    for n in ("compressed-tensors", "llmcompressor"):
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out

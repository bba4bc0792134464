"""Stage ``int8``: the paper's INT-8 sanity check at the checkpoint's peak layer (see maxact.measurement.quant)."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from maxact import points, provenance
from maxact.errors import InputError
from maxact.measurement.quant import DEFINITION_NOTES, DEFINITIONS, run_int8_check, run_int8_check_paper, split_samples
from maxact.measurement.settings import MeasureSettings
from maxact.models.kernels_used import kernels_used
from maxact.models.registry import layer_points, points_module, resolve_backbone
from maxact.stages.loading import load

log = logging.getLogger(__name__)


def int8_checkpoint(prepared: dict, tokens: pd.DataFrame, result: dict, settings: MeasureSettings | dict | None = None,
                    n_calib: int = 128, n_eval: int = 256, max_tokens: int = 4096, seed: int = 0,
                    definition: str = "paper") -> dict:
    """The paper's INT-8 check on the hidden state at the checkpoint's peak layer, in the paper's definitions or the
    exact ones (see maxact.measurement.quant)."""
    if definition not in DEFINITIONS:
        raise InputError(f"int8.definition must be one of {', '.join(DEFINITIONS)} (got {definition!r})")
    s = MeasureSettings.of(settings)
    peak = (result.get("peak") or {}).get("component") or (result.get("global_max_location") or "").split(" ")[0] or None
    full = [list(map(int, x)) for x in tokens["input_ids"]]
    samples = [x[:max_tokens] for x in full]
    ids = list(tokens["sample_id"]) if "sample_id" in tokens else list(range(len(samples)))
    calib, evals = split_samples(len(samples), n_calib, n_eval, seed)
    # Nothing changed silently: samples cut to max_tokens and a split smaller than asked are recorded (and logged).
    used = set(calib) | set(evals)
    cut = [i for i in sorted(used) if len(full[i]) > max_tokens]
    truncation = {"samples": len(cut), "tokens_dropped": sum(len(full[i]) - max_tokens for i in cut), "max_tokens": max_tokens}
    split = {"n_calib_requested": n_calib, "n_eval_requested": n_eval, "n_calib": len(calib), "n_eval": len(evals),
             "n_available": len(samples), "seed": seed, "calibration_ids": [str(ids[i]) for i in calib],
             "evaluation_ids": [str(ids[i]) for i in evals]}
    if len(calib) < n_calib or len(evals) < n_eval:
        log.warning("%s: INT-8 check on %d calibration and %d evaluation samples (asked %d and %d; the corpus has %d: at "
                    "most a third calibrates)", prepared["name"], len(calib), len(evals), n_calib, n_eval, len(samples))
    if cut:
        log.warning("%s: INT-8 check: %d sample(s) cut to int8.max_tokens %d (%d tokens dropped)", prepared["name"],
                    len(cut), max_tokens, truncation["tokens_dropped"])
    common = dict(checkpoint=prepared["name"], model_name=result.get("model_name"), definition=definition,
                  definition_note=DEFINITION_NOTES[definition], peak_component=peak,
                  reference_global_max_abs=abs(result["global_max_activation"]) if result.get("global_max_activation") is not None else None,
                  max_tokens=max_tokens, seed=seed, split=split, truncation=truncation)
    kind = points.parse_component(peak)[0] if peak else None
    if definition == "paper" and kind not in ("hidden", "final_norm"):
        # The paper's collectors keep only layer_i_hidden and final_layernorm: a peak elsewhere gives it no metrics.
        why = (f"the peak is at {peak}, and the paper's check records only layer_i_hidden and final_layernorm, so its "
               "definition gives no metrics here (int8.definition: exact measures the residual stream of that layer)")
        log.warning("%s: INT-8 check (paper): %s", prepared["name"], why)
        return {**common, "point": None, "policies": {}, "undefined": why,
                "provenance": {"model_id": prepared.get("model_id"), "corpus_sha256": result.get("provenance", {}).get("corpus_sha256"),
                               "environment": provenance.environment(), "timestamp": provenance.timestamp()}}

    loaded = load(prepared, s, check=False)
    model, fam, device, dtype = loaded.model, loaded.family, loaded.device, loaded.dtype
    backbone = resolve_backbone(model, fam)
    layers = layer_points(backbone, fam)
    # The residual stream at the peak: its layer's output, the final norm's, or (an embedding peak) layer 0's.
    point = points.residual_point_at(peak, len(layers))
    module = points_module(backbone, fam, layers, point)
    captured: list = []
    h = module.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, (tuple, list)) else o))
    in_dev = backbone.get_input_embeddings().weight.device

    @torch.no_grad()
    def capture(indices):
        for i in indices:  # one sample at a time: no padding to exclude
            captured.clear()
            input_ids = torch.tensor([samples[i]], device=in_dev)
            backbone(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
            yield captured[0][0].float()

    try:
        if definition == "paper":
            out = run_int8_check_paper(capture, calib, evals)
        else:
            hidden = getattr(getattr(model.config, "text_config", None) or model.config, "hidden_size")
            out = run_int8_check(capture, calib, evals, sum(len(samples[i]) for i in calib) * hidden)
    finally:
        h.remove()
    out.update(
        **common,
        point=point,
        provenance={
            "model_id": prepared.get("model_id"),
            "corpus_sha256": result.get("provenance", {}).get("corpus_sha256"),
            "settings": {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n_calib": n_calib, "n_eval": n_eval,
                         "definition": definition},
            "kernels": kernels_used(model),
            "environment": provenance.environment(),
            "timestamp": provenance.timestamp(),
        },
    )
    return out

"""End-to-end error of each quantized format against the unquantized model, on held-out samples.

Per sample (one at a time: no padding to mask), the unquantized model runs first (the reference: logits, final
hidden state = the LM head's input, and how often each calibrated module's input exceeds its calibrated max),
then each format inside :func:`maxact.quant.formats.applied`. Per format:

- ``delta_nll_per_token``: mean next-token NLL of the format minus the reference's, over every predicted token;
- ``logits_rel_l2`` and ``final_hidden_rel_l2``: ||q - ref|| / ||ref|| over all positions (float64 sums);
- ``top1_agreement``: share of positions whose argmax token is the reference's;
- ``clip`` (static formats): the share of held-out input values (and of token rows) above the calibrated max
  |x| the format's scale was made from, per module and overall, with the largest overshoot;
- ``worst_modules``: the quantized linear layers with the largest local error: the layer's quantized output
  against its unquantized output on the same input, ||y_q - y|| / ||y|| per token averaged over tokens
  (``token_rel_l2``: one massive-activation token would dominate a norm over the whole output) and over the
  whole output (``rel_l2``), with the calibrated and the held-out max |x| of their inputs; ``module_errors``
  has both for every layer.

``unquantized`` is the control: the same forward with nothing applied, whose ΔNLL is exactly 0. SmoothQuant is
checked first for function preservation: the smoothed, unquantized model against the reference (logits rel L2
within ``identity_tol``); where it does not hold the format is reported as not covered, its weights restored, and
every weight checked unchanged by fingerprint. Statistics stay on the model's device until the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from maxact.quant.formats import FORMATS, STATIC, QuantEvalError, applied, changed, fingerprint, read_amax

log = logging.getLogger(__name__)

#: Relative L2 of the logits above which smoothing is taken to have changed the unquantized model.
IDENTITY_TOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 2e-2}


class _Sums:
    """Float64 running sums on the device (added with tensor ops; read once at the end)."""

    def __init__(self, device):
        self.device = device
        self.v: dict[str, torch.Tensor] = {}

    def add(self, key: str, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        self.v[key] = self.v[key] + x if key in self.v else x.clone()

    def max(self, key: str, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        self.v[key] = torch.maximum(self.v[key], x) if key in self.v else x.clone()

    def host(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.v.items()}


def _forward(model, ids: torch.Tensor, head) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [T, V] float32, final hidden [T, H] float32) of one sample."""
    got = {}
    h = head.register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0]))
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        h.remove()
    return out.logits[0].float(), got["h"][0].float()


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    if ids.shape[-1] < 2:
        return logits.new_zeros((), dtype=torch.float64)
    return F.cross_entropy(logits[:-1].double(), ids[0, 1:], reduction="sum")


def evaluate(model: torch.nn.Module, samples: list[list[int]], formats: list[str], module_names: list[str],
             calib_dir: Path | None, alpha: float = 0.5, identity_tol: float | None = None, top_modules: int = 5) -> dict:
    """The metrics of every format on ``samples`` (token id lists), the reference's NLL and what was covered."""
    device = model.get_input_embeddings().weight.device
    dtype = next(model.parameters()).dtype
    tol = identity_tol if identity_tol is not None else IDENTITY_TOL.get(dtype, 5e-2)
    head = model.get_output_embeddings()
    if head is None:
        raise QuantEvalError(f"{type(model).__name__} has no output embeddings (LM head): its NLL cannot be computed")
    named = dict(model.named_modules())
    amax = {f: read_amax(Path(calib_dir) / FORMATS[f][1]) for f in formats if f in STATIC}
    before = fingerprint(model)
    ref = _Sums(device)
    sums = {f: _Sums(device) for f in ["unquantized", *formats]}
    status: dict[str, dict] = {f: {"status": "measured"} for f in ["unquantized", *formats]}
    smoothing: dict = {}
    n_pred = n_pos = 0
    # Python floats: compared on whatever device a layer sits (a model split over GPUs)
    thresholds = {f: {n: float(a[n]) for n in module_names if n in a} for f, a in amax.items()}

    for si, sample in enumerate(samples):
        ids = torch.tensor([sample], device=device)
        n_pred += max(len(sample) - 1, 0)
        n_pos += len(sample)
        # The reference, with the clip counts of the static scales and each module's held-out max |x|.
        hooks = []

        def ref_hook(name):
            def hook(m, args):
                x = args[0].detach().abs()
                ref.max(f"inmax:{name}", x.amax())
                for f, th in thresholds.items():
                    if name in th:
                        over = x > th[name]
                        ref.add(f"clip_el:{f}:{name}", over.sum())
                        ref.add(f"clip_tok:{f}:{name}", over.any(-1).sum())
            return hook

        for n in module_names:
            hooks.append(named[n].register_forward_pre_hook(ref_hook(n)))
        try:
            with torch.no_grad():
                r_logits, r_hidden = _forward(model, ids, head)
        finally:
            for h in hooks:
                h.remove()
        r_nll = _nll(r_logits, ids)
        ref.add("nll", r_nll)
        r_top = r_logits.argmax(-1)
        r_l2 = r_logits.double().pow(2).sum()
        r_h2 = r_hidden.double().pow(2).sum()

        def score(f, logits, hidden):
            s = sums[f]
            s.add("nll", _nll(logits, ids))
            s.add("logit_err2", (logits.double() - r_logits.double()).pow(2).sum())
            s.add("logit_ref2", r_l2)
            s.add("hid_err2", (hidden.double() - r_hidden.double()).pow(2).sum())
            s.add("hid_ref2", r_h2)
            s.add("top1", (logits.argmax(-1) == r_top).sum())

        with torch.no_grad():
            logits, hidden = _forward(model, ids, head)
        score("unquantized", logits, hidden)
        del logits, hidden

        for f in formats:
            if status[f]["status"] != "measured":
                continue
            if f == "smoothquant_w8a8":
                # Smoothing alone first: it must leave the unquantized model's function unchanged.
                try:
                    with applied(model, f, module_names, calib_dir, alpha, quantize=False) as ap:
                        with torch.no_grad():
                            s_logits, _ = _forward(model, ids, head)
                        smoothing = ap.smoothing
                except QuantEvalError as e:
                    status[f] = {"status": "not_covered", "reason": str(e)}
                    continue
                sums[f].add("ident_err2", (s_logits.double() - r_logits.double()).pow(2).sum())
                sums[f].add("ident_ref2", r_l2)
                ident = float((s_logits.double() - r_logits.double()).norm() / r_logits.double().norm().clamp_min(1e-300))
                del s_logits
                if ident > tol:
                    status[f] = {"status": "not_covered",
                                 "reason": (f"llm-compressor's SmoothQuant mapping for {smoothing.get('architecture')} changes the "
                                            f"unquantized model: logits rel L2 {ident:.3g} on sample {si} (above {tol:g}); "
                                            "its smoothing is not function-preserving for this family"
                                            + ("" if smoothing.get("smooth_layer_output_scales", True) else
                                               f" ({smoothing.get('smooth_layer_class')} {smoothing.get('smooth_layer_checked')}: "
                                               "dividing its weight by s does not divide its output by s, as a norm that "
                                               "multiplies by 1 + weight does)"))}
                    continue
            local = _Sums(device)

            def q_hook(name, local=local):
                def hook(m, args, out):
                    y = torch.nn.Linear.forward(m, args[0]).double()  # the unquantized layer on the same input
                    y = y.reshape(-1, y.shape[-1])
                    e2 = (out.double().reshape(y.shape) - y).pow(2).sum(-1)
                    r2 = y.pow(2).sum(-1)
                    local.add(f"err2:{name}", e2.sum())
                    local.add(f"ref2:{name}", r2.sum())
                    # per token: one massive-activation token would otherwise dominate the layer's whole-output norm
                    local.add(f"tokrel:{name}", (e2.sqrt() / r2.sqrt().clamp_min(1e-30)).sum())
                return hook

            with applied(model, f, module_names, calib_dir, alpha) as ap:
                hooks = [m.register_forward_hook(q_hook(n)) for n, m in ap.modules.items()]
                try:
                    with torch.no_grad():
                        logits, hidden = _forward(model, ids, head)
                finally:
                    for h in hooks:
                        h.remove()
                if ap.smoothing:
                    smoothing = ap.smoothing
            score(f, logits, hidden)
            for k, v in local.v.items():
                sums[f].add(k, v)
            del logits, hidden

    after = fingerprint(model)
    moved = changed(before, after)
    if moved:  # never expected: applied() undoes everything; a result on a changed model would be wrong
        raise QuantEvalError(f"quantization evaluation left {len(moved)} weight(s) changed ({moved[:3]})")

    r = ref.host()
    out_formats = {}
    for f in ["unquantized", *formats]:
        st = status[f]
        entry = {"format": f, "description": FORMATS[f][0] if f in FORMATS else "nothing applied (control)", **st}
        if f == "smoothquant_w8a8" and smoothing:
            entry["smoothing"] = {k: v for k, v in smoothing.items() if k != "mapping_list"}
        if st["status"] != "measured":
            entry["weights_unchanged"] = True  # checked by fingerprint over every parameter below
            out_formats[f] = entry
            continue
        s = sums[f].host()
        entry.update({
            "nll_per_token": s["nll"] / max(n_pred, 1),
            "delta_nll_per_token": (s["nll"] - r["nll"]) / max(n_pred, 1),
            "logits_rel_l2": (s["logit_err2"] / s["logit_ref2"]) ** 0.5 if s["logit_ref2"] > 0 else 0.0,
            "final_hidden_rel_l2": (s["hid_err2"] / s["hid_ref2"]) ** 0.5 if s["hid_ref2"] > 0 else 0.0,
            "top1_agreement": s["top1"] / max(n_pos, 1),
        })
        if "ident_err2" in s:
            entry["smoothing_identity_logits_rel_l2"] = (s["ident_err2"] / s["ident_ref2"]) ** 0.5
        cal = amax.get(f) or amax.get("int8_static") or amax.get("fp8_static") or {}
        mods = sorted(({"module": n, "token_rel_l2": s[f"tokrel:{n}"] / max(n_pos, 1),
                        "rel_l2": (s[f"err2:{n}"] / s[f"ref2:{n}"]) ** 0.5 if s.get(f"ref2:{n}", 0) > 0 else 0.0,
                        "heldout_max_abs": r.get(f"inmax:{n}"), "calibrated_max_abs": cal.get(n)}
                       for n in module_names if f"err2:{n}" in s), key=lambda d: -d["token_rel_l2"])
        if mods:
            entry["modules_quantized"] = len(mods)
            entry["worst_modules"] = mods[:top_modules]
            entry["module_errors"] = {d["module"]: [round(d["token_rel_l2"], 6), round(d["rel_l2"], 6)] for d in mods}
        if f in thresholds:
            entry["clip"] = _clip(f, r, module_names, amax[f], n_pos, {n: named[n].in_features for n in module_names})
        out_formats[f] = entry
    return {"formats": out_formats, "reference_nll_per_token": r["nll"] / max(n_pred, 1), "tokens": n_pos,
            "predicted_tokens": n_pred, "samples": len(samples), "identity_tol": tol, "dtype": str(dtype).replace("torch.", ""),
            "weights_unchanged_after": True, "modules": len(module_names)}


def _clip(f: str, r: dict, module_names: list[str], amax: dict, n_pos: int, widths: dict) -> dict:
    """How often held-out inputs exceeded the calibrated max |x| of the format's scale file."""
    per = []
    el = tok = 0.0
    for n in module_names:
        e, t = r.get(f"clip_el:{f}:{n}", 0.0), r.get(f"clip_tok:{f}:{n}", 0.0)
        el += e
        tok += t
        if e:
            per.append({"module": n, "values_over": int(e), "tokens_over": int(t), "heldout_max_abs": r.get(f"inmax:{n}"),
                        "calibrated_max_abs": amax.get(n), "ratio": (r.get(f"inmax:{n}") or 0) / amax[n] if amax.get(n) else None})
    per.sort(key=lambda d: -(d["ratio"] or 0))
    rows = n_pos * len(module_names)
    values = n_pos * sum(widths.values())
    return {"token_rows_over": int(tok), "token_rows": rows, "token_rate": tok / rows if rows else 0.0, "values_over": int(el),
            "values": values, "value_rate": el / values if values else 0.0,
            "modules_over": len(per), "modules": len(module_names), "largest_overshoot": per[:5],
            "definition": "a held-out input value above the calibrated max |x| that the file's scale was made from (scale x divisor)"}

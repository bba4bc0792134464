"""Quantized formats applied to a loaded model by their consumers' own code, and undone again.

Every format is a compressed-tensors scheme (``compressed_tensors.quantization``: ``apply_quantization_config``
attaches the scheme, compressed-tensors' own quantized forward fake-quantizes each targeted ``nn.Linear``'s input
and weight on every call). The static formats read maxact's calibration files through
``load_pretrained_quantization_parameters`` (the loader vLLM's compressed-tensors models go through):

- ``fp8_static``: compressed-tensors' ``FP8`` preset: FP8 E4M3 weights per tensor, FP8 inputs per tensor with
  maxact's ``input_scales_fp8.safetensors``;
- ``int8_static``: INT8 weights per output channel (the ``W8A8`` preset's), INT8 inputs per tensor, symmetric,
  with maxact's ``input_scales_int8.safetensors``;
- ``int8_dynamic``: the ``W8A8`` preset: INT8 weights per channel, INT8 inputs per token computed on the fly
  (no file: the reference for what a static scale costs);
- ``fp8_dynamic``: the ``FP8_DYNAMIC`` preset (FP8 weights per channel, FP8 inputs per token);
- ``smoothquant_w8a8``: SmoothQuant smoothing (strength alpha) with maxact's ``act_scales.pt``, then ``W8A8``.

Weight scales are what compressed-tensors' ``calculate_qparams`` gives for each weight's own min/max (a
memoryless min-max observer). Targets are exactly the linear layers maxact calibrated (the modules of its input
scale file): the LM head and any vision tower stay in full precision, as vLLM's recipes leave them.

SmoothQuant. PyPI's ``smoothquant`` (0.0.1.dev0) is an empty placeholder (a three-byte ``__init__.py``, no
``smooth_lm``), not mit-han-lab's code, which is not on the registries. The smoothing here is llm-compressor's
``SmoothQuantModifier`` (vLLM project), its architecture mappings and its ``_apply_smoothing``, fed maxact's
per-channel max |x| as the channel range [-max, +max] in place of its own calibration hooks. Its range is
max - min = 2 max|x| and its weight range 2 max|W|, so the smoothing factors are smooth_lm's times 2^(2 alpha - 1)
(equal at alpha 0.5); per-channel weights and per-token inputs are invariant to that constant either way.
Smoothing must leave the unquantized model's function unchanged; :mod:`maxact.quant.evaluate` checks that on the
held-out samples and reports a family as not covered where it does not hold, with its weights restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from maxact.config import QUANT_FORMAT_EXPORTS
from maxact.errors import InputError

#: name -> (description, calibration file it reads or None, compressed-tensors preset or None, smoothing)
FORMATS = {
    "fp8_static": ("FP8 static per-tensor inputs (maxact's input_scale), FP8 per-tensor weights", "input_scales_fp8.safetensors"),
    "int8_static": ("INT8 static per-tensor inputs (maxact's input_scale), INT8 per-channel weights", "input_scales_int8.safetensors"),
    "int8_dynamic": ("INT8 dynamic per-token inputs, INT8 per-channel weights (W8A8; no file)", None),
    "fp8_dynamic": ("FP8 dynamic per-token inputs, FP8 per-channel weights (FP8_DYNAMIC; no file)", None),
    "smoothquant_w8a8": ("SmoothQuant smoothing with maxact's act_scales.pt, then W8A8 (INT8 per-channel weights, dynamic per-token inputs)",
                         "act_scales.pt"),
}
#: The export of measure.exports that writes each format's file.
EXPORT_OF = {FORMATS[f][1]: e for f, e in QUANT_FORMAT_EXPORTS.items() if e}
STATIC = ("fp8_static", "int8_static")
LABELS = {"unquantized": "unquantized", "fp8_static": "FP8 static", "int8_static": "INT8 static per-tensor",
          "int8_dynamic": "INT8 dynamic per-token", "fp8_dynamic": "FP8 dynamic per-token",
          "smoothquant_w8a8": "SmoothQuant + W8A8"}


def short_module(name: str) -> str:
    """``model.layers.11.mlp.down_proj`` -> ``layer_11 mlp.down_proj`` (the report's spelling)."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return f"layer_{parts[i + 1]} {'.'.join(parts[i + 2:])}"
    return name


class QuantEvalError(InputError):
    pass


def scheme(fmt: str, targets=None):
    """The compressed-tensors QuantizationScheme of a format, on ``targets`` (module names; matched exactly, so a
    subclass of nn.Linear is not missed by a class-name target)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, QuantizationStrategy, QuantizationType
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    if fmt == "fp8_static":
        preset = PRESET_SCHEMES["FP8"]
    elif fmt in ("int8_dynamic", "smoothquant_w8a8"):
        preset = PRESET_SCHEMES["W8A8"]
    elif fmt == "fp8_dynamic":
        preset = PRESET_SCHEMES["FP8_DYNAMIC"]
    elif fmt == "int8_static":
        preset = {"weights": PRESET_SCHEMES["W8A8"]["weights"],
                  "input_activations": QuantizationArgs(num_bits=8, type=QuantizationType.INT, strategy=QuantizationStrategy.TENSOR,
                                                        symmetric=True, dynamic=False)}
    else:
        raise QuantEvalError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return QuantizationScheme(targets=list(targets or ["Linear"]), **{k: v.model_copy(deep=True) for k, v in preset.items()})


def read_scale_names(path: Path) -> list[str]:
    """The module names of a compressed-tensors input-scale file (``<module>.input_scale``)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sorted(k[: -len(".input_scale")] for k in f.keys() if k.endswith(".input_scale"))


def read_amax(path: Path) -> dict[str, float]:
    """Calibrated max |x| per module from an input-scale file: scale x the divisor its metadata records."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        divisor = float((f.metadata() or {}).get("divisor") or "nan")
        if not divisor == divisor:
            raise QuantEvalError(f"{path}: no 'divisor' in its metadata; rewrite it with the calibration rule")
        return {k[: -len(".input_scale")]: float(f.get_tensor(k).float().item()) * divisor for k in f.keys() if k.endswith(".input_scale")}


def _weight_qparams(module: torch.nn.Linear) -> None:
    """The weight scale (and zero point) from the weight's own min/max, by compressed-tensors' calculate_qparams."""
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams

    args = module.quantization_scheme.weights
    w = module.weight.detach()
    if args.strategy == QuantizationStrategy.CHANNEL:
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif args.strategy == QuantizationStrategy.TENSOR:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    else:  # pragma: no cover - the formats above use channel or tensor weights only
        raise QuantEvalError(f"weight strategy {args.strategy} not supported here")
    scale, zp = calculate_qparams(lo, hi, args)
    update_offload_parameter(module, "weight_scale", scale.to(module.weight_scale.dtype))
    if hasattr(module, "weight_zero_point"):
        update_offload_parameter(module, "weight_zero_point", zp.to(module.weight_zero_point.dtype))


_QPARAMS = ("input_scale", "input_zero_point", "weight_scale", "weight_zero_point", "output_scale", "output_zero_point",
            "input_global_scale", "weight_global_scale")


def _remove(module: torch.nn.Module) -> None:
    """Undo apply_quantization_config on one module: its qparams, scheme, status and quantized forward."""
    for p in _QPARAMS:
        if p in module._parameters:
            del module._parameters[p]
    for a in ("quantization_scheme", "quantization_status", "quantization_enabled", "_maxact_2d"):
        module.__dict__.pop(a, None)
    module.__dict__.pop("forward", None)  # set_forward_quantized binds an instance forward


def _scale_folder(file: Path, names: list[str]) -> tempfile.TemporaryDirectory:
    """A folder compressed-tensors' loader reads: an index mapping each ``<module>.input_scale`` to maxact's file."""
    d = tempfile.TemporaryDirectory(prefix="maxact-ct-")
    target = Path(d.name) / file.name
    try:
        os.symlink(file.resolve(), target)
    except OSError:
        import shutil

        shutil.copyfile(file, target)
    index = {"metadata": {"source": str(file)}, "weight_map": {f"{n}.input_scale": file.name for n in names}}
    (Path(d.name) / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def _as_batch(m, args):
    """compressed-tensors' per-token scales reduce the last dimension of a [batch, tokens, features] input only; a
    2-d input (MoE shared experts are called on hidden_states.view(-1, H)) would get one scale for all its rows."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
        m._maxact_2d = True
        return (args[0].unsqueeze(0), *args[1:])
    m._maxact_2d = False
    return None


def _from_batch(m, args, out):
    if m.__dict__.pop("_maxact_2d", False) and isinstance(out, torch.Tensor) and out.dim() == 3:
        return out.squeeze(0)
    return None


@dataclass
class Applied:
    format: str
    modules: dict  # name -> nn.Linear quantized
    smoothing: dict | None = None


@contextlib.contextmanager
def applied(model: torch.nn.Module, fmt: str, module_names: list[str], calib_dir: Path | None = None,
            alpha: float = 0.5, quantize: bool = True):
    """``model`` quantized in ``fmt`` (on ``module_names``) while inside; everything undone on exit (smoothed
    weights restored bit for bit). ``quantize=False``: the format's smoothing only (none for the others)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config
    from compressed_tensors.quantization.lifecycle.apply import load_pretrained_quantization_parameters

    named = dict(model.named_modules())
    missing = [n for n in module_names if n not in named]
    if missing:
        raise QuantEvalError(f"the calibration files name modules this model does not have ({missing[:3]}); they were "
                             "written for another checkpoint: rerun its calibration")
    modules = {n: named[n] for n in module_names}
    smoothing, saved, handles = None, {}, []
    file = FORMATS[fmt][1]
    if file is not None and calib_dir is not None and not (Path(calib_dir) / file).is_file():
        raise QuantEvalError(f"{fmt} reads {Path(calib_dir) / file}, which is missing: add {EXPORT_OF[file]} to measure.exports "
                             f"(or drop {fmt} from quant_eval.formats)")
    try:
        if fmt == "smoothquant_w8a8":
            smoothing, saved = smooth(model, torch.load(Path(calib_dir) / file, map_location="cpu", weights_only=True), alpha)
        if not quantize:
            yield Applied(fmt, {}, smoothing)
            return
        config = QuantizationConfig(config_groups={"group_0": scheme(fmt, list(modules))}, quantization_status=QuantizationStatus.FROZEN,
                                    ignore=[])
        apply_quantization_config(model, config, show_progress=False, allowed_modules=list(modules.values()))
        missed = [n for n, m in modules.items() if getattr(m, "quantization_scheme", None) is None]
        if missed:
            raise QuantEvalError(f"compressed-tensors did not take {len(missed)} calibrated layer(s) ({missed[:3]}): "
                                 "they are not nn.Linear modules it quantizes")
        for m in modules.values():  # a 2-d input [tokens, features] as one batch: per-token scales stay per token
            handles.append(m.register_forward_pre_hook(_as_batch))
            handles.append(m.register_forward_hook(_from_batch))
        for m in modules.values():
            _weight_qparams(m)
        if fmt in STATIC:
            with _scale_folder(Path(calib_dir) / file, list(modules)) as folder:
                load_pretrained_quantization_parameters(model, folder)
        yield Applied(fmt, modules, smoothing)
    finally:
        for h in handles:
            h.remove()
        for m in modules.values():
            _remove(m)
        with torch.no_grad():
            for p, orig in saved.values():
                p.copy_(orig.to(p.device))


def smooth(model: torch.nn.Module, act_scales: dict, alpha: float) -> tuple[dict, dict]:
    """llm-compressor's SmoothQuant smoothing of ``model`` in place with maxact's per-channel max |x| (``act_scales``,
    SmoothQuant's act_scales.pt). Returns (report, {param name: (param, original copy)} of every tensor it
    changed). A family llm-compressor has no mapping for raises QuantEvalError with the reason (nothing changed)."""
    try:
        with _loguru_quiet():
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
            from llmcompressor.modifiers.transform.smoothquant.base import SmoothQuantScale
    except ImportError as e:
        raise InputError(f"smoothquant_w8a8 needs llm-compressor's SmoothQuant ({e}): ./install.sh installs it (pip install "
                         "--no-deps llmcompressor at the version of constraints.txt), or drop smoothquant_w8a8 from "
                         "quant_eval.formats") from None

    mod = SmoothQuantModifier(smoothing_strength=float(alpha))
    mod.ignore = []
    try:
        with _loguru_quiet():
            mod.mappings = mod._infer_mappings_from_model(model)
            mod.resolved_mappings_ = mod._resolve_mappings(model)
    except Exception as e:  # noqa: BLE001 - llm-compressor wraps mapping failures in RuntimeError
        raise QuantEvalError(f"llm-compressor resolves no SmoothQuant mapping for {type(model).__name__}: "
                             f"{e.__cause__ or e}") from None
    if not mod.resolved_mappings_:
        raise QuantEvalError(f"llm-compressor's SmoothQuant mappings match no layer of {type(model).__name__}")
    names = {m: n for n, m in model.named_modules()}
    mod.scales_ = {}
    used, lacking = [], []
    for mp in mod.resolved_mappings_:
        balance = [names[b] for b in mp.balance_layers]
        have = [act_scales[b] for b in balance if b in act_scales]
        if len(have) < len(balance):
            lacking.append(mp.smooth_name)
            continue
        dev = mp.smooth_layer.weight.device
        amax = torch.stack([h.float() for h in have]).amax(0).to(dev)  # the balance layers share one input
        mod.scales_[mp.smooth_name] = SmoothQuantScale(min_channel_vals=-amax, max_channel_vals=amax)
        used.append({"smooth": mp.smooth_name, "balance": balance})
    touched = {}
    params = dict(model.named_parameters())
    pnames = {id(p): n for n, p in params.items()}
    for mp in mod.resolved_mappings_:
        if mp.smooth_name not in mod.scales_:
            continue
        for layer in [mp.smooth_layer, *mp.balance_layers]:
            for attr in ("weight", "bias"):
                p = getattr(layer, attr, None)
                if isinstance(p, torch.nn.Parameter) and id(p) in pnames:
                    touched[pnames[id(p)]] = (p, p.detach().clone())
    # Does the smoothed layer's output scale with its weight (y / s)? Not for a norm that multiplies by 1 + weight.
    # Probed on a float32 copy of the layer (bf16 output rounding would blur the ratio).
    import copy

    probe_map = next(mp for mp in mod.resolved_mappings_ if mp.smooth_name in mod.scales_)
    w = probe_map.smooth_layer.weight
    x = torch.randn(4, w.shape[-1], generator=torch.Generator().manual_seed(0)).to(w.device, torch.float32)
    with torch.no_grad():
        y0 = copy.deepcopy(probe_map.smooth_layer).float()(x)
    try:
        with _loguru_quiet():
            mod._apply_smoothing(model)
        with torch.no_grad():
            y1 = copy.deepcopy(probe_map.smooth_layer).float()(x)
            w_old, w_new = touched[pnames[id(w)]][1].float(), w.detach().float()
            ok = (y1.abs() > 1e-6) & (w_new.abs() > 1e-12)
            s_applied = w_old / w_new.where(w_new.abs() > 1e-12, torch.ones_like(w_old))  # the norm's weight / s
            rel = ((y0 / y1.where(ok, torch.ones_like(y1))) / s_applied - 1).abs()
            spread = float(rel[ok].median()) if bool(ok.any()) else float("inf")
        n_changed = sum(not torch.equal(p.detach(), orig) for p, orig in touched.values())
    except BaseException:  # nothing half-smoothed stays on the model
        with torch.no_grad():
            for p, orig in touched.values():
                p.copy_(orig.to(p.device))
        raise
    report = {"implementation": "llmcompressor SmoothQuantModifier (mappings + _apply_smoothing), maxact's act_scales.pt",
              "alpha": float(alpha), "mappings": len(used), "mappings_without_scales": lacking,
              "architecture": type(model).__name__, "mapping_list": used,
              "tensors_changed": n_changed, "tensors_in_mappings": len(touched),
              "smooth_layer_output_scales": spread < 1e-4, "smooth_layer_checked": probe_map.smooth_name,
              "smooth_layer_class": type(probe_map.smooth_layer).__name__}
    return report, touched


@contextlib.contextmanager
def _loguru_quiet():
    """llm-compressor logs each smoothed layer at INFO through loguru: silenced for the stage's own log."""
    # its logger configures itself on import (enabled unless LLM_COMPRESSOR_LOG_DISABLED is "true")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_DISABLED", "true")
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover
        yield
        return
    logger.disable("llmcompressor")
    try:
        yield
    finally:
        logger.enable("llmcompressor")


def fingerprint(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Per parameter, two integer sums over its raw bits (plain and position-weighted): equal fingerprints after an
    operation mean no weight changed (any single changed value changes the plain sum). Computed on the parameter's
    device, in chunks."""
    out = {}
    for n, p in model.named_parameters():
        t = p.detach().reshape(-1)
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        v = t.view(bits)
        s1 = s2 = 0
        step = 1 << 22
        for i in range(0, v.numel(), step):
            c = v[i : i + step].to(torch.int64)
            w = torch.arange(i, i + c.numel(), device=c.device, dtype=torch.int64) % 65521 + 1
            s1 += int(c.sum())
            s2 += int((c * w).sum())
        out[n] = (s1, s2)
    return out


def changed(before: dict, after: dict) -> list[str]:
    return sorted(n for n in before if before[n] != after.get(n))


def smoothquant_available() -> str | None:
    """None where llm-compressor's SmoothQuant imports, else why not (checked before any model is loaded)."""
    try:
        with _loguru_quiet():
            import llmcompressor.modifiers.transform.smoothquant  # noqa: F401
    except ImportError as e:
        return (f"llm-compressor's SmoothQuant does not import here ({e}): ./install.sh installs it (pip install --no-deps "
                "llmcompressor at the version of constraints.txt)")
    return None

"""Which implementations a loaded model runs with: attention, MoE experts, and the optional fast kernels
(flash-linear-attention, causal-conv1d, ...) that transformers picks up when they are installed.

transformers decides the optional kernels once, when a modelling module is imported
(``use_kernel_func_from_hub_with_fallback``): the wrapped function keeps the chosen implementation
in its closure. Reading it there reports what runs, not what might be installed.
"""

from __future__ import annotations

import inspect
import sys

import torch


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def optional_kernels(model: torch.nn.Module) -> dict[str, str]:
    """function name -> the implementation that runs (a package's kernel, or 'torch reference (<pkg> not installed)')."""
    modules = {type(m).__module__ for m in model.modules()}
    out: dict[str, str] = {}
    for modname in sorted(modules):
        mod = sys.modules.get(modname)
        if mod is None or not modname.startswith("transformers."):
            continue
        for attr, fn in vars(mod).items():
            if not inspect.isfunction(fn) or fn.__closure__ is None:
                continue
            try:
                cv = inspect.getclosurevars(fn).nonlocals
            except (TypeError, ValueError):
                continue
            if "is_new_implementation" not in cv or "package" not in cv:
                continue
            key = str(cv.get("func_name") or attr)
            out[key] = _name(cv["implementation"]) if cv["is_new_implementation"] else f"torch reference ({cv['package']} not installed)"
    return out


def kernels_used(model: torch.nn.Module) -> dict:
    """Attention and expert implementations of the text backbone plus the optional kernels (provenance)."""
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    out = {"attention": getattr(text, "_attn_implementation", None) or getattr(cfg, "_attn_implementation", None)}
    experts = getattr(text, "_experts_implementation", None)
    if experts is not None and any("experts" in n.rsplit(".", 1)[-1] for n, _ in model.named_modules()):
        out["experts"] = experts
    opt = optional_kernels(model)
    if opt:
        out["optional"] = opt
    return out

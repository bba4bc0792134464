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


def _referenced_names(model: torch.nn.Module) -> set[str]:
    """Global names the methods of the model's module classes refer to (what their code can call)."""
    names: set[str] = set()
    for cls in {type(m) for m in model.modules()}:
        for klass in cls.__mro__:
            if not klass.__module__.startswith("transformers."):
                continue
            for fn in vars(klass).values():
                try:
                    fn = inspect.unwrap(fn)  # decorated forwards: the code of the method itself
                except ValueError:
                    continue
                code = getattr(fn, "__code__", None)
                todo = [code] if code is not None else []
                while todo:  # nested functions' code sits in co_consts
                    c = todo.pop()
                    names.update(c.co_names)
                    todo.extend(k for k in c.co_consts if inspect.iscode(k))
    return names


def optional_kernels(model: torch.nn.Module) -> dict[str, str]:
    """function name -> the implementation that runs (a package's kernel, or 'torch reference (<pkg> not importable)'),
    for the optional-kernel functions the model's own module classes call."""
    modules = {type(m).__module__ for m in model.modules()}
    used = _referenced_names(model)
    out: dict[str, str] = {}
    for modname in sorted(modules):
        mod = sys.modules.get(modname)
        if mod is None or not modname.startswith("transformers."):
            continue
        for attr, fn in vars(mod).items():
            if attr not in used or not inspect.isfunction(fn) or fn.__closure__ is None:
                continue
            try:
                cv = inspect.getclosurevars(fn).nonlocals
            except (TypeError, ValueError):
                continue
            if "is_new_implementation" not in cv or "package" not in cv:
                continue
            key = str(cv.get("func_name") or attr)
            out[key] = _name(cv["implementation"]) if cv["is_new_implementation"] else f"torch reference ({cv['package']} not importable)"
    return out


def cpu_incompatible(model: torch.nn.Module) -> dict[str, str]:
    """Optional kernels bound to a package's (CUDA/Triton) implementation: transformers binds them when it
    imports the model code, whatever the device, and they cannot run on CPU tensors."""
    return {fn: impl for fn, impl in optional_kernels(model).items() if not impl.startswith("torch reference")}


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

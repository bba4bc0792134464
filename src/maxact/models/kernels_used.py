"""Which implementations a loaded model runs with: attention, MoE experts, and the optional fast kernels
(flash-linear-attention, causal-conv1d, ...) that transformers picks up when they are installed.

transformers decides the optional kernels once, when a modelling module is imported
(``use_kernel_func_from_hub_with_fallback``): the wrapped function keeps the chosen implementation
in its closure. Reading it there reports what runs, not what might be installed.
"""

from __future__ import annotations

import inspect
import os
import sys

import torch

#: Triton multiplies float32 operands of ``tl.dot`` as TF32 (a 10-bit mantissa) unless this says otherwise
#: ("ieee": float32). fla's kernels (Qwen3.5's Gated DeltaNet, the Bailing hybrid's KDA) leave the choice to it.
TRITON_F32_ENV = "TRITON_F32_DEFAULT"
_set_by_maxact: list[str] = []  # the value maxact put into the environment, if it did (not the user's)


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


def _bound(opt: dict[str, str]) -> dict[str, str]:
    return {fn: impl for fn, impl in opt.items() if not impl.startswith("torch reference")}


def package_kernels(model: torch.nn.Module) -> dict[str, str]:
    """Optional kernels bound to a package's implementation (fla's Triton kernels, causal-conv1d's CUDA ones).
    transformers binds them when it imports the model code, whatever the device: they cannot run on CPU tensors."""
    return _bound(optional_kernels(model))


TRITON_DEFAULT = "tf32 (Triton's default)"


def triton_f32_setting() -> str:
    """How Triton multiplies float32 in the kernels it compiles now (an empty variable is its default too)."""
    return os.environ.get(TRITON_F32_ENV) or TRITON_DEFAULT


def float32_triton_dots(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """A float32 measurement on CUDA computes in float32 inside the package kernels too: Triton would multiply
    their float32 matrices as TF32, about 5e-4 relative rounding, 8,000 times float32's. Sets TRITON_F32_DEFAULT=ieee
    for such a run (before its first kernel compiles) unless the user set it, and takes maxact's own setting back
    for any other run in the process. Returns the setting in force where the model runs package kernels on CUDA.

    Triton reads it when it compiles a kernel, and keeps the kernels it compiled earlier in the process (its
    in-memory cache is keyed without it): it holds from a process's first float32 kernel on, as in a CLI or workflow
    step, which measures one dtype. Inductor's cache folder is kept apart per setting (compiled.use_cache_dir)."""
    if _set_by_maxact and os.environ.get(TRITON_F32_ENV) == _set_by_maxact[0]:
        del os.environ[TRITON_F32_ENV]
    _set_by_maxact.clear()
    if device.type != "cuda" or not package_kernels(model):
        return None
    if dtype == torch.float32 and not os.environ.get(TRITON_F32_ENV):
        os.environ[TRITON_F32_ENV] = "ieee"
        _set_by_maxact.append("ieee")
    return triton_f32_setting()


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
    if _bound(opt):  # how Triton multiplies float32 matrices in them (float32_triton_dots)
        out["triton_float32_dot"] = triton_f32_setting()
    return out

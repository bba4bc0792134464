"""Regional compilation of the measured forward (``measure.compile``).

Each decoder layer's ``forward`` is compiled once with ``torch.compile(dynamic=True)`` (in bf16/fp16 with inductor
rounding where eager rounds: :data:`INDUCTOR_OPTIONS`), so that a study's varying
packed lengths reuse one graph instead of recompiling per shape; one graph serves every layer (the layers are the
graph's inputs, not its constants). The layer's own hooks stay outside the compiled forward.

maxact's statistics keep Python state (running statistics, deferred updates, token facts) that dynamo cannot
trace. Inside a compiled layer a hook therefore only hands its tensors over (:class:`Captures`): dynamo records the
append to a Python list as a side effect and makes the tensors outputs of the graph, so a hook adds no graph
break; when the layer's call returns, a forward hook on the layer (outside the compiled forward) runs the
statistics on them, in the order they were captured. A hook that changes what the module returns (the padded
forward's MoE repacking) cannot be deferred: it runs behind a graph break (:func:`hook`).

:func:`resolve_compile` decides from the family's registry entry (:class:`maxact.models.registry.Compile`) and the
device; :class:`RegionalCompile` compiles and restores, and reports what dynamo did (graphs, recompiles, graph
breaks, compile seconds) for the provenance.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import torch

from maxact.errors import InputError
from maxact.models.kernels_used import TRITON_F32_ENV

MODES = ("auto", "on", "off")

#: inductor's options for compiled layers whose weights are bf16/fp16. ``emulate_precision_casts``: a fused kernel
#: rounds to bf16/fp16 where eager's ops do (each op's output), instead of keeping float32 between the fused ops. The
#: study's reference is the eager forward: without it the real SmolLM2-135M's bf16 global max (28,928 eager) came out
#: 3 bf16 steps lower compiled (28,544) on an H100 and on the CPU; with it the same 28,928. On CUDA the option also
#: turns off FMA contraction in inductor's Triton kernels (of any dtype), so a float32 run goes without it: it has
#: no 16-bit casts to emulate.
INDUCTOR_OPTIONS = {"emulate_precision_casts": True}
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def inductor_options(dtype: torch.dtype) -> dict:
    """The inductor options maxact compiles a model's layers with, for the model's dtype."""
    return dict(INDUCTOR_OPTIONS) if dtype in _LOW_PRECISION else {}


def _layers_dtype(layers) -> torch.dtype | None:
    for layer in layers:
        for p in layer.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def resolve_compile(family, mode: str, device_type: str, split_over: int = 1) -> tuple[bool, str]:
    """(compile?, why not where not): ``measure.compile`` for this family on this device type; ``split_over``: the
    number of devices the model is spread over (device_map)."""
    if mode not in MODES:
        raise InputError(f"measure.compile must be one of {', '.join(MODES)}, not {mode!r}")
    spec = family.compile
    if mode == "off":
        return False, "measure.compile: off"
    if spec.why_not:
        if mode == "on":
            raise InputError(f"measure.compile: on, but family {family.name!r} cannot be compiled: {spec.why_not}; "
                             "set measure.compile: auto or off")
        return False, f"family {family.name!r} cannot be compiled: {spec.why_not}"
    if mode == "on":
        return True, ""
    if split_over > 1:
        return False, (f"the model is split over {split_over} devices (device_map): layers compiled through accelerate's "
                       "device-moving hooks are not checked (measure.compile: on forces it)")
    if device_type not in spec.checked:
        return False, (f"measure.compile: auto compiles only where compiled and eager statistics were checked to agree "
                       f"and compiled ran faster; family {family.name!r} is checked on "
                       f"{', '.join(spec.checked) or 'no device'}, this run is on {device_type}"
                       + (f" ({spec.note})" if spec.note else "") + " (measure.compile: on forces it)")
    return True, ""


def hook(fn, compiled: bool):
    """A hook function as registered: behind a graph break when the layers are compiled (its Python state stays
    out of dynamo), unchanged otherwise."""
    return torch.compiler.disable(fn, recursive=True) if compiled else fn


class Captures:
    """Hooks inside compiled layers: each call hands over its tensors (``calls``), and :meth:`run` (a forward
    hook on each decoder layer, outside the compiled forward) calls the statistics hooks on them.

    The capturing functions are the same objects for every module and hold no per-module state, so one traced
    graph serves every layer; the module itself (a graph input) says whose tensors they are. A point hook keeps only
    the module's first output ("out0"): the rest (e.g. eager attention's [B, H, T, T] probabilities) is not held
    until the layer returns. A captured tensor is read when the layer returns: a layer that changed it in place
    afterwards would be measured changed (no supported family does; the CPU and GPU equality tests would show it).
    """

    def __init__(self):
        self.calls: list = []  # (module, kind, value) in call order
        self.handlers: dict = {}  # (module, kind) -> [fn(module, value)]
        self.expecting: set = set()  # ids of the layers holding a module whose tensors are captured

    # -- inside the compiled forward (traced: an append, no Python state read)
    def output(self, mod, args, out):
        self.calls.append((mod, "out", out))

    def first_output(self, mod, args, out):
        self.calls.append((mod, "out0", out[0] if isinstance(out, (tuple, list)) else out))

    def input_kw(self, mod, args, kwargs):
        self.calls.append((mod, "in", args[0] if args else next(iter(kwargs.values()))))

    def value(self, mod, kind: str, v):
        """A tensor (or tuple of them) of ``mod``'s call that is neither its first input nor its output."""
        self.calls.append((mod, kind, v))

    # -- outside
    def attach(self, mod, kind: str, fn) -> list:
        """Call ``fn(mod, value)`` with what ``mod`` hands over as ``kind`` ("out": its output; "out0": its first
        output; "in": its first input; other kinds: what code inside the forward passes to :meth:`value`). Returns
        the hook handles made (one capturing hook per module and kind, however many functions consume it: the first
        caller owns it)."""
        first = (mod, kind) not in self.handlers
        self.handlers.setdefault((mod, kind), []).append(fn)
        if not first or kind not in ("out", "out0", "in"):
            return []
        if kind == "out":
            return [mod.register_forward_hook(self.output)]
        if kind == "out0":
            return [mod.register_forward_hook(self.first_output)]
        return [mod.register_forward_pre_hook(self.input_kw, with_kwargs=True)]

    def expect(self, layers) -> None:
        """The layers (modules) whose call must hand tensors over: those holding a captured module."""
        captured = {id(mod) for mod, _ in self.handlers}
        self.expecting = {id(layer) for layer in layers if any(id(m) in captured for m in layer.modules())}

    def run(self, layer=None, *_):
        calls, self.calls = self.calls, []
        if not calls and id(layer) in self.expecting:
            # A graph traced without the capturing hooks ran: the statistics inside the layer would be missing.
            raise RuntimeError(
                f"measure.compile: decoder layer {type(layer).__name__} returned without handing over any measured "
                "tensor: its compiled graph was traced without the measurement's hooks (the layer was compiled earlier "
                "in this process without them), so the statistics inside it would be missing; measure in a fresh "
                "process, or with measure.compile: off")
        for mod, kind, v in calls:
            for fn in self.handlers[(mod, kind)]:
                fn(mod, v)

    def discard(self) -> None:
        self.calls = []

    def clear(self) -> None:
        """Nothing held: no captured tensor, no handler (the measurement is removed)."""
        self.calls = []
        self.handlers = {}
        self.expecting = set()


_INDUCTOR_SET: list[str] = []  # the folder maxact put into the environment, if it did (not the user's)


def use_cache_dir(cache_dir) -> str:
    """Inductor's on-disk cache under the study's cache folder (unless the user set one), so that compiled kernels
    are reused across the checkpoints and runs of a study. One folder per TRITON_F32_DEFAULT: inductor's graph cache
    holds the Triton kernels of the packages it compiled in (fla's) and is keyed without that setting."""
    d = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not d or (_INDUCTOR_SET and d == _INDUCTOR_SET[0]):
        f32 = os.environ.get(TRITON_F32_ENV)
        d = str(Path(cache_dir) / ("inductor" + (f"-triton-f32-{re.sub(r'[^A-Za-z0-9]', '', f32)}" if f32 else "")))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d
        _INDUCTOR_SET[:] = [d]
    return d


def _break_reasons() -> dict[str, int]:
    import torch._dynamo.utils as U

    out: dict[str, int] = {}
    for k, v in U.counters["graph_break"].items():
        text = str(k).strip()
        fn = re.search(r"<function ([\w.<>]+) at", text)  # which function, not its address
        reason = text.splitlines()[0][:160] + (f": {fn.group(1)}" if fn else "")
        out[reason] = out.get(reason, 0) + int(v)
    return out


def _dynamo_counts() -> dict:
    import torch._dynamo.utils as U

    return {"unique_graphs": int(U.counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(U.counters["graph_break"].values())),
            "recompiles": int(U.counters["recompiles"].get("total", 0)) if "recompiles" in U.counters else 0,
            "compile_seconds": float(sum(U.compilation_time_metrics.get("_compile.compile_inner", []) or [0.0]))}


def _own_forward(layer):
    """The layer class's own forward, bound, without transformers' wrappers (gradient checkpointing, which does
    nothing without gradients; deprecated-keyword renaming): their code is shared by every layer class, and
    dynamo's cache of one code object holds at most ``recompile_limit`` (8) entries, so a process measuring more
    than 8 layer classes would silently run the rest eager."""
    return inspect.unwrap(type(layer).forward).__get__(layer)


_ACTIVE_REGIONS: list = []  # RegionalCompiles entered and not exited
_hook_guards_before = True  # dynamo's skip_nnmodule_hook_guards when the first of them was entered


def _guard_hooks(on: bool) -> None:
    """While any region is active, graphs dynamo makes guard on their modules' hooks being absent too.

    By default dynamo does not guard on an empty hook dict (``skip_nnmodule_hook_guards``): a layer compiled once
    without hooks (a bare forward: a benchmark's baseline, a user's own compiled run) would later be reused with the
    measurement's hooks in place and never call them, so the statistics inside the layers would silently be missing.
    With the guard, adding the hooks makes dynamo trace the layer again.
    """
    import torch._dynamo.config as C

    global _hook_guards_before
    if on:
        _hook_guards_before, C.skip_nnmodule_hook_guards = C.skip_nnmodule_hook_guards, False
    else:
        C.skip_nnmodule_hook_guards = _hook_guards_before


class RegionalCompile:
    """Compile every decoder layer's forward (``layers``: modules) on entry; restore their eager forward on exit.

    The forward, not the whole call (``nn.Module.compile``), so that the layer's own hooks run outside the graph.
    """

    def __init__(self, layers, enabled: bool):
        self.layers = list(layers)
        self.enabled = enabled
        self._before: dict | None = None
        self._reasons_before: dict = {}
        self._saved: list = []  # (layer, its instance forward or None, the compiled forward put there)
        self.active = False
        self.options = inductor_options(_layers_dtype(self.layers))

    def __enter__(self):
        if self._saved:
            raise RuntimeError("RegionalCompile entered twice: its layers are compiled already")
        if self.enabled:
            self._before = _dynamo_counts()
            self._reasons_before = _break_reasons()
            self.active = True
            if not _ACTIVE_REGIONS:
                _guard_hooks(True)
            _ACTIVE_REGIONS.append(self)
            try:
                for layer in self.layers:
                    own = layer.__dict__.get("forward")  # e.g. accelerate's device-moving wrapper (device_map)
                    # A forward another region compiled: compile what that one compiled, not its compiled function.
                    target = getattr(own, "_maxact_compiled_from", own)
                    if target is None:
                        target = _own_forward(layer)
                    fn = torch.compile(target, dynamic=True, options=self.options)
                    fn._maxact_region, fn._maxact_before, fn._maxact_compiled_from = self, own, target
                    self._saved.append((layer, own, fn))
                    layer.forward = fn
            except BaseException:
                self.__exit__(None, None, None)  # no layer stays half-swapped
                raise
        return self

    def report(self) -> dict:
        """What dynamo did since entry (the compile and warm-up it cost, graphs made, recompiles)."""
        if not self.enabled or self._before is None:
            return {"compiled": False}
        now = _dynamo_counts()
        reasons = {k: v - self._reasons_before.get(k, 0) for k, v in _break_reasons().items()}
        return {"compiled": True, "layers": len(self.layers), "dynamic": True, "inductor_options": dict(self.options),
                **{k: now[k] - self._before[k] for k in now},
                "graph_break_reasons": {k: v for k, v in reasons.items() if v > 0}}

    def __exit__(self, *exc):
        self.active = False
        if self in _ACTIVE_REGIONS:
            _ACTIVE_REGIONS.remove(self)
            if not _ACTIVE_REGIONS:
                _guard_hooks(False)
        saved, self._saved = self._saved, []
        for layer, before, fn in reversed(saved):
            if layer.__dict__.get("forward") is not fn:
                continue  # replaced since by someone else (a region entered later): theirs stays
            # What was there before, skipping forwards of regions that have exited meanwhile (left out of order).
            while getattr(before, "_maxact_region", None) is not None and not before._maxact_region.active:
                before = before._maxact_before
            if before is None:
                layer.__dict__.pop("forward")  # the class's forward again
            else:
                layer.forward = before
        return False

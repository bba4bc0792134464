"""Regional compilation of the measured forward (``measure.compile``).

Each decoder layer is compiled once with ``torch.compile(dynamic=True)`` (``nn.Module.compile``: the layer's call,
hooks included, runs through dynamo), so that a study's varying packed lengths reuse one graph instead of
recompiling per shape. maxact's statistics hooks keep their Python state (running statistics, deferred updates),
which dynamo cannot trace: each hook is wrapped in ``torch.compiler.disable``, a graph break at every hook point,
the statistics run eagerly between the compiled pieces. :func:`resolve_compile` decides from the family's registry
entry (:class:`maxact.models.registry.Compile`) and the device; :class:`RegionalCompile` compiles and restores, and
reports what dynamo did (graphs, recompiles, graph breaks, compile seconds) for the provenance.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from maxact.errors import InputError

MODES = ("auto", "on", "off")


def resolve_compile(family, mode: str, device_type: str) -> tuple[bool, str]:
    """(compile?, why not where not): ``measure.compile`` for this family on this device type."""
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
    if device_type not in spec.checked:
        return False, (f"measure.compile: auto compiles only where compiled and eager statistics were checked to agree "
                       f"and compiled ran faster; family {family.name!r} is checked on "
                       f"{', '.join(spec.checked) or 'no device'}, this run is on {device_type} (measure.compile: on forces it)")
    return True, ""


def hook(fn, compiled: bool):
    """A hook function as registered: behind a graph break when the layers are compiled (its Python state stays
    out of dynamo), unchanged otherwise."""
    return torch.compiler.disable(fn, recursive=True) if compiled else fn


def use_cache_dir(cache_dir) -> str:
    """Inductor's on-disk cache under the study's cache folder (unless the user set one), so that compiled kernels
    are reused across the checkpoints and runs of a study."""
    d = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not d:
        d = str(Path(cache_dir) / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d
    return d


def _dynamo_counts() -> dict:
    import torch._dynamo.utils as U

    return {"unique_graphs": int(U.counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(U.counters["graph_break"].values())),
            "recompiles": int(U.counters["recompiles"].get("total", 0)) if "recompiles" in U.counters else 0,
            "compile_seconds": float(sum(U.compilation_time_metrics.get("_compile.compile_inner", []) or [0.0]))}


class RegionalCompile:
    """Compile every decoder layer (``layers``: modules) on entry; restore their eager call on exit."""

    def __init__(self, layers, enabled: bool):
        self.layers = list(layers)
        self.enabled = enabled
        self._before: dict | None = None

    def __enter__(self):
        if self.enabled:
            self._before = _dynamo_counts()
            for layer in self.layers:
                layer.compile(dynamic=True)
        return self

    def report(self) -> dict:
        """What dynamo did since entry (the compile and warm-up it cost, graphs made, recompiles)."""
        if not self.enabled or self._before is None:
            return {"compiled": False}
        now = _dynamo_counts()
        return {"compiled": True, "layers": len(self.layers), "dynamic": True,
                **{k: now[k] - self._before[k] for k in now}}

    def __exit__(self, *exc):
        if self.enabled:
            for layer in self.layers:
                layer._compiled_call_impl = None
        return False

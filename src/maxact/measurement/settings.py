"""How one measurement runs: the typed settings (defaults from the config schema, its one source) and the
device policy that turns them into a device, a dtype and a device map."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from maxact import schema
from maxact.errors import InputError

#: Points with quantiles and the Sun criterion under ``full_stats: paper`` (the published files' set).
PAPER_FULL_KINDS = ("embedding", "hidden", "attn", "mlp", "final_norm")
#: Numeric settings and the schema section holding their range; settings that take one of a list of values.
_RANGED = {"batch_size": "runtime", "max_batch_tokens": "runtime", "checkpoint_every": "runtime", "shards": "runtime",
           "max_samples": "measure", "topk": "measure"}
_CHOICES = {"dtype": "runtime", "attn_implementation": "runtime", "full_stats": "measure", "packing": "measure",
            "compile": "measure",
            "fill_uncovered": "measure"}
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _default(section: str, key: str):
    return field(default_factory=lambda: schema.defaults(section)[key])


@dataclass(frozen=True)
class MeasureSettings:
    """Runtime settings (``runtime`` block: where and how fast), the study's measurement settings
    (``measure`` block) and the checkpoint's GPU count. Every default is the schema's."""

    device: str = _default("runtime", "device")
    dtype: str = _default("runtime", "dtype")
    force_dtype: bool = _default("runtime", "force_dtype")
    batch_size: int = _default("runtime", "batch_size")
    max_batch_tokens: int | None = _default("runtime", "max_batch_tokens")
    attn_implementation: str = _default("runtime", "attn_implementation")
    checkpoint_every: int = _default("runtime", "checkpoint_every")
    shards: int = _default("runtime", "shards")  # how the workflow splits a measurement (maxact.measurement.shards)
    max_samples: int | None = _default("measure", "max_samples")
    topk: int = _default("measure", "topk")
    full_stats: str = _default("measure", "full_stats")
    packing: str = _default("measure", "packing")
    compile: str = _default("measure", "compile")
    linear_inputs: bool = _default("measure", "linear_inputs")
    exports: tuple = _default("measure", "exports")
    fill_uncovered: str = _default("measure", "fill_uncovered")
    gpus: int = 1
    device_map: Any = None  # an explicit accelerate device map (library use); None: the policy below

    @classmethod
    def of(cls, values: "MeasureSettings | Mapping[str, Any] | None" = None) -> "MeasureSettings":
        """From a mapping (the rule's runtime + measure blocks, the CLI's options; None values keep the default),
        or the settings themselves."""
        if isinstance(values, cls):
            return values
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown measurement setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("packing", "compile"):
            if isinstance(values.get(key), bool):  # YAML 1.1 reads a bare on/off as a boolean
                values[key] = "on" if values[key] else "off"
        if values.get("exports") is not None:
            values["exports"] = tuple(values["exports"])
        s = cls(**{k: v for k, v in values.items() if v is not None})
        s.check()
        return s

    def check(self) -> None:
        """Refuse, before any model is loaded, a setting outside what the schema allows (named as a config key)."""
        for name, section in _RANGED.items():
            schema.check_number(getattr(self, name), section, name)
        for name, section in _CHOICES.items():
            allowed = schema.prop(section, name).get("enum") or []
            if getattr(self, name) not in allowed:
                raise InputError(f"{section}.{name} must be one of {', '.join(str(a) for a in allowed if not isinstance(a, bool))} "
                                 f"(got {getattr(self, name)!r})")
        if not DEVICE_RE.match(str(self.device)):
            raise InputError(f"runtime.device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        bad = [e for e in self.exports if e not in schema.prop("measure", "exports")["items"]["enum"]]
        if bad:
            raise InputError(f"unknown export(s) {', '.join(map(str, bad))}; choose from "
                             f"{', '.join(schema.prop('measure', 'exports')['items']['enum'])}")
        self.full_kinds()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def full_kinds(self):
        return full_kinds(self.full_stats)

    @property
    def records_linear_inputs(self) -> bool:
        """Linear-layer inputs are recorded when asked for, or when a calibration file needs them."""
        return bool(self.linear_inputs or self.exports)


def full_kinds(mode: str):
    """Points with quantiles and the Sun criterion: the published files' set, or every point (None)."""
    if mode == "all":
        return None
    if mode == "paper":
        return PAPER_FULL_KINDS
    raise InputError(f"measure.full_stats must be 'paper' or 'all', not {mode!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA device is visible; use device cpu or auto")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise InputError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None


def check_dtype(family, dtype: torch.dtype, force: bool = False) -> None:
    if dtype == torch.float16 and family.fp16_unsafe and not force:
        raise InputError(
            f"float16 refused for family {family.name!r}: its published peaks (up to ~7e5 for Gemma 2/3) exceed "
            "float16's largest finite value 65,504, so activations would overflow to inf. Use bfloat16 or float32, "
            "or set force_dtype: true to measure anyway."
        )


def device_map(s: MeasureSettings, device: torch.device):
    """One GPU holds the model unless the checkpoint asks for more (gpus: N): then split it over them."""
    if s.device_map:
        return s.device_map
    if device.type == "cpu":
        return None
    if int(s.gpus or 1) > 1 and torch.cuda.device_count() > 1:
        return "auto"
    return {"": device.index or 0}

"""How one measurement runs: the typed settings (defaults from the config schema, its one source) and the
device policy that turns them into a device, a dtype and a device map."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from maxact import schema

#: Points with quantiles and the Sun criterion under ``full_stats: paper`` (the published files' set).
PAPER_FULL_KINDS = ("embedding", "hidden", "attn", "mlp", "final_norm")


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
    max_samples: int | None = _default("measure", "max_samples")
    topk: int = _default("measure", "topk")
    full_stats: str = _default("measure", "full_stats")
    packing: str = _default("measure", "packing")
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
            raise ValueError(f"unknown measurement setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if isinstance(values.get("packing"), bool):  # YAML 1.1 reads a bare on/off as a boolean
            values["packing"] = "on" if values["packing"] else "off"
        if values.get("exports") is not None:
            values["exports"] = tuple(values["exports"])
        s = cls(**{k: v for k, v in values.items() if v is not None})
        s.full_kinds()  # refuse a bad full_stats before any model is loaded
        return s

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
    raise ValueError(f"measure.full_stats must be 'paper' or 'all', not {mode!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is visible; use device: cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None


def check_dtype(family, dtype: torch.dtype, force: bool = False) -> None:
    if dtype == torch.float16 and family.fp16_unsafe and not force:
        raise ValueError(
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

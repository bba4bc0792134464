"""The one load sequence of the GPU stages (measure, INT-8, probes): settings -> device, dtype, model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maxact.errors import InputError
from maxact.measurement.settings import MeasureSettings, check_dtype, device_map, resolve_device, resolve_dtype
from maxact.models.checkpoints import load_model
from maxact.models.kernels_used import float32_triton_dots, package_kernels
from maxact.models.registry import Family


@dataclass
class Loaded:
    model: torch.nn.Module
    family: Family
    device: torch.device
    dtype: torch.dtype
    # how Triton multiplies float32 inside the model's package kernels (None: it runs none on this device)
    triton_float32_dot: str | None = None


def load_for_measurement(prepared: dict, dtype, s: MeasureSettings, device: torch.device):
    """The model on ``device`` with the attention implementation settled for its family."""
    model, fam = load_model(prepared, dtype, device_map=device_map(s, device), attn_implementation=s.attn_implementation,
                            device=device)
    if device.type == "cpu":
        bound = package_kernels(model)
        if bound:
            pkgs = sorted({impl.split(".")[0] for impl in bound.values()})
            raise InputError(
                f"checkpoint {prepared['name']!r} cannot be measured on the CPU here: transformers bound "
                f"{', '.join(f'{k} -> {v}' for k, v in sorted(bound.items()))} when it imported the model code (GPU kernels "
                f"of {', '.join(pkgs)}, whatever the device). Measure on CUDA, or run the CPU measurement in an "
                f"environment without {', '.join(pkgs)} (e.g. pip uninstall fla-core)."
            )
        model.to(device)
    return model, fam


def load(prepared: dict, s: MeasureSettings, check: bool = True, device: torch.device | None = None) -> Loaded:
    """Device (unless given, already resolved from these settings) and dtype from the settings, the model loaded
    for them; ``check``: refuse an unsafe float16."""
    device = device if device is not None else resolve_device(s.device)
    dtype = resolve_dtype(s.dtype, device)
    model, fam = load_for_measurement(prepared, dtype, s, device)
    dots = float32_triton_dots(model, device, dtype)
    if check:
        check_dtype(fam, dtype, force=bool(s.force_dtype))
    return Loaded(model, fam, device, dtype, dots)

"""Per-row activation statistics: the backend dispatch over the CUDA kernel, the Triton kernel and torch.

:func:`row_stats` computes the contract described in :mod:`maxact.measurement.kernels.triton` with one of

* ``cuda``: the NVRTC-compiled kernel of :mod:`maxact.measurement.kernels.cuda` (16-bit inputs with at most
  32,768 channels on CUDA);
* ``triton``: the Triton kernel of :mod:`maxact.measurement.kernels.triton` (other CUDA inputs, or CPU
  tensors under ``TRITON_INTERPRET=1``);
* ``torch``: :func:`~maxact.measurement.kernels.common.row_stats_reference` (everything else).

``auto`` (the default) takes the first of these that handles the input; ``MAXACT_KERNEL`` (auto, cuda,
triton, torch) or ``backend=`` starts the list further down.  This is the only module importing both
kernels; they share :mod:`maxact.measurement.kernels.common`.

Whether :mod:`maxact.measurement.statistics` uses the fused kernels at all is :func:`fused_enabled`
(``MAXACT_TRITON=0`` turns them off); :func:`describe` names the implementation a run used.
"""

from __future__ import annotations

import os

import torch

from maxact.measurement.kernels import cuda, triton
from maxact.measurement.kernels.common import (
    DTYPE_KIND,
    FLOAT_KEYS,
    HIST_BINS,
    HIST_LOG10_HI,
    HIST_LOG10_LO,
    INT_KEYS,
    OUT_KEYS,
    histc_accumulate,
    outputs,
    row_stats_reference,
)
from maxact.measurement.kernels.triton import TRITON_AVAILABLE, default_config

# Which implementation row_stats uses: auto (CUDA kernel for 16-bit inputs, else Triton, else torch),
# or one of cuda / triton / torch (MAXACT_KERNEL; an unavailable one falls back down that list).
BACKENDS = ("auto", "cuda", "triton", "torch")
BACKEND = os.environ.get("MAXACT_KERNEL", "auto")
if BACKEND not in BACKENDS:
    raise ValueError(f"MAXACT_KERNEL must be one of {', '.join(BACKENDS)}, not {BACKEND!r}")

# The fused kernels (CUDA or Triton) for the statistics on CUDA; MAXACT_TRITON=0 (or MAXACT_KERNEL=torch)
# leaves them to the torch path of maxact.measurement.statistics.  Read through fused_enabled(); tests
# switch it by setting this attribute.
FUSED_ENABLED = os.environ.get("MAXACT_TRITON", "1") != "0"


def fused_enabled() -> bool:
    """Whether the statistics may use a fused kernel at all (``MAXACT_TRITON`` not ``0``)."""
    return FUSED_ENABLED


def backend_for(x: torch.Tensor, backend: str | None = None) -> str:
    """The implementation :func:`row_stats` would use for ``x`` (shape/dtype/device only)."""
    b = backend or BACKEND
    if b in ("auto", "cuda") and cuda.supports(x):
        return "cuda"
    if b in ("auto", "cuda", "triton") and triton.supports(x):
        return "triton"
    return "torch"


def fused_available(x: torch.Tensor, backend: str | None = None) -> bool:
    """Whether a fused kernel (CUDA or Triton) handles ``x``."""
    return backend_for(x, backend) != "torch"


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation computes the statistics of ``dtype`` activations on ``device`` (cuda / triton /
    torch), with the reason where the CUDA kernel was disabled in this process."""
    device = torch.device(device)
    if not fused_enabled() or device.type != "cuda":
        return "torch"
    used = backend_for(torch.empty(1, 8, dtype=dtype, device=device))
    failed = cuda.disabled_reason()
    return f"{used} (CUDA kernel disabled: {failed})" if failed else used


@torch.no_grad()
def row_stats(x: torch.Tensor, row_valid: torch.Tensor, hist: torch.Tensor | None = None,
              want_median: bool = True, *, block: int | None = None, num_warps: int | None = None,
              programs_per_sm: int | None = None, median_method: int | None = None,
              hist_copies: int | None = None, force_reference: bool = False, backend: str | None = None) -> dict:
    """Per-row statistics of a ``[N, C]`` activation (see :mod:`maxact.measurement.kernels.triton` for the contract).

    Never synchronises the device and branches only on shapes/dtypes.  ``hist`` is updated in place.
    The Triton tuning keywords (block, num_warps, ...) select the Triton kernel.
    """
    assert x.dim() == 2, "row_stats expects [N, C]"
    n, c = x.shape
    tuning = dict(block=block, num_warps=num_warps, programs_per_sm=programs_per_sm, median_method=median_method,
                  hist_copies=hist_copies)
    tuned = any(v is not None for v in tuning.values())
    which = "torch" if force_reference or n == 0 or c == 0 else backend_for(x, "triton" if tuned else backend)
    if which == "torch":
        return row_stats_reference(x, row_valid, hist, want_median)
    rv = row_valid.reshape(n)
    rv = (rv if rv.dtype == torch.bool else rv != 0).contiguous().view(torch.uint8)
    if which == "cuda":
        try:
            return cuda.row_stats(x, rv, hist, want_median)
        except Exception as e:  # noqa: BLE001 - NVRTC missing or failing: fall back, once, with a warning
            cuda.disable(f"{type(e).__name__}: {e}")
            if not triton.supports(x):
                return row_stats_reference(x, row_valid, hist, want_median)
    return triton.row_stats(x, rv, hist, want_median, **tuning)


__all__ = [
    "BACKEND", "BACKENDS", "DTYPE_KIND", "FLOAT_KEYS", "FUSED_ENABLED", "HIST_BINS", "HIST_LOG10_HI", "HIST_LOG10_LO",
    "INT_KEYS", "OUT_KEYS", "TRITON_AVAILABLE", "backend_for", "cuda", "default_config", "describe", "fused_available",
    "fused_enabled", "histc_accumulate", "outputs", "row_stats", "row_stats_reference", "triton",
]

"""What the row-statistics backends share: the output contract, the histogram, dtype codes, launch limits.

:mod:`maxact.measurement.kernels.triton` and :mod:`maxact.measurement.kernels.cuda` both import this
module and nothing from each other; :mod:`maxact.measurement.kernels` chooses between them.

:func:`row_stats_reference` is the plain-torch implementation of the ``row_stats`` contract (see
:mod:`maxact.measurement.kernels.triton`): the fallback backend and the test oracle.
"""

from __future__ import annotations

import math

import torch

# The published files' histogram: 512 log-spaced bins over |a| in [1e-8, 1e8].
HIST_BINS = 512
HIST_LOG10_LO = -8.0
HIST_LOG10_HI = 8.0
_HISTC_CHUNK = 1 << 24
# Rows per launch are chosen so that the int32 histogram scratch cannot overflow.
MAX_ELEMS_PER_LAUNCH = (1 << 31) - 1

# Input dtype codes the kernels are specialised on (KIND), and each one's all-ones exponent pattern
# (|a| bit patterns at or above it are inf / NaN).
DTYPE_KIND = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
EXP_ALL = {0: 0x7F80, 1: 0x7C00, 2: 0x7F800000}

FLOAT_KEYS = ("max", "min", "sum", "sumsq", "abssum")
INT_KEYS = ("count", "nan", "inf", "zero")
OUT_KEYS = FLOAT_KEYS + INT_KEYS

_SM_COUNT: dict = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 for any other device."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def outputs(f: torch.Tensor, i: torch.Tensor) -> dict:
    """The contract's dict over two blocks: float32 ``f`` [5, N] (FLOAT_KEYS rows) and int32 ``i`` [4, N]
    (INT_KEYS rows).  ``sums_block`` (sum, sumsq, abssum) and ``counts_block`` let callers total all rows
    in two reductions instead of seven."""
    out = dict(zip(FLOAT_KEYS, f))
    out.update(zip(INT_KEYS, i))
    out["sums_block"] = f[2:5]
    out["counts_block"] = i
    return out


def histc_accumulate(hist: torch.Tensor, log10_abs: torch.Tensor) -> None:
    """Add the 512-bin histogram of log10|a| to ``hist``; values outside [-8, 8) are not counted.

    torch.histc counts in float32, so it is called on chunks small enough to count exactly.
    """
    for chunk in log10_abs.reshape(-1).split(_HISTC_CHUNK):
        hist += torch.histc(chunk, HIST_BINS, HIST_LOG10_LO, HIST_LOG10_HI).to(hist.dtype)


@torch.no_grad()
def row_stats_reference(x: torch.Tensor, row_valid: torch.Tensor, hist: torch.Tensor | None = None,
                        want_median: bool = True) -> dict:
    """Plain-torch implementation of the ``row_stats`` contract (fallback and test oracle)."""
    n, c = x.shape
    xf = x.float()
    tv = row_valid.reshape(n).bool()[:, None]
    fin = torch.isfinite(xf)
    valid = fin & tv
    xz = torch.where(valid, xf, 0.0)
    a = xz.abs()
    out = outputs(
        torch.stack([
            torch.where(valid, xf, -math.inf).amax(-1) if c else torch.full((n,), -math.inf, device=x.device),
            torch.where(valid, xf, math.inf).amin(-1) if c else torch.full((n,), math.inf, device=x.device),
            xz.sum(-1),
            (xz * xz).sum(-1),
            a.sum(-1),
        ]),
        torch.stack([
            valid.sum(-1, dtype=torch.int32),
            (torch.isnan(xf) & tv).sum(-1, dtype=torch.int32),
            (torch.isinf(xf) & tv).sum(-1, dtype=torch.int32),
            (valid & (a == 0)).sum(-1, dtype=torch.int32),
        ]),
    )
    if want_median:
        out["median"] = a.kthvalue((c + 1) // 2, dim=-1).values.float()
    if hist is not None:
        la = torch.log10(a.clamp_min(1e-30)).clamp(HIST_LOG10_LO, HIST_LOG10_HI - 1e-6)
        la = torch.where(valid & (a > 0), la, HIST_LOG10_HI + 100.0)
        histc_accumulate(hist, la)
    return out

"""Fused per-row statistics for 16-bit activations as a CUDA kernel compiled at run time (NVRTC).

Same contract as :func:`maxact.measurement.kernels.row_stats` (see :mod:`maxact.measurement.kernels.triton`), for
bf16/fp16 ``[N, C]`` inputs with ``C <= 32768`` on CUDA.  Why a CUDA kernel next to the Triton one: the two expensive statistics need
primitives Triton does not expose.

* **Histogram.** A 16-bit ``|a|`` has at most 32,768 bit patterns, so each thread block counts
  patterns in a 128 KiB shared-memory table (one shared-memory atomic per element, no per-bin work)
  and, once per launch, maps every pattern to its log10 bin through a table built with torch's own
  ``log10`` / ``histc`` on the device (:func:`key_bin_table`): the bins equal the torch path's exactly.
  Triton's ``tl.histogram`` costs grow with the number of bins (512 here).
* **Median.** Each row's 16-bit keys stay in registers, packed two per 32-bit register; the exact
  lower median is a 15-step bisection where each step counts the keys below a candidate, a hardware
  warp reduction (``__reduce_add_sync``) and, for rows spread over several warps, one named barrier of
  that row's thread group.  The count is a packed fp16 compare and add per two keys (non-negative bit
  patterns below fp16's inf order like integers; see ``count_below``), or the integer SIMD compare
  ``__vsetltu2`` for bf16 rows holding |a| >= 2**121.

A row is handled by a group of ``G`` threads (32..1024, a power of two) holding up to 32 elements
each (48 for rows wider than 8,192); a 1024-thread block holds ``1024 / G`` groups (960 threads for
G=64: named barriers 1..15).  Sums and extremes are reduced with warp shuffles, so their float32
rounding differs from torch's summation order by a few ulps (the contract's tolerance); extremes,
counts, median and histogram are exact.

Measured on an H200 (torch 2.11, NVRTC 13, bf16, 10% padding rows; ``benchmarks/bench_kernels.py``):
[65536, 4096] reading once 0.165 ms, sums/extremes/counts 0.29 ms, + histogram 0.38 ms, + median
0.78 ms (integer compares: 0.92 ms; Triton kernel: 4.4 ms); [65536, 12288] 0.47 / 0.79 / 1.06 / 2.09 ms
(integer compares 2.71 ms; Triton: 18.8 ms).  The median's bisection is still half of the cost.

Compiling needs ``torch.cuda._compile_kernel`` (PyTorch >= 2.8, NVRTC from the CUDA wheels).
Anything unavailable makes :func:`available` false, and :func:`maxact.measurement.kernels.row_stats` falls back to
Triton.  The kernel's CUDA C++ source is ``row_stats.cu`` next to this module (:data:`SOURCE`); :func:`source_for`
prepends the ``#define`` lines of one variant.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch

from maxact.measurement.kernels.common import (
    DTYPE_KIND,
    EXP_ALL,
    HIST_BINS,
    HIST_LOG10_HI,
    HIST_LOG10_LO,
    MAX_ELEMS_PER_LAUNCH,
    histc_accumulate,
    outputs,
    sm_count,
)

MAX_C = 32768
# Elements a thread holds (chunks of 8; two keys a register): 32 fits the 64 registers a thread has at
# 1024 threads a block without spilling.  Wide rows (C > 8192) hold 48: twice the rows in flight and
# half the threads per barrier at the price of a few spilled registers (H200, [65536, 12288] bf16:
# 2.58 ms instead of 3.44).  MAXACT_CUDA_ELEMS (32, 48 or 64) overrides it for wide rows.
_ELEMS_PER_THREAD = 32
_ELEMS_WIDE = int(os.environ.get("MAXACT_CUDA_ELEMS", "48"))
if _ELEMS_WIDE not in (32, 48, 64):
    raise ValueError(f"MAXACT_CUDA_ELEMS must be 32, 48 or 64, not {_ELEMS_WIDE}")
_KEYS = 1 << 15
# The median's compares as packed fp16 (count_below in row_stats.cu); False keeps the integer SIMD path
# everywhere (benchmarks/bench_kernels.py compares the two).
_HALF_CMP = True
# The dtypes this kernel takes, with their KIND code (common.DTYPE_KIND): the 16-bit ones, bf16 0 and fp16 1.
DTYPES = {dt: k for dt, k in DTYPE_KIND.items() if k < 2}

# The kernel, compiled once per variant (defines) and device; see row_stats.cu.
SOURCE = Path(__file__).with_name("row_stats.cu").read_text(encoding="utf-8")


def elems_per_thread(c: int) -> int:
    return _ELEMS_WIDE if c > 8192 else _ELEMS_PER_THREAD


def group_size(c: int, elems: int | None = None) -> int:
    """Threads per row: the smallest power of two >= 32 giving each thread at most ``elems`` elements."""
    need = -(-c // (elems or elems_per_thread(c)))
    return max(32, 1 << max(0, (need - 1).bit_length()))


def launch_shape(c: int, elems: int | None = None) -> tuple[int, int, int, int]:
    """(G threads per row, chunks of 8 elements per thread, groups per block, threads per block)."""
    g = group_size(c, elems)
    nch = -(-c // (8 * g))
    groups = 15 if g == 64 else 1024 // g  # named barriers 1..15 (0 is __syncthreads)
    return g, nch, groups, groups * g


def defines(kind: int, c: int, vec: bool, median: bool, hist: bool, elems: int | None = None) -> dict:
    g, nch, groups, threads = launch_shape(c, elems)
    return {"KIND": kind, "G": g, "NCH": nch, "NGROUPS": groups, "THREADS": threads, "VEC": int(vec),
            "MEDIAN": int(median), "HIST": int(hist), "HALFCMP": int(_HALF_CMP)}


def source_for(d: dict) -> str:
    return "".join(f"#define {k} {v}\n" for k, v in d.items()) + SOURCE


# ----------------------------------------------------------------------------------- bin table
_TABLES: dict = {}


@torch.no_grad()
def key_bin_table(dtype: torch.dtype, device) -> torch.Tensor:
    """int32 [32768]: the log10 bin of each |a| bit pattern of a 16-bit dtype, -1 where not counted.

    Built with the torch path's own ops on ``device`` (log10, clamp, ``histc``), so the kernel's
    histogram equals the torch path's there: positive finite values grow with their bit pattern and the
    binning is monotone, so the per-bin counts of all patterns fix each pattern's bin.
    """
    device = torch.device(device)
    key = (dtype, str(device))
    if key in _TABLES:
        return _TABLES[key]
    exp_all = EXP_ALL[DTYPES[dtype]]
    keys = torch.arange(_KEYS, dtype=torch.int32, device=device)
    vals = keys.to(torch.int16).view(dtype).float()
    counted = (keys > 0) & (keys < exp_all)
    la = torch.log10(vals.clamp_min(1e-30)).clamp(HIST_LOG10_LO, HIST_LOG10_HI - 1e-6)
    la = torch.where(counted, la, HIST_LOG10_HI + 100.0)
    counts = torch.zeros(HIST_BINS, dtype=torch.int64, device=device)
    histc_accumulate(counts, la)
    if int(counts.sum()) != exp_all - 1:
        raise RuntimeError("maxact.measurement.kernels.cuda: the bin table does not cover every finite pattern")
    table = torch.full((_KEYS,), -1, dtype=torch.int32, device=device)
    table[1:exp_all] = torch.repeat_interleave(torch.arange(HIST_BINS, dtype=torch.int32, device=device), counts)
    _TABLES[key] = table
    return table


# ------------------------------------------------------------------------------------ compile
_COMPILED: dict = {}
_LOCK = threading.Lock()
_STATE = {"failed": None}


def available() -> bool:
    """Whether the kernel can be compiled and launched here (CUDA, NVRTC) and has not been disabled."""
    return (_STATE["failed"] is None and torch.cuda.is_available() and torch.version.cuda is not None
            and hasattr(torch.cuda, "_compile_kernel"))


def supports(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in DTYPES and 0 < x.shape[-1] <= MAX_C and available()


def _kernel(d: dict, device: torch.device):
    key = (tuple(sorted(d.items())), device.index)
    k = _COMPILED.get(key)
    if k is None:
        with _LOCK, torch.cuda.device(device):
            k = torch.cuda._compile_kernel(source_for(d), "maxact_row_stats")
            if d["HIST"]:
                k.set_shared_memory_config(_shared_bytes(d))
            _COMPILED[key] = k
    return k


def _shared_bytes(d: dict) -> int:
    return (_KEYS + HIST_BINS) * 4 if d["HIST"] else 0


def kernel_attributes(k) -> dict:
    """Registers per thread and local (spill) bytes of a compiled kernel, for the benchmarks."""
    lib = torch.cuda._utils._get_gpu_runtime_library()
    out = {}
    for name, attr in (("registers", 4), ("local_bytes", 3), ("static_shared_bytes", 1)):
        v = ctypes.c_int()
        lib.cuFuncGetAttribute(ctypes.byref(v), attr, k.func)
        out[name] = v.value
    return out


@torch.no_grad()
def row_stats(x: torch.Tensor, row_valid_u8: torch.Tensor, hist: torch.Tensor | None, want_median: bool) -> dict:
    """The row_stats contract with the CUDA kernel; ``row_valid_u8`` is uint8 [N] on x's device, ``hist`` int64 [512].

    Call :func:`maxact.measurement.kernels.row_stats` (which checks :func:`supports`) rather than this.
    """
    n, c = x.shape
    dev = x.device
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    kind = DTYPES[x.dtype]
    x = x.contiguous()
    vec = c % 8 == 0 and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0
    d = defines(kind, c, vec, want_median, hist is not None)
    f = torch.empty(6, n, dtype=torch.float32, device=dev)
    i = torch.empty(4, n, dtype=torch.int32, device=dev)
    if hist is not None:
        assert hist.dtype == torch.int64 and hist.is_contiguous() and hist.numel() == HIST_BINS
        table = key_bin_table(x.dtype, dev)
    else:
        table = f  # unused pointer
    hist_arg = hist if hist is not None else f
    xs = x.view(torch.int16)
    rows_per_launch = max(1, MAX_ELEMS_PER_LAUNCH // c)
    threads, groups = d["THREADS"], d["NGROUPS"]
    # Launch on x's device (a model split over GPUs calls this for any of them).
    on_dev = torch.cuda.device(dev) if dev.index != torch.cuda.current_device() else contextlib.nullcontext()
    with on_dev:
        k = _kernel(d, dev)
        for r0 in range(0, n, rows_per_launch):
            r1 = min(n, r0 + rows_per_launch)
            nr = r1 - r0
            blocks = max(1, min(sm_count(dev), -(-nr // groups)))
            # Kernel order: max, min, sum, sumsq, abssum (f[0:5]), count, nan, inf, zero (i[0:4]), median (f[5]).
            args = [xs[r0:r1], row_valid_u8[r0:r1]] + [f[j, r0:] for j in range(5)] + [i[j, r0:] for j in range(4)]
            args += [f[5, r0:], table, hist_arg, nr, c, x.stride(0), (c + 1) // 2]
            k(grid=(blocks, 1, 1), block=(threads, 1, 1), args=args, shared_mem=_shared_bytes(d))
    out = outputs(f[:5], i)
    if want_median:
        out["median"] = f[5]
    return out


def disabled_reason() -> str | None:
    """Why the kernel was disabled in this process (:func:`disable`), or None while it is not."""
    return _STATE["failed"]


def disable(reason: str) -> None:
    """Stop using the CUDA kernel for the rest of the process (compile or launch failure)."""
    if _STATE["failed"] is None:
        _STATE["failed"] = reason
        warnings.warn(f"maxact: CUDA row-statistics kernel disabled ({reason}); using the Triton/torch path",
                      RuntimeWarning, stacklevel=3)


__all__ = ["DTYPES", "MAX_C", "SOURCE", "available", "supports", "row_stats", "key_bin_table", "launch_shape", "defines",
           "source_for", "kernel_attributes", "disable", "disabled_reason", "group_size"]

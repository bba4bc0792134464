"""Fused per-row statistics for 16-bit activations as a CUDA kernel compiled at run time (NVRTC).

Same contract as :func:`maxact.kernels.row_stats` (see there), for bf16/fp16 ``[N, C]`` inputs with
``C <= 32768`` on CUDA.  Why a CUDA kernel next to the Triton one: the two expensive statistics need
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
Anything unavailable makes :func:`available` false, and :mod:`maxact.kernels` falls back to Triton.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings

import torch

from .kernels import _EXP_ALL, _MAX_ELEMS_PER_LAUNCH, HIST_BINS, HIST_LOG10_HI, HIST_LOG10_LO, _sm_count
from .kernels import _KIND as _ALL_KINDS
from .kernels import histc_accumulate, outputs

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
# The median's compares as packed fp16 (count_below in SOURCE); False keeps the integer SIMD path
# everywhere (benchmarks/bench_kernels.py compares the two).
_HALF_CMP = True
_KIND = {dt: k for dt, k in _ALL_KINDS.items() if k < 2}  # the 16-bit kinds (bf16 0, fp16 1) of maxact.kernels

SOURCE = r"""
#define FULL 0xffffffffu
#define EXP_ALL (KIND == 0 ? 0x7F80u : 0x7C00u)
#define WPG (G / 32)
#define NKEYS 32768
#define POS_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float to_f32(unsigned int h) {
#if KIND == 0
    return __uint_as_float(h << 16);
#else
    float f;
    unsigned short s = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
#endif
}

// Packed f16x2 compare / add (sm_53+): 1.0 where a < b per 16-bit lane; lane-wise sum.
__device__ __forceinline__ unsigned int hlt2(unsigned int a, unsigned int b) {
    unsigned int d;
    asm("set.lt.f16x2.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ unsigned int hadd2(unsigned int a, unsigned int b) {
    unsigned int d;
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ float h2f(unsigned int h) {
    float f;
    unsigned short s = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
}

// Number of this thread's keys below cand. Keys are 15-bit |a| patterns (0xFFFF past the row's end).
// Read as fp16 numbers, non-negative patterns below 0x7C00 (fp16 inf) order like integers, so where the
// row's largest key is below it the count is a packed fp16 compare and add per two keys (FP16 pipe,
// 2 instructions) instead of the integer SIMD emulation (__vsetltu2, ~4 integer instructions).
// 0xFFFF is an fp16 NaN, which compares false; cand never exceeds 0x7C00 there (it is at most the
// row's largest key with one lower bit set), and fp16 inf compares above every finite key.
template <int NK>
__device__ __forceinline__ int count_below(const unsigned int (&kp)[NK], unsigned int cand, bool half_cmp) {
    const unsigned int c2 = cand | (cand << 16);
    if (half_cmp) {
        unsigned int a0 = 0u, a1 = 0u;  // f16x2 counts, at most NK per lane: exact
#pragma unroll
        for (int j = 0; j < NK; j += 2) {
            a0 = hadd2(a0, hlt2(kp[j], c2));
            if (j + 1 < NK) a1 = hadd2(a1, hlt2(kp[j + 1], c2));
        }
        a0 = hadd2(a0, a1);
        return (int)(h2f(a0 & 0xFFFFu) + h2f(a0 >> 16));
    }
    unsigned int acc = 0u;
#pragma unroll
    for (int j = 0; j < NK; ++j) acc += __vsetltu2(kp[j], c2);
    return (int)((acc & 0xFFFFu) + (acc >> 16));
}

__device__ __forceinline__ void group_sync(int g) {
#if G > 32
    asm volatile("bar.sync %0, %1;" :: "r"(g + 1), "r"(G) : "memory");
#endif
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
maxact_row_stats(const unsigned short* __restrict__ x, const unsigned char* __restrict__ valid,
                 float* __restrict__ o_max, float* __restrict__ o_min, float* __restrict__ o_sum,
                 float* __restrict__ o_sumsq, float* __restrict__ o_abssum, int* __restrict__ o_count,
                 int* __restrict__ o_nan, int* __restrict__ o_inf, int* __restrict__ o_zero,
                 float* __restrict__ o_med, const int* __restrict__ bin_of_key,
                 unsigned long long* __restrict__ hist, int N, int C, int stride, int K)
{
    const int tid = threadIdx.x;
    const int g = tid / G, t = tid % G, lane = tid & 31;
    (void)lane;
#if G > 32
    const int w = t >> 5;
    __shared__ float red_f[2][NGROUPS][WPG][5];
    __shared__ int red_i[2][NGROUPS][WPG][5];
#if MEDIAN
    __shared__ int red_c[2][NGROUPS][WPG];
#endif
#endif
#if HIST
    extern __shared__ unsigned int smem[];
    unsigned int* key_hist = smem;          // [NKEYS] counts per |a| bit pattern
    unsigned int* bin_hist = smem + NKEYS;  // [512] log10 bins
    for (int i = tid; i < NKEYS + 512; i += THREADS) smem[i] = 0u;
    __syncthreads();
#endif
    int parity = 0;
    for (long long row = (long long)blockIdx.x * NGROUPS + g; row < N; row += (long long)gridDim.x * NGROUPS) {
        const bool rv = valid[row] != 0;
        const unsigned short* xr = x + row * (long long)stride;
        unsigned int kp[NCH * 4];  // 16-bit keys, two per register
        float s1 = 0.f, s2 = 0.f, sa = 0.f, mx = -POS_INF, mn = POS_INF;
        int nf = 0, nn = 0, ni = 0, nz = 0;
#if MEDIAN
        unsigned int km = 0u;  // largest in-row key: picks the median's compare (count_below)
#endif
#pragma unroll
        for (int j = 0; j < NCH; ++j) {
            const int base = (j * G + t) * 8;
            unsigned int hv[4] = {0u, 0u, 0u, 0u};
            if (rv && base < C) {
#if VEC
                const uint4 u = __ldcs(reinterpret_cast<const uint4*>(xr + base));
                hv[0] = u.x; hv[1] = u.y; hv[2] = u.z; hv[3] = u.w;
#else
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if (base + e < C) hv[e >> 1] |= ((unsigned int)__ldcs(xr + base + e)) << (16 * (e & 1));
#endif
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const unsigned int h = (hv[e >> 1] >> (16 * (e & 1))) & 0xFFFFu;
                const bool inb = base + e < C;
                const unsigned int bits = h & 0x7FFFu;
                const bool live = rv && inb;
                const bool fin = bits < EXP_ALL;
                const bool val = live && fin;
                nn += (live && bits > EXP_ALL);
                ni += (live && bits == EXP_ALL);
                if (val) {
                    const float v = to_f32(h);
                    s1 += v;
                    s2 = fmaf(v, v, s2);
                    sa += fabsf(v);
                    mx = fmaxf(mx, v);
                    mn = fminf(mn, v);
                    nf += 1;
                    if (bits == 0u) nz += 1;
#if HIST
                    else atomicAdd(&key_hist[bits], 1u);
#endif
                }
                const unsigned int key = inb ? (val ? bits : 0u) : 0xFFFFu;
#if MEDIAN
                km = max(km, inb ? key : 0u);
#endif
                if (e & 1) kp[j * 4 + (e >> 1)] |= key << 16;
                else kp[j * 4 + (e >> 1)] = key;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            s1 += __shfl_xor_sync(FULL, s1, o);
            s2 += __shfl_xor_sync(FULL, s2, o);
            sa += __shfl_xor_sync(FULL, sa, o);
            mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
            mn = fminf(mn, __shfl_xor_sync(FULL, mn, o));
        }
        nf = __reduce_add_sync(FULL, nf);
        nn = __reduce_add_sync(FULL, nn);
        ni = __reduce_add_sync(FULL, ni);
        nz = __reduce_add_sync(FULL, nz);
#if MEDIAN
        km = __reduce_max_sync(FULL, km);
#endif
#if G > 32
        // Double-buffered by row parity: the next row's writes come after this row's barriers.
        if (lane == 0) {
            float* f = red_f[parity][g][w];
            f[0] = s1; f[1] = s2; f[2] = sa; f[3] = mx; f[4] = mn;
            int* q = red_i[parity][g][w];
            q[0] = nf; q[1] = nn; q[2] = ni; q[3] = nz;
#if MEDIAN
            q[4] = (int)km;
#endif
        }
        group_sync(g);
#if MEDIAN
        for (int q = 0; q < WPG; ++q) km = max(km, (unsigned int)red_i[parity][g][q][4]);
#endif
        if (t == 0) {
            s1 = 0.f; s2 = 0.f; sa = 0.f; mx = -POS_INF; mn = POS_INF; nf = 0; nn = 0; ni = 0; nz = 0;
            for (int q = 0; q < WPG; ++q) {
                const float* f = red_f[parity][g][q];
                s1 += f[0]; s2 += f[1]; sa += f[2]; mx = fmaxf(mx, f[3]); mn = fminf(mn, f[4]);
                const int* c = red_i[parity][g][q];
                nf += c[0]; nn += c[1]; ni += c[2]; nz += c[3];
            }
        }
#endif
        if (t == 0) {
            o_max[row] = mx; o_min[row] = mn; o_sum[row] = s1; o_sumsq[row] = s2; o_abssum[row] = sa;
            o_count[row] = nf; o_nan[row] = nn; o_inf[row] = ni; o_zero[row] = nz;
        }
#if MEDIAN
        // K-th smallest key: the largest p with #(key < p) < K, one bit at a time (MSB first).
        unsigned int p = 0u;
        // Uniform over the group (km is group-reduced): fp16 keys are always below 0x7C00; bf16 keys
        // reach it only for |a| >= 2**121.
        const bool half_cmp = HALFCMP && (KIND == 1 || km < 0x7C00u);
        if (rv) {  // uniform over the group: invalid rows are all zeros, median 0
#pragma unroll 1
            for (int b = 14; b >= 0; --b) {
                const unsigned int cand = p | (1u << b);
                int cnt = __reduce_add_sync(FULL, count_below(kp, cand, half_cmp));
#if G > 32
                if (lane == 0) red_c[b & 1][g][w] = cnt;
                group_sync(g);
                cnt = 0;
                for (int q = 0; q < WPG; ++q) cnt += red_c[b & 1][g][q];
#endif
                if (cnt < K) p = cand;
            }
        }
        if (t == 0) o_med[row] = to_f32(p);
#endif
        parity ^= 1;
    }
#if HIST
    __syncthreads();
    for (int i = tid; i < NKEYS; i += THREADS) {
        const unsigned int c = key_hist[i];
        if (c) {
            const int b = bin_of_key[i];
            if (b >= 0) atomicAdd(&bin_hist[b], c);
        }
    }
    __syncthreads();
    for (int i = tid; i < 512; i += THREADS) {
        const unsigned int c = bin_hist[i];
        if (c) atomicAdd(&hist[i], (unsigned long long)c);
    }
#endif
}
"""


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
    exp_all = _EXP_ALL[_KIND[dtype]]
    keys = torch.arange(_KEYS, dtype=torch.int32, device=device)
    vals = keys.to(torch.int16).view(dtype).float()
    counted = (keys > 0) & (keys < exp_all)
    la = torch.log10(vals.clamp_min(1e-30)).clamp(HIST_LOG10_LO, HIST_LOG10_HI - 1e-6)
    la = torch.where(counted, la, HIST_LOG10_HI + 100.0)
    counts = torch.zeros(HIST_BINS, dtype=torch.int64, device=device)
    histc_accumulate(counts, la)
    if int(counts.sum()) != exp_all - 1:
        raise RuntimeError("maxact.cuda_kernels: the bin table does not cover every finite pattern")
    table = torch.full((_KEYS,), -1, dtype=torch.int32, device=device)
    table[1:exp_all] = torch.repeat_interleave(torch.arange(HIST_BINS, dtype=torch.int32, device=device), counts)
    _TABLES[key] = table
    return table


# ------------------------------------------------------------------------------------ compile
_COMPILED: dict = {}
_LOCK = threading.Lock()
_STATE = {"failed": None}


def available() -> bool:
    return (_STATE["failed"] is None and torch.cuda.is_available() and torch.version.cuda is not None
            and hasattr(torch.cuda, "_compile_kernel"))


def supports(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in _KIND and 0 < x.shape[-1] <= MAX_C and available()


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
    """The kernels.row_stats contract; ``row_valid_u8`` is uint8 [N] on x's device, ``hist`` int64 [512]."""
    n, c = x.shape
    dev = x.device
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    kind = _KIND[x.dtype]
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
    rows_per_launch = max(1, _MAX_ELEMS_PER_LAUNCH // c)
    threads, groups = d["THREADS"], d["NGROUPS"]
    # Launch on x's device (a model split over GPUs calls this for any of them).
    on_dev = torch.cuda.device(dev) if dev.index != torch.cuda.current_device() else contextlib.nullcontext()
    with on_dev:
        k = _kernel(d, dev)
        for r0 in range(0, n, rows_per_launch):
            r1 = min(n, r0 + rows_per_launch)
            nr = r1 - r0
            blocks = max(1, min(_sm_count(dev), -(-nr // groups)))
            # Kernel order: max, min, sum, sumsq, abssum (f[0:5]), count, nan, inf, zero (i[0:4]), median (f[5]).
            args = [xs[r0:r1], row_valid_u8[r0:r1]] + [f[j, r0:] for j in range(5)] + [i[j, r0:] for j in range(4)]
            args += [f[5, r0:], table, hist_arg, nr, c, x.stride(0), (c + 1) // 2]
            k(grid=(blocks, 1, 1), block=(threads, 1, 1), args=args, shared_mem=_shared_bytes(d))
    out = outputs(f[:5], i)
    if want_median:
        out["median"] = f[5]
    return out


def disable(reason: str) -> None:
    """Stop using the CUDA kernel for the rest of the process (compile or launch failure)."""
    if _STATE["failed"] is None:
        _STATE["failed"] = reason
        warnings.warn(f"maxact: CUDA row-statistics kernel disabled ({reason}); using the Triton/torch path",
                      RuntimeWarning, stacklevel=3)


__all__ = ["MAX_C", "SOURCE", "available", "supports", "row_stats", "key_bin_table", "launch_shape", "defines",
           "source_for", "kernel_attributes", "disable", "group_size"]

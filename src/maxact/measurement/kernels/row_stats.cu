
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

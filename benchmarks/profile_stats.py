"""Time each part of one PointStats.update (where the overhead goes).

    python benchmarks/profile_stats.py                                   # GPU: [65536, 4096|12288] bf16
    python benchmarks/profile_stats.py --device cpu --tokens 3072 --channels 640 2048
"""

from __future__ import annotations

import argparse
import time

import torch

from maxact.measurement import statistics as S


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(fn, n=5):
    fn()
    _sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync()
    return (time.perf_counter() - t) / n * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--channels", type=int, nargs="+", default=[4096, 12288])
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cpu":  # the CPU path: float32 activations; update chunk sizes compared
        for c in a.channels:
            x = torch.randn(a.tokens, c) * 3
            valid = torch.ones(a.tokens, dtype=torch.bool)
            valid[int(a.tokens * 0.8):] = False
            info = S.TokenInfo(valid, torch.zeros(a.tokens, dtype=torch.long), torch.arange(a.tokens),
                               torch.zeros(a.tokens, dtype=torch.long))
            r = {"read (x.sum)": bench(lambda: x.sum())}
            default = S._CHUNK_ELEMENTS_CPU
            for chunk in (1 << 26, 1 << 20, 1 << 18, 1 << 16):
                S._CHUNK_ELEMENTS_CPU = chunk
                r[f"update full, chunk 2**{chunk.bit_length() - 1}"] = bench(lambda: S.PointStats("p", 1, dev).update(x, info))
                r[f"update basic, chunk 2**{chunk.bit_length() - 1}"] = bench(
                    lambda: S.PointStats("p", 1, dev, full=False).update(x, info))
            S._CHUNK_ELEMENTS_CPU = default
            print(f"tokens={a.tokens} channels={c}: " + "; ".join(f"{k} {v:.2f} ms" for k, v in r.items()), flush=True)
        return
    for c in a.channels:
        x = torch.randn(a.tokens, c, device=dev, dtype=torch.bfloat16)
        valid = torch.ones(a.tokens, dtype=torch.bool, device=dev)
        info = S.TokenInfo(valid, torch.zeros(a.tokens, dtype=torch.long, device=dev), torch.arange(a.tokens, device=dev),
                           torch.zeros(a.tokens, dtype=torch.long, device=dev))
        ps = S.PointStats("p", 10, dev)
        ps_basic = S.PointStats("p", 10, dev, full=False)
        rows = S._CHUNK_ELEMENTS // c
        xc = x[:rows]
        la = torch.rand(xc.numel(), device=dev)
        r = {
            "read bf16 (x.sum)": bench(lambda: x.sum()),
            "update full": bench(lambda: ps.update(x, info)),
            "update basic": bench(lambda: ps_basic.update(x, info)),
            "fused partials (compiled, 1 chunk)": bench(lambda: S._fused_partials_compiled(xc, valid[:rows], True)),
            "fused partials (eager, 1 chunk)": bench(lambda: S._fused_partials(xc, valid[:rows], True)),
            "kthvalue bf16 (1 chunk)": bench(lambda: xc.abs().kthvalue((c + 1) // 2, dim=-1)),
            "histc (1 chunk)": bench(lambda: [torch.histc(p, 512, -8, 8) for p in la.split(1 << 24)]),
            "topk tokens": bench(lambda: x.float().abs().amax(-1).topk(100)),
        }
        print(f"tokens={a.tokens} channels={c} chunk_rows={rows}: " + "; ".join(f"{k} {v:.2f} ms" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()

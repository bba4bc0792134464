"""On CUDA: PointStats through the fused kernel (CUDA or Triton, as MAXACT_KERNEL picks) equals the torch path."""

import math

import torch

from maxact.measurement import kernels as K
from maxact.measurement import statistics as S


def main():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(3, 2048, 1536, device=dev, generator=g) * 3).to(torch.bfloat16)
    x[1, 5, 7] = -4000.0
    x[2, 9, 3] = float("nan")
    mask = torch.ones(3, 2048, dtype=torch.bool, device=dev)
    mask[0, 1500:] = False
    info = S.TokenInfo(mask.reshape(-1), torch.arange(3, device=dev)[:, None].expand(3, 2048).reshape(-1),
                       torch.arange(2048, device=dev).expand(3, 2048).reshape(-1), torch.zeros(3 * 2048, dtype=torch.long, device=dev))
    out = {}
    for name, flag in (("triton", True), ("torch", False)):
        K.FUSED_ENABLED = flag
        ps = S.PointStats("p", 3, dev)
        ps.update(x, info)
        out[name] = ps.finalize()
    a, b = out["triton"], out["torch"]
    bad = []
    for k, v in b.items():
        w = a[k]
        if isinstance(v, float) and isinstance(w, float):
            if not (math.isclose(v, w, rel_tol=1e-5, abs_tol=1e-7) or (math.isnan(v) and math.isnan(w))):
                bad.append((k, w, v))
        elif v != w:
            bad.append((k, str(w)[:80], str(v)[:80]))
    print("triton vs torch path:", "IDENTICAL within 1e-5" if not bad else f"DIFFER: {bad}")


if __name__ == "__main__":
    main()

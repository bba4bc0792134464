"""Launch configurations of the linear-input column-statistics kernel (maxact.measurement.kernels.column_stats)
against reading the tensor once, on the shapes of the Qwen3-8B (dense) and Qwen3-30B-A3B (experts) inputs.

    python benchmarks/bench_column_stats.py            # prints ms per call and the fastest config per case

Each line: the config (rows per tile, channels per program, warps, programs per SM), ms per call and the
ratio to one read of the same bytes (``x.sum(dtype=float32)``, in the same process). The last line,
``BEST dense=...``, is the fastest config on the dense cases (what ``MAXACT_COLUMN_STATS`` takes).
"""

from __future__ import annotations

import itertools

import torch
from bench_kernels import cuda_ms as timed  # the same CUDA-event timing (run from the repo root as shown)

from maxact.measurement.kernels import column_stats as K


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    cases = {}
    for c in (4096, 12288):  # q/k/v, o, gate/up inputs; the down projection's input
        x = torch.randn(65536, c, device=dev, dtype=torch.bfloat16, generator=g)
        cases[f"dense {65536}x{c}"] = (x, {"valid": torch.ones(65536, dtype=torch.bool, device=dev)}, x.numel())
    x = torch.randn(65536, 2048, device=dev, dtype=torch.bfloat16, generator=g)
    ids = torch.randint(0, 128, (65536 * 8,), device=dev, generator=g)
    srt, perm = torch.sort(ids)
    cases["experts gate_up 65536x2048 top-8 of 128"] = (x, {"rows": perm // 8, "groups": srt, "n_groups": 128}, 65536 * 8 * 2048)
    d = torch.randn(65536 * 8, 768, device=dev, dtype=torch.bfloat16, generator=g)
    cases["experts down 524288x768 of 128"] = (d, {"rows": perm, "groups": srt, "n_groups": 128}, d.numel())
    configs = [*itertools.product((16, 32), (128, 256), (4, 8), (8,)), (32, 64, 4, 8), (64, 64, 4, 8), (32, 128, 8, 4)]
    dense_total: dict = {}
    for name, (x, kw, elems) in cases.items():
        read = timed(lambda: x.sum(dtype=torch.float32))
        print(f"{name}: one read {read:.3f} ms", flush=True)
        best = None
        for cfg in configs:
            bn, bc, nw, _ = cfg
            if bn * bc // (32 * nw) > 64:  # too many elements per thread for four accumulators
                continue
            try:
                ms = timed(lambda: K.column_stats(x, config=cfg, **kw))
            except Exception as e:  # noqa: BLE001 - an unlaunchable config is skipped
                print(f"  {cfg}: {type(e).__name__}", flush=True)
                continue
            print(f"  {','.join(map(str, cfg))}: {ms:.3f} ms ({ms / read:.2f}x one read)", flush=True)
            if name.startswith("dense"):
                dense_total[cfg] = dense_total.get(cfg, 0.0) + ms
            if best is None or ms < best[1]:
                best = (cfg, ms)
        print(f"  fastest {','.join(map(str, best[0]))}: {best[1]:.3f} ms ({best[1] / read:.2f}x one read)", flush=True)
    cfg = min(dense_total, key=dense_total.get)
    print(f"BEST dense={','.join(map(str, cfg))}")


if __name__ == "__main__":
    main()

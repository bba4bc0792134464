"""One-off: the deterministic column-statistics kernels against the earlier atomics version, same process, same
inputs (benchmarks/bench_column_stats.py's shapes), and whether each gives the same bits on a second call.

The earlier kernel is not kept in the tree; put it beside this file first, then run from the repo root:

    git show 0f71c4f:src/maxact/measurement/kernels/column_stats.py > benchmarks/measured/h100-2026-12-06-shards/column_stats_atomic.py
    PYTHONPATH=benchmarks python3 benchmarks/measured/h100-2026-12-06-shards/compare_column_stats.py
"""

from __future__ import annotations

import torch
from bench_kernels import cuda_ms as timed
from column_stats_atomic import column_stats as old

from maxact.measurement.kernels.column_stats import column_stats as new


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    cases = {}
    for c in (4096, 12288):
        x = torch.randn(65536, c, device=dev, dtype=torch.bfloat16, generator=g)
        cases[f"dense 65536x{c}"] = (x, {"valid": torch.ones(65536, dtype=torch.bool, device=dev)})
    x = torch.randn(65536, 2048, device=dev, dtype=torch.bfloat16, generator=g)
    ids = torch.randint(0, 128, (65536 * 8,), device=dev, generator=g)
    srt, perm = torch.sort(ids)
    cases["experts gate_up 65536x2048 top-8 of 128"] = (x, {"rows": perm // 8, "groups": srt, "n_groups": 128})
    d = torch.randn(65536 * 8, 768, device=dev, dtype=torch.bfloat16, generator=g)
    cases["experts down 524288x768 of 128"] = (d, {"rows": perm, "groups": srt, "n_groups": 128})
    for name, (x, kw) in cases.items():
        t_old = timed(lambda: old(x, **kw))
        t_new = timed(lambda: new(x, **kw))
        a, b = new(x, **kw), new(x, **kw)
        o1, o2 = old(x, **kw), old(x, **kw)
        same_new = all(torch.equal(p, q) for p, q in zip(a, b))
        same_old = all(torch.equal(p, q) for p, q in zip(o1, o2))
        rel = max(float(((p.double() - q.double()).abs() / q.double().abs().clamp_min(1e-30)).max()) for p, q in zip(a[1:3], o1[1:3]))
        print(f"{name}: atomics {t_old:.3f} ms, deterministic {t_new:.3f} ms ({t_new / t_old:.2f}x); "
              f"repeat bit-identical: atomics {same_old}, deterministic {same_new}; max rel diff between them {rel:.2e}; "
              f"max equal {torch.equal(a[0], o1[0])}", flush=True)


if __name__ == "__main__":
    main()

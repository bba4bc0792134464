"""Exercise the out-of-memory path for real on a GPU: a batch too large for the free memory is halved
and the run continues from that batch. Leaves only --free-gib of GPU memory free, then measures a
random-init model on one oversized batch.  Then, with the memory given back, measures the same samples
one per batch and checks that both runs agree (a batch that ran out of memory mid-forward committed
nothing)."""

from __future__ import annotations

import argparse
import logging
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="qwen3-1.7b")
    ap.add_argument("--free-gib", type=float, default=6.0)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--length", type=int, default=8192)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.throughput import build
    from maxact.measurement.batching import make_batches, run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.summary import assemble_result

    dev = torch.device("cuda")
    model = build(a.preset, torch.bfloat16, dev, None)
    free, total = torch.cuda.mem_get_info(dev)
    hog = torch.empty(int(free - a.free_gib * 2**30), dtype=torch.uint8, device=dev)
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, model.config.vocab_size, (a.length,), generator=g).tolist() for _ in range(a.samples)]
    batches = make_batches([len(s) for s in samples], batch_size=a.samples)  # one oversized batch
    meas = Measurement(model, len(samples), dev)
    t = time.perf_counter()
    run = run_batches(meas, samples, batches, 0)
    r = assemble_result(meas, [str(i) for i in range(len(samples))], None)
    print(f"OOM splits: {run['oom_splits']}")
    print(f"finished {a.samples} x {a.length} tokens in {time.perf_counter() - t:.1f} s with {a.free_gib} GiB free; "
          f"global max {r['global_max_activation']} at {r['global_max_location']}")
    del hog
    torch.cuda.empty_cache()
    ref_meas = Measurement(model, len(samples), dev)
    run_batches(ref_meas, samples, make_batches([len(s) for s in samples], batch_size=1), 0)
    ref = assemble_result(ref_meas, [str(i) for i in range(len(samples))], None)
    bad = []
    for comp, st in ref["per_layer_stats"].items():
        got = r["per_layer_stats"][comp]
        for k in ("count", "max", "min", "nan_count", "n_tokens"):
            if got.get(k) != st.get(k):
                bad.append(f"{comp}.{k}: {got.get(k)} vs {st.get(k)}")
        for k in ("mean", "rms", "sun_max_ratio"):
            if st.get(k) is not None and abs(got[k] - st[k]) > 1e-4 * max(abs(st[k]), 1e-6):
                bad.append(f"{comp}.{k}: {got[k]} vs {st[k]}")
    print(f"OOM run vs one sample per batch: {len(ref['per_layer_stats'])} points, "
          f"{'agree' if not bad else str(len(bad)) + ' differ: ' + '; '.join(bad[:5])}")


if __name__ == "__main__":
    main()

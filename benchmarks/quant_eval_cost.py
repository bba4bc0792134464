"""What the quant_eval stage costs next to the measurement it follows, at full shape, in one process.

Random weights give no meaningful ΔNLL: this is for time and memory only. A random-init model of a preset shape
(``benchmarks/throughput.py``'s presets) on the GPU; the packed measurement with the linear-input recording over
``--samples`` corpus-like samples (the study's own cost), its calibration files written by maxact's writer
(input scales and act_scales), then :func:`maxact.quant.evaluate.evaluate` over ``--heldout`` samples of
``--heldout-tokens`` tokens with every format (what the quant_eval rule runs per checkpoint). Prints seconds, tokens
and peak memory of each and the ratio quant_eval / measurement (and per token).

    python benchmarks/quant_eval_cost.py --preset qwen3-8b --samples 48 --heldout 8 --heldout-tokens 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import PRESETS, build, packed_batches, sync, workload  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-8b", choices=sorted(PRESETS))
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--max-len", type=int, default=5422)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--heldout-tokens", type=int, default=256)
    ap.add_argument("--formats", default="fp8_static,int8_static,int8_dynamic,fp8_dynamic,smoothquant_w8a8")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args(argv)

    from maxact.measurement.batching import run_batches
    from maxact.measurement.hooks import Measurement
    from maxact.measurement.packing import resolve_packing
    from maxact.measurement.settings import resolve_dtype
    from maxact.measurement.summary import assemble_result
    from maxact.models.registry import family_for
    from maxact.quant.evaluate import evaluate
    from maxact.quant.formats import read_scale_names
    from maxact.stages.calibration import write_calibration

    dev = torch.device(a.device)
    dtype = resolve_dtype(a.dtype, dev)
    model = build(a.preset, dtype, dev, None)
    family = family_for(model.config)
    method, _ = resolve_packing(family, "auto", dev.type, dtype, model)
    lengths, samples, batches, _ = workload(model.config.vocab_size, a.samples, a.max_len, 64, 65536)
    packed, _ = packed_batches(samples, lengths, 64, 65536)
    use = packed if method != "padded" else batches

    def measure():
        meas = Measurement(model, len(samples), dev, packing=method, linear_inputs=True)
        run_batches(meas, samples, use, 0)
        res = assemble_result(meas, [str(i) for i in range(len(samples))], None)
        li = meas.linear_inputs
        li.flush()
        out = (res, li.stats, li.experts, li.not_recorded)
        meas.remove()
        return out

    measure()  # warm-up: kernels per shape (not timed)
    torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
    sync(dev)
    t = time.perf_counter()
    res, stats, experts, not_recorded = measure()
    sync(dev)
    t_measure = time.perf_counter() - t
    peak_measure = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0

    g = torch.Generator().manual_seed(7)
    held = [torch.randint(0, model.config.vocab_size, (a.heldout_tokens,), generator=g).tolist() for _ in range(a.heldout)]
    formats = [f for f in a.formats.split(",") if f]
    with tempfile.TemporaryDirectory() as cal:
        write_calibration(Path(cal), stats, experts, ["input_scales", "smoothquant"], "none",
                          {"provenance": {}, "checkpoint": a.preset, "family": family.name}, not_recorded)
        names = read_scale_names(Path(cal) / "input_scales_int8.safetensors")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t = time.perf_counter()
        doc = evaluate(model, held, formats, names, Path(cal))
        sync(dev)
        t_eval = time.perf_counter() - t
    peak_eval = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    n_meas, n_eval = sum(lengths), a.heldout * a.heldout_tokens
    out = {"preset": a.preset, "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "dtype": str(dtype), "packing": method, "measurement": {"samples": a.samples, "tokens": n_meas, "seconds": t_measure,
                                                                   "peak_gib": peak_measure},
           "quant_eval": {"samples": a.heldout, "tokens": n_eval, "formats": formats, "modules": len(names), "seconds": t_eval,
                          "peak_gib": peak_eval,
                          "status": {f: e["status"] for f, e in doc["formats"].items()}},
           "ratio_seconds": t_eval / t_measure, "ratio_seconds_per_token": (t_eval / n_eval) / (t_measure / n_meas),
           "ratio_peak": peak_eval / peak_measure if peak_measure else None}
    print(json.dumps(out, indent=1))
    print(f"\n{a.preset} ({out['device_name']}, {dtype}): measurement with linear inputs {t_measure:.1f} s for {n_meas:,} tokens "
          f"({peak_measure:.1f} GiB); quant_eval ({len(formats)} formats + control, {len(names)} layers) {t_eval:.1f} s for "
          f"{n_eval:,} held-out tokens ({peak_eval:.1f} GiB): {out['ratio_seconds']:.2f}x the measurement's time, "
          f"{out['ratio_seconds_per_token']:.1f}x per token")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Two measurement folders compared as the sharding issue defines equality (tests/measurement/test_shards.py and
benchmarks/shards.py use it).

Exactly equal: extremes, counts, histograms and the quantiles from them, top-k with its provenance, per-sample extremes,
MoE routing counts, the linear inputs' max |x|, token counts and the scales made from them. Float64 sums and what
derives from them (mean, std, rms, mean |a|, the Sun ratio's mean and std, the linear inputs' sum x^2 and sum |x| and
the calibration values made from them): within ``REL`` relative for ``equal`` (the issue's float64-rounding
allowance), and ``bit_identical`` when they are equal too, which the double-double running sums
(maxact.measurement.exactsum) give and the tests ask for."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch

FLOAT_SUMS = {"mean", "std", "abs_mean", "rms", "sun_mean_ratio", "sun_std_ratio"}
REL = 1e-9
#: Tensor names (file:key) whose values are extremes or counts: exactly equal.
EXACT_TENSORS = (":max_abs", ":count", ":nonfinite", "input_scales", "amax", "act_scales")


def close_diffs(a, b, path="$", rel: float = REL, sums_rel: list | None = None) -> list[str]:
    """Where two JSON values differ: floats named in FLOAT_SUMS within ``rel``, everything else exactly (NaN equal to
    NaN). ``sums_rel``, if given, collects the relative difference of every float-sum pair."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b if isinstance(b, dict) else {}))} on one side only"]
        return [d for k in a for d in close_diffs(a[k], b[k], f"{path}.{k}", rel, sums_rel)]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b) if isinstance(b, list) else b!r} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close_diffs(x, y, f"{path}[{i}]", rel, sums_rel)]
    if isinstance(a, float) and isinstance(b, float) and path.rsplit(".", 1)[-1] in FLOAT_SUMS:
        if sums_rel is not None and math.isfinite(a) and math.isfinite(b):
            sums_rel.append(abs(a - b) / max(abs(a), abs(b), 1e-300))
        return [] if math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)) else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def result_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the linear inputs and the calibration files (safetensors, act_scales.pt, imatrix.gguf), float64."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        if f.name == "shard_state.safetensors":
            continue
        out.update({f"{f.name}:{k}": v.double() for k, v in load_file(f).items()})
    if (Path(folder) / "act_scales.pt").exists():
        out.update({f"act_scales:{k}": v.double() for k, v in torch.load(Path(folder) / "act_scales.pt", weights_only=True).items()})
    if (Path(folder) / "imatrix.gguf").exists():
        from gguf import GGUFReader

        out.update({f"imatrix:{t.name}": torch.from_numpy(t.data.copy()).double()
                    for t in GGUFReader(Path(folder) / "imatrix.gguf").tensors})
    return out


def compare_folders(ref: Path, other: Path, rel: float = REL) -> dict:
    """The unsharded folder ``ref`` against a merged one: every difference found (empty lists: equal as defined
    above) and how close the float sums came (``bit_identical``: they were equal too)."""
    a = json.loads((Path(ref) / "activation_stats.json").read_text())
    b = json.loads((Path(other) / "activation_stats.json").read_text())
    sums: list[float] = []
    skip = {"provenance"}
    stats = close_diffs({k: v for k, v in a.items() if k not in skip}, {k: v for k, v in b.items() if k not in skip},
                        rel=rel, sums_rel=sums)
    try:
        pd.testing.assert_frame_equal(pd.read_parquet(Path(ref) / "per_sample_extremes.parquet"),
                                      pd.read_parquet(Path(other) / "per_sample_extremes.parquet"), check_exact=True)
        per_sample = []
    except AssertionError as e:
        per_sample = [str(e)[:1000]]
    ta, tb = result_tensors(ref), result_tensors(other)
    tensors = [f"tensors only on one side: {sorted(set(ta) ^ set(tb))}"] if ta.keys() != tb.keys() else []
    tensor_rel = []
    for key in sorted(set(ta) & set(tb)):
        x, y = ta[key], tb[key]
        if x.shape != y.shape:
            tensors.append(f"{key}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif any(s in key for s in EXACT_TENSORS):
            if not torch.equal(x, y):
                tensors.append(f"{key}: not exactly equal (max |diff| {(x - y).abs().max().item():.3g})")
        else:
            both = torch.isfinite(x) & torch.isfinite(y)
            d = ((x - y).abs() / torch.maximum(x.abs(), y.abs()).clamp_min(1e-300))[both]
            tensor_rel.append(d.max().item() if d.numel() else 0.0)
            if not torch.allclose(x, y, rtol=rel, atol=1e-12, equal_nan=True):
                tensors.append(f"{key}: beyond rel {rel} (max rel {tensor_rel[-1]:.3g})")
    sums += tensor_rel
    return {"stats": stats, "per_sample": per_sample, "tensors": tensors, "equal": not (stats or per_sample or tensors),
            "float_sums_compared": len(sums), "float_sum_max_rel": max(sums, default=0.0),
            "bit_identical": not (stats or per_sample or tensors) and max(sums, default=0.0) == 0.0}

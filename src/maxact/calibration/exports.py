"""Calibration files from the linear-input statistics (:mod:`maxact.measurement.linear_inputs`).

Formats (checked against their consumers' sources):

- ``act_scales.pt``: SmoothQuant's ``get_act_scales`` (mit-han-lab/smoothquant, smoothquant/calibration.py): a
  ``torch.save``d dict, keys the ``named_modules()`` names of the causal-LM model's ``nn.Linear`` layers, values
  fp32 CPU tensors [in_features] of the per-channel max |input|.
- ``input_scales_int8.safetensors`` / ``input_scales_fp8.safetensors``: compressed-tensors' static per-tensor
  ``<module>.input_scale`` (shape [1], fp32): amax / 127.5 (int8, symmetric over -128..127) and amax / 448
  (FP8 E4M3's largest finite value); ``amax_per_channel.safetensors``: ``<module>.input_amax`` [in_features],
  what Model-Optimizer's max calibrator holds for an input quantizer with ``axis=-1``.
- ``awq_stats.safetensors``: ``<module>.input_mean_abs`` [in_features], the per-channel mean |x| AWQ's scale
  search starts from.
- ``imatrix.gguf``: llama.cpp's importance matrix (tools/imatrix/imatrix.cpp ``save_imatrix``, read by
  common/imatrix-loader.cpp and quantize.cpp ``load_imatrix``): ``general.type = "imatrix"``,
  ``imatrix.datasets`` (string array), ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32); per
  weight ``<gguf name>.in_sum2`` (F32, dims [n_in, n_mat], raw sums of x^2) and ``<gguf name>.counts`` (F32,
  dims [1, n_mat], tokens per matrix or per expert). GGUF names come from gguf-py's ``TensorNameMap``.

No file ever holds a zero, NaN or inf scale: a module or expert that no calibration token reached (or whose
every value was zero or not finite) is left out and listed in the file's metadata (``uncovered``), unless
``fill="max_over_layer"`` asks to give an uncovered expert the maximum over its layer's other experts (then
listed under ``filled``); a single channel that was zero on every token gets its input's smallest positive
scale (listed under ``dead_channels``, with how many).
"""

from __future__ import annotations

import json

import torch

from maxact.errors import InputError
from maxact.io import atomic_save, atomic_write_text

EXPORTS = ("smoothquant", "input_scales", "awq", "imatrix")
#: The files each export writes (names inside a checkpoint's calibration folder).
FILES = {"smoothquant": ("act_scales.pt", "act_scales.pt.json"),
         "input_scales": ("input_scales_int8.safetensors", "input_scales_fp8.safetensors", "amax_per_channel.safetensors"),
         "awq": ("awq_stats.safetensors",), "imatrix": ("imatrix.gguf",)}


def files_for(exports) -> list[str]:
    return [f for e in EXPORTS if e in exports for f in FILES[e]]
FILL_POLICIES = ("none", "max_over_layer")
INT8_DIVISOR = 127.5  # compressed-tensors: symmetric int8 over -128..127, bit_range / 2
FP8_E4M3_MAX = 448.0


def _covered(max_abs: torch.Tensor, count) -> bool:
    """Calibration tokens reached the input and gave it a finite, non-zero maximum somewhere."""
    return int(count) > 0 and bool(torch.isfinite(max_abs).all()) and bool((max_abs > 0).any())


def _fill_dead(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A channel that was exactly zero on every token (e.g. a zero norm weight) has no scale of its own: it gets
    the input's smallest positive one, so that no file holds a zero. Returns (filled copy, dead channels)."""
    dead = t <= 0
    n = int(dead.sum())
    if n == 0:
        return t, 0
    return torch.where(dead, t[~dead].min(), t), n


def per_module(stats: dict, experts: dict, fill: str = "none", not_recorded: dict | None = None) -> tuple[dict, dict]:
    """({name: {max_abs, sumsq, sumabs, count, mean_abs, fused, expert}} of every usable linear input, and the
    report {uncovered: [...], filled: {...}, nonfinite: {...}, dead_channels: {...}}). A fused expert weight's
    input appears once per expert as ``<experts module>.<weight>.E`` with ``fused`` (the weight's key in
    ``experts``) and ``expert`` set; an nn.Linear's has both ``None``. ``not_recorded`` (fused weights whose
    input no hook reached, and why) passes into the report."""
    if fill not in FILL_POLICIES:
        raise ValueError(f"fill policy must be one of {', '.join(FILL_POLICIES)}, not {fill!r}")
    out, uncovered, filled, nonfinite, dead = {}, [], {}, {}, {}

    def record(key, max_abs, sumsq, sumabs, count, fused=None, expert=None):
        mx, n_dead = _fill_dead(max_abs.float())
        mean = sumabs / count.double() if sumabs is not None else None
        if n_dead:
            dead[key] = n_dead
            mean = _fill_dead(mean)[0] if mean is not None else None
        out[key] = {"max_abs": mx, "sumsq": sumsq, "sumabs": sumabs, "count": count, "mean_abs": mean,
                    "fused": fused, "expert": expert}

    for name, st in sorted(stats.items()):
        h = st.host()
        if int(h["nonfinite"]):
            nonfinite[name] = int(h["nonfinite"])
        if not _covered(h["max_abs"], h["count"]):
            uncovered.append(name)
            continue
        record(name, h["max_abs"], h["sumsq"], h["sumabs"], h["count"])
    for name, st in sorted(experts.items()):
        h = st.host()
        if int(h["nonfinite"]):
            nonfinite[name] = int(h["nonfinite"])
        ok = [e for e in range(h["count"].shape[0]) if _covered(h["max_abs"][e], h["count"][e])]
        for e in range(h["count"].shape[0]):
            key = f"{name}.{e}"
            if e in ok:
                record(key, h["max_abs"][e], h["sumsq"][e], h["sumabs"][e], h["count"][e], fused=name, expert=e)
            elif fill == "max_over_layer" and ok:
                mx = torch.stack([_fill_dead(h["max_abs"][j].float())[0] for j in ok]).amax(0)
                out[key] = {"max_abs": mx, "sumsq": None, "sumabs": None, "count": torch.tensor(0), "mean_abs": None,
                            "fused": name, "expert": e}
                filled[key] = f"max |x| over the {len(ok)} covered experts of {name}"
            else:
                uncovered.append(key)
    return out, {"uncovered": uncovered, "filled": filled, "nonfinite": nonfinite, "dead_channels": dead, "fill_policy": fill,
                 "not_recorded": dict(not_recorded or {})}


def _meta(provenance: dict, report: dict, what: str) -> dict[str, str]:
    return {"format": what, "provenance": json.dumps(provenance, sort_keys=True, default=str),
            "uncovered": json.dumps(report["uncovered"]), "filled": json.dumps(report["filled"]),
            "dead_channels": json.dumps(report.get("dead_channels", {})),
            "not_recorded": json.dumps(report.get("not_recorded", {})),
            "fill_policy": report["fill_policy"]}


def write_act_scales(path, modules: dict, report: dict, provenance: dict) -> None:
    """SmoothQuant's act_scales.pt (experts are not nn.Linear layers: not in this file)."""
    scales = {n: m["max_abs"].float().cpu().contiguous() for n, m in modules.items() if m["fused"] is None}
    check_scales(scales)
    atomic_save(path, lambda tmp: torch.save(scales, tmp))
    atomic_write_text(str(path) + ".json", json.dumps(_meta(provenance, report, "smoothquant act_scales"), indent=1))


def write_input_scales(folder, modules: dict, report: dict, provenance: dict) -> list:
    from safetensors.torch import save_file

    meta = _meta(provenance, report, "compressed-tensors static input_scale")
    amax = {n: m["max_abs"].float() for n, m in modules.items() if m["fused"] is None}
    files = []
    for suffix, divisor in (("int8", INT8_DIVISOR), ("fp8", FP8_E4M3_MAX)):
        t = {f"{n}.input_scale": (a.max() / divisor).reshape(1).contiguous() for n, a in amax.items()}
        check_scales(t)
        p = folder / f"input_scales_{suffix}.safetensors"
        atomic_save(p, lambda tmp, t=t: save_file(t, str(tmp), metadata={**meta, "scheme": suffix, "divisor": str(divisor)}))
        files.append(p)
    p = folder / "amax_per_channel.safetensors"
    t = {f"{n}.input_amax": a.contiguous() for n, a in amax.items()}
    check_scales(t)
    atomic_save(p, lambda tmp: save_file(t, str(tmp), metadata={**meta, "format": "per-channel amax (Model-Optimizer axis=-1)"}))
    return files + [p]


def write_awq(path, modules: dict, report: dict, provenance: dict) -> None:
    from safetensors.torch import save_file

    t = {f"{n}.input_mean_abs": m["mean_abs"].float().contiguous() for n, m in modules.items() if m["mean_abs"] is not None}
    check_scales(t)
    atomic_save(path, lambda tmp: save_file(t, str(tmp), metadata=_meta(provenance, report, "awq mean |x|")))


def check_scales(tensors: dict) -> None:
    """No zero, NaN or inf scale ever reaches a file."""
    bad = [k for k, v in tensors.items() if not (torch.isfinite(v).all() and (v > 0).all())]
    if bad:
        raise ValueError(f"refusing to write zero/NaN/inf scales for {', '.join(bad[:5])}")


# Family -> gguf-py architecture (gguf.MODEL_ARCH member) for the imatrix's tensor names.
GGUF_ARCH = {"llama": "LLAMA", "qwen2": "QWEN2", "qwen2_moe": "QWEN2MOE", "qwen3": "QWEN3", "qwen3_moe": "QWEN3MOE",
             "gemma": "GEMMA", "gemma2": "GEMMA2", "gemma3_text": "GEMMA3", "gemma3": "GEMMA3", "gpt_oss": "GPT_OSS",
             "qwen2_5_vl": "QWEN2VL", "qwen3_5": "QWEN35", "qwen3_5_moe": "QWEN35MOE"}
# The GGUF weights a fused expert weight's input feeds: llama.cpp's converters split gate_up into ffn_gate_exps
# and ffn_up_exps (gpt-oss interleaved, Qwen-MoE by halves; the input is the same either way), and some
# architectures keep it fused (ffn_gate_up_exps): every name the architecture's map knows gets the entry.
_FUSED_AS = {"gate_up_proj": ("gate_proj", "up_proj", "gate_up_proj"), "down_proj": ("down_proj",)}


def gguf_name(tmap, hf_name: str) -> str | None:
    """The GGUF weight name (``blk.N.attn_q.weight``) of a causal-LM module name, by gguf-py's own map
    (VLM wrappers' ``language_model.`` stripped first, as llama.cpp's converter does)."""
    name = hf_name.replace("model.language_model.", "model.")
    return tmap.get_name(name + ".weight", try_suffixes=(".weight",))


def write_imatrix(path, modules: dict, report: dict, provenance: dict, family: str, n_layers: int,
                  datasets: list[str], chunk_count: int, chunk_size: int) -> dict:
    """llama.cpp's imatrix.gguf; returns {hf name: gguf name} of what it holds (and what had no GGUF name)."""
    import gguf
    import numpy as np

    if family not in GGUF_ARCH:
        raise InputError(f"no GGUF architecture known for family {family!r} (known: {', '.join(sorted(GGUF_ARCH))}): "
                         "leave imatrix out of measure.exports for it")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[GGUF_ARCH[family]], n_layers)
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names, unmapped = {}, []
    experts: dict[str, dict[int, dict]] = {}
    for n, m in modules.items():
        if m["fused"] is not None:
            experts.setdefault(m["fused"], {})[m["expert"]] = m
            continue
        g = gguf_name(tmap, n)
        if g is None:
            unmapped.append(n)
            continue
        names[n] = g
        entries[g] = (m["sumsq"].double().numpy()[None, :].astype(np.float32), np.array([[float(m["count"])]], dtype=np.float32))
    for fused, by_e in experts.items():
        n_exp = max(max(by_e) + 1, max((int(k.rsplit(".", 1)[1]) + 1 for k in report["uncovered"] if k.startswith(fused + ".")), default=0))
        width = next(iter(by_e.values()))["max_abs"].numel()
        s2 = np.zeros((n_exp, width), dtype=np.float32)
        cnt = np.zeros((n_exp, 1), dtype=np.float32)
        for e, m in by_e.items():
            if m["sumsq"] is not None:  # a filled expert has no sums: count 0, llama.cpp then weighs it 1.0
                s2[e] = m["sumsq"].double().numpy()
                cnt[e, 0] = float(m["count"])
        module, weight = fused.rsplit(".", 1)
        held = 0
        for as_name in _FUSED_AS[weight]:
            g = gguf_name(tmap, f"{module}.{as_name}")
            if g is not None:
                names[f"{module}.{as_name}"] = g
                entries[g] = (s2, cnt)
                held += 1
        if not held:
            unmapped.append(fused)

    class _Writer(gguf.GGUFWriter):
        def add_architecture(self) -> None:  # llama-imatrix writes no general.architecture
            pass

    def write(tmp):
        w = _Writer(str(tmp), arch="")
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", list(datasets) or ["maxact"])
        w.add_uint32("imatrix.chunk_count", int(chunk_count))
        w.add_uint32("imatrix.chunk_size", int(chunk_size))
        w.add_string("maxact.provenance", json.dumps(provenance, sort_keys=True, default=str))
        w.add_string("maxact.uncovered", json.dumps(report["uncovered"]))
        w.add_string("maxact.filled", json.dumps(report["filled"]))
        w.add_string("maxact.not_recorded", json.dumps(report.get("not_recorded", {})))
        for g, (s2, cnt) in sorted(entries.items()):
            w.add_tensor(f"{g}.in_sum2", s2)
            w.add_tensor(f"{g}.counts", cnt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_save(path, write)
    return {"names": names, "unmapped": unmapped}

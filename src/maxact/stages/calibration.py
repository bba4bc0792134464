"""Stage ``calibration``: the calibration files of one checkpoint from its recorded linear-layer inputs.

The ``measure`` stage saves the raw statistics (``linear_inputs.safetensors``: per module or fused experts
weight, max |x|, sum x^2, sum |x|, token and non-finite counts, and which fused weights' inputs no hook
reached); this stage turns them into the files of
``measure.exports`` (:mod:`maxact.calibration.exports`), each with the measurement's provenance, and a
``calibration.json`` manifest (files, uncovered experts, filled scales, non-finite counts). The ``calibration``
rule and ``maxact measure --export`` both call :func:`write_calibration`.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxact.calibration import exports as X
from maxact.io import atomic_save, write_json
from maxact.measurement.linear_inputs import ChannelStats

LINEAR_INPUTS = "linear_inputs.safetensors"
MANIFEST = "calibration.json"


def save_linear_inputs(path: Path, stats: dict, experts: dict, provenance: dict, not_recorded: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for kind, table in (("linear", stats), ("experts", experts)):
        for name, st in table.items():
            for key, t in st.host().items():
                tensors[f"{kind}:{name}:{key}"] = t.contiguous()
    meta = {"provenance": json.dumps(provenance, default=str), "not_recorded": json.dumps(not_recorded or {})}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_linear_inputs(path: Path) -> tuple[dict, dict, dict, dict]:
    """(linear stats, experts stats, provenance, not recorded) as saved by :func:`save_linear_inputs`."""
    from safetensors import safe_open

    tables: dict = {"linear": {}, "experts": {}}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            kind, name, stat = key.split(":")
            tables[kind].setdefault(name, {})[stat] = f.get_tensor(key)
    out = [{n: ChannelStats(**{k: d[k] for k in ChannelStats.FIELDS}) for n, d in tables[k].items()} for k in ("linear", "experts")]
    return out[0], out[1], json.loads(meta.get("provenance", "{}")), json.loads(meta.get("not_recorded", "{}"))


def write_calibration(out_dir: Path, stats: dict, experts: dict, exports, fill: str, result: dict,
                      not_recorded: dict | None = None) -> dict:
    """The files of ``exports`` in ``out_dir`` from the statistics, with ``result``'s provenance; the manifest."""
    unknown = sorted(set(exports) - set(X.EXPORTS))
    if unknown:
        raise ValueError(f"unknown export(s) {', '.join(unknown)}; known: {', '.join(X.EXPORTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov_src = result.get("provenance", {})
    provenance = {"model_id": prov_src.get("model_id") or result.get("model_name"), "revision": prov_src.get("revision"),
                  "resolved_revision": prov_src.get("resolved_revision"), "checkpoint": result.get("checkpoint"),
                  "corpus_sha256": prov_src.get("corpus_sha256"), "tokens": result.get("num_tokens"),
                  "samples": result.get("num_samples"), "fill_uncovered": fill, "dtype": (prov_src.get("settings") or {}).get("dtype"),
                  "libraries": (prov_src.get("environment") or {}).get("libraries")}
    modules, report = X.per_module(stats, experts, fill=fill, not_recorded=not_recorded)
    files: list[str] = []
    extra: dict = {}
    if "smoothquant" in exports:
        X.write_act_scales(out_dir / "act_scales.pt", modules, report, provenance)
        files += ["act_scales.pt", "act_scales.pt.json"]
    if "input_scales" in exports:
        files += [p.name for p in X.write_input_scales(out_dir, modules, report, provenance)]
    if "awq" in exports:
        X.write_awq(out_dir / "awq_stats.safetensors", modules, report, provenance)
        files.append("awq_stats.safetensors")
    if "imatrix" in exports:
        held = X.write_imatrix(out_dir / "imatrix.gguf", modules, report, provenance, result["family"],
                               int(result["num_hidden_layers"]), [str(prov_src.get("corpus_sha256") or "maxact corpus")],
                               chunk_count=int(result.get("num_samples") or 1), chunk_size=int(result.get("max_seq_len") or 0))
        files.append("imatrix.gguf")
        extra["imatrix_unmapped"] = held["unmapped"]
    manifest = {"files": files, "exports": list(exports), **report, **extra, "provenance": provenance,
                "modules": sum(1 for m in modules.values() if m["fused"] is None),
                "experts": sum(1 for m in modules.values() if m["fused"] is not None)}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def run_calibration(linear_path: Path, stats_json: Path, out_dir: Path, exports, fill: str) -> dict:
    """The rule's path: statistics and result read back from the measure stage's files."""
    stats, experts, _, not_recorded = load_linear_inputs(Path(linear_path))
    result = json.loads(Path(stats_json).read_text())
    return write_calibration(out_dir, stats, experts, exports, fill, result, not_recorded)

"""Read result files (measured ``activation_stats.json`` and the paper's published
``*_activation_stats.json``) into normalised records and tidy tables.

A record is a plain dict::

    {"name": ..., "source": "measured" | "published", "path": Path, "raw": <file dict>,
     "meta": {family, generation, role, params_b, active_params_b, main_analysis, published_name}}

Nothing here knows any published figure: every number comes from the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from maxact.config import META_KEYS  # one definition, shared with the config helpers
from maxact.errors import InputError
from maxact.points import is_number, parse_component, recompute_global_max

if TYPE_CHECKING:
    import pandas as pd

#: Folder names the paper's authors used -> family slug (role hints where the folder implies one).
PUBLISHED_FOLDER_FAMILY = {
    "qwen2.5": ("qwen2.5", None),
    "qwen2.5-it": ("qwen2.5", "instruct"),
    "qwen2.5-vl": ("qwen2.5-vl", "vlm"),
    "qwen3": ("qwen3", None),
    "qwen3.5": ("qwen3.5", None),
    "gemma2": ("gemma2", None),
    "gemma3": ("gemma3", None),
    "gpt_oss": ("gpt-oss", None),
    "gpt-oss": ("gpt-oss", None),
    "ling": ("ling", None),
}

RESULT_FILE = "activation_stats.json"
PUBLISHED_SUFFIX = "_activation_stats.json"
#: Where the paper's INT-8 summary sits inside the published results folder.
PUBLISHED_INT8 = Path("quant") / "quant_sanity_summary.json"
#: Where the paper's bootstrap experiment A files (vendored gzipped) sit inside the published results folder.
PUBLISHED_EXP_A = Path("supplementary") / "exp_A"


# --------------------------------------------------------------------------- discovery / loading

def discover_result_files(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``activation_stats.json`` / ``*_activation_stats.json`` below ``dirs`` (recursive).

    A path that is itself a result file is taken as is. Sorted by path, duplicates dropped.
    Raises ValueError naming a directory that does not exist.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    found: dict[str, Path] = {}
    for d in dirs:
        d = Path(d)
        if d.is_file():
            if _is_result_name(d.name):
                found[str(d.resolve())] = d
            continue
        if not d.is_dir():
            raise InputError(f"results directory does not exist: {d}")
        for p in d.rglob("*" + RESULT_FILE):
            if p.is_file() and _is_result_name(p.name) and not any(part.startswith(".") for part in p.relative_to(d).parts):
                found[str(p.resolve())] = p
    return sorted(found.values(), key=lambda p: p.parts)


def _is_result_name(name: str) -> bool:
    return name == RESULT_FILE or (name.endswith(PUBLISHED_SUFFIX) and len(name) > len(PUBLISHED_SUFFIX))


def meta_from_config(cfg: Mapping) -> dict[str, dict]:
    """name -> meta (META_KEYS) from a study config dict."""
    return {c["name"]: {k: c.get(k) for k in META_KEYS} for c in cfg.get("checkpoints") or []}


def load_result(path: str | Path, published_meta: Mapping[str, Mapping] | None = None,
                measured_meta: Mapping[str, Mapping] | None = None) -> dict:
    """One result file -> normalised record (see module docstring).

    Meta precedence (per key, None never overrides a value): the config entry of the record's own kind (a published
    result: ``published_meta``, the config naming the paper's checkpoints; a result measured here: ``measured_meta``,
    the study that measured it) > the file's own ``meta`` > what the published folder name implies. A study's entry
    never changes a published result's meta, nor the paper's config a measured one's (a measured checkpoint named
    like a published one does not get its main_analysis)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable result file (not JSON: {e}); remeasure it or remove it") from None
    if not isinstance(raw, dict) or "per_layer_stats" not in raw:
        raise InputError(f"{path}: not an activation-stats result file (no per_layer_stats)")
    source = "measured" if "provenance" in raw else "published"
    if source == "measured":
        name = raw.get("checkpoint") or raw.get("model_name") or path.parent.name
    else:
        name = raw.get("model_name")
        if not name:
            name = path.name[: -len(PUBLISHED_SUFFIX)] if path.name.endswith(PUBLISHED_SUFFIX) else path.parent.name
    meta: dict = {k: None for k in META_KEYS}
    if source == "published":
        fam, role = PUBLISHED_FOLDER_FAMILY.get(path.parent.name.lower(), (path.parent.name.lower(), None))
        meta["family"], meta["role"] = fam, role
    lookup = published_meta if source == "published" else measured_meta
    for src in (raw.get("meta") or {}, (lookup or {}).get(name) or {}):
        for k, v in src.items():
            if v is not None:
                meta[k] = v
    return {"name": str(name), "source": source, "path": path, "raw": raw, "meta": meta}


def is_random_init(record: Mapping) -> bool:
    """A measured checkpoint whose weights were a seeded random initialisation (not trained)."""
    return ((record.get("raw") or {}).get("provenance") or {}).get("source") == "random"


def is_main(record: Mapping) -> bool:
    """Counted in the headline claims. A published checkpoint: ``main_analysis`` when known, else not an
    intermediate checkpoint. A checkpoint measured here: only when its config says ``main_analysis: true``, and
    never a random-init one (see :func:`claims_status`)."""
    return claims_status(record)[0]


def claims_status(record: Mapping) -> tuple[bool, str]:
    """(in the main analysis, why) for the report and claims.json."""
    m = record.get("meta") or {}
    if record.get("source") == "measured":
        if is_random_init(record):
            return False, "random initialisation (not trained): never in the claims"
        if m.get("main_analysis") is True:
            return True, "put in the main analysis by its config entry (main_analysis: true)"
        return False, "not in the main analysis (main_analysis: true in its config entry would count it)"
    if m.get("main_analysis") is not None:
        return bool(m["main_analysis"]), "the paper's main analysis" if m["main_analysis"] else "the paper's supplementary checkpoints"
    if m.get("role") == "intermediate":
        return False, "an intermediate training checkpoint (not in the paper's main analysis)"
    return True, "the paper's main analysis"


def num_layers(raw: Mapping) -> int | None:
    n = raw.get("num_hidden_layers")
    if is_number(n) and n > 0:
        return int(n)
    layers = [parse_component(c)[1] for c in raw.get("per_layer_stats", {})]
    layers = [x for x in layers if x is not None]
    return max(layers) + 1 if layers else None


def relative_depth(layer: int | None, n_layers: int | None) -> float | None:
    if layer is None or not n_layers:
        return None
    return layer / max(n_layers - 1, 1)


# --------------------------------------------------------------------------- tables

GLOBAL_COLUMNS = [
    "name", "source", "family", "generation", "role", "params_b", "active_params_b", "main_analysis",
    "model_type", "num_hidden_layers", "hidden_size", "global_max", "global_max_abs", "component", "kind",
    "layer", "relative_depth", "extreme", "recorded_global_max", "recorded_location", "path",
]


def global_row(record: Mapping) -> dict:
    raw, meta = record["raw"], record["meta"]
    value, comp, ext = recompute_global_max(raw["per_layer_stats"])
    kind, layer = parse_component(comp)
    n = num_layers(raw)
    return {
        "name": record["name"], "source": record["source"],
        "family": meta.get("family"), "generation": None if meta.get("generation") is None else str(meta.get("generation")),
        "role": meta.get("role"), "params_b": meta.get("params_b"), "active_params_b": meta.get("active_params_b"),
        "main_analysis": is_main(record), "model_type": raw.get("model_type"),
        "num_hidden_layers": n, "hidden_size": raw.get("hidden_size"),
        "global_max": value, "global_max_abs": abs(value), "component": comp, "kind": kind, "layer": layer,
        "relative_depth": relative_depth(layer, n), "extreme": ext,
        "recorded_global_max": raw.get("global_max_activation"), "recorded_location": raw.get("global_max_location"),
        "path": str(record["path"]),
    }


def global_table(records: Iterable[Mapping]) -> "pd.DataFrame":
    """One row per record: where and how large its global maximum is (recomputed from per_layer_stats)."""
    import pandas as pd  # here, not at import: the Snakefile imports this module to list the published files

    df = pd.DataFrame([global_row(r) for r in records], columns=GLOBAL_COLUMNS)
    df["layer"] = df["layer"].astype("Int64")
    for c in ("params_b", "active_params_b", "global_max", "global_max_abs", "relative_depth"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


LAYER_COLUMNS = ["name", "source", "family", "component", "kind", "layer", "relative_depth", "stat", "value"]


def layer_table(records: Iterable[Mapping]) -> "pd.DataFrame":
    """Tidy: one row per (record, component, numeric statistic)."""
    import pandas as pd

    rows = []
    for r in records:
        raw = r["raw"]
        n = num_layers(raw)
        fam = r["meta"].get("family")
        for comp, st in raw["per_layer_stats"].items():
            kind, layer = parse_component(comp)
            rd = relative_depth(layer, n)
            for stat, v in (st or {}).items():
                if is_number(v):
                    rows.append((r["name"], r["source"], fam, comp, kind, layer, rd, stat, float(v)))
    df = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    df["layer"] = df["layer"].astype("Int64")
    df["relative_depth"] = df["relative_depth"].astype(float)
    df["value"] = df["value"].astype(float)
    return df

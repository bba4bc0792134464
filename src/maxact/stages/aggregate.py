"""Stage ``aggregate``: every result file in one table, the claims derived from it.

One path for the ``aggregate`` rule and ``maxact aggregate --results DIR [DIR ...] --out DIR``.
It writes, atomically:

- ``claims.json``                  the claims (see :mod:`maxact.study.claims`), every number derived;
- ``global_max.csv``               one row per checkpoint;
- ``layer_stats.parquet``          tidy per-component statistics;
- ``measured_vs_published.csv``    measured components beside the published ones (may be empty);
- ``int8.csv``                     the INT-8 checks, measured and published (may be empty).

Every file it reads is named by the caller (the rule declares each as an input): the result files,
the INT-8 results, the study configs giving checkpoint meta and matched pairs, the published INT-8
summary. Nothing is looked up beside the package.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from maxact.errors import InputError
from maxact.io import atomic_save, read_json, write_json
from maxact.report.claims_markdown import claims_markdown
from maxact.study.claims import compare_measured_published, compute_claims, pairs_from_config, spearman
from maxact.study.resultset import PUBLISHED_INT8, discover_result_files, global_table, layer_table, load_result, meta_from_config
from maxact.study.topk import indicators, read_top5

INT8_COLUMNS = ["name", "source", "family", "policy", "definition", "reference_global_max_abs", "mean_sqnr_db", "mean_rel_rmse",
                "mean_rel_mae", "mean_clip_rate", "threshold", "point", "note"]
TOP5_COLUMNS = ["name", "source", "top1_abs", "top_mean", "n_top", "saturated", "sign", "concentration", "decay5_over_1",
                "n_hot_points", "hot_points"]


@dataclass(frozen=True)
class AggregateOutputs:
    global_table: Path
    layer_table: Path
    claims: Path
    comparison: Path
    int8_table: Path
    top5_table: Path

    @classmethod
    def in_dir(cls, out_dir: str | Path) -> "AggregateOutputs":
        d = Path(out_dir)
        return cls(d / "global_max.csv", d / "layer_stats.parquet", d / "claims.json", d / "measured_vs_published.csv",
                   d / "int8.csv", d / "top5_indicators.csv")

    @classmethod
    def of(cls, paths: Mapping[str, str]) -> "AggregateOutputs":
        return cls(**{k: Path(paths[k]) for k in cls.__dataclass_fields__})

    def all(self) -> list[Path]:
        return [getattr(self, k) for k in self.__dataclass_fields__]


def read_study_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file does not exist: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix it") from None
    if not isinstance(cfg, dict):
        raise InputError(f"config file {path} is not a study config (a YAML mapping with checkpoints: ...)")
    return cfg


@dataclass(frozen=True)
class Meta:
    """Checkpoint meta by name, kept apart by kind of result: the config of the paper's published checkpoints gives
    the published results theirs, the study that measured a checkpoint gives the measured result its own."""

    published: dict
    measured: dict

    def of(self, name: str, source: str) -> dict:
        return (self.published if source == "published" else self.measured).get(name) or {}


def meta_and_pairs(published_configs: Sequence[Mapping], study_configs: Sequence[Mapping] = ()) -> tuple[Meta, list[dict]]:
    """The meta of published and of measured checkpoints, and the matched pairs over all the configs; a later config's
    meta wins, pairs are the union in order (first occurrence kept)."""
    published: dict[str, dict] = {}
    measured: dict[str, dict] = {}
    pairs: list[dict] = []
    for meta, configs in ((published, published_configs), (measured, study_configs)):
        for cfg in configs:
            meta.update(meta_from_config(cfg))
            for p in pairs_from_config(cfg):
                if p not in pairs:
                    pairs.append(p)
    return Meta(published, measured), pairs


def int8_table(int8_paths: Iterable[str | Path], meta: Meta, published_int8: str | Path | None) -> pd.DataFrame:
    rows = []
    for p in int8_paths:
        d = read_json(p)
        # A result from before int8.definition existed was made with the exact definition.
        definition = d.get("definition", "exact")
        for pol, m in (d.get("policies") or {}).items():
            rows.append({"name": d["checkpoint"], "source": "measured", "family": meta.of(d["checkpoint"], "measured").get("family"),
                         "policy": pol, "definition": definition, "reference_global_max_abs": d.get("reference_global_max_abs"),
                         "point": d.get("point"), "note": m.get("undefined"), **{k: v for k, v in m.items() if k in INT8_COLUMNS}})
    if published_int8 and Path(published_int8).exists():
        for r in read_json(published_int8):
            rows.append({"name": r["model_name"], "source": "published",
                         "family": meta.of(r["model_name"], "published").get("family") or r.get("family"),
                         "policy": r["policy"], "definition": "paper", "reference_global_max_abs": r.get("reference_global_max_abs"),
                         **{k: r.get(k) for k in ("mean_sqnr_db", "mean_rel_rmse", "mean_rel_mae", "mean_clip_rate")}})
    df = pd.DataFrame(rows)
    for c in INT8_COLUMNS:
        if c not in df:
            df[c] = np.nan
    return df[INT8_COLUMNS]


def top5_table(top5_paths: Iterable[str | Path], published_top5: Iterable[str | Path]) -> pd.DataFrame:
    """The paper's structural indicators of the top values (scan_top5.py), measured and published, one row each."""
    rows = []
    for p in [*top5_paths, *published_top5]:
        f = read_top5(p)
        ind = indicators(f)
        if ind is not None:  # a file written by maxact says so; the paper's own files do not
            source = "measured" if str(f.get("source", "")).startswith("maxact") else "published"
            rows.append({"name": ind.pop("model"), "source": source, **ind, "hot_points": ", ".join(ind["hot_points"])})
    return pd.DataFrame(rows, columns=TOP5_COLUMNS)


def sqnr_peak_correlation(it: pd.DataFrame) -> dict:
    """Per INT-8 policy: correlation of SQNR (dB) with log10 of the peak across checkpoints."""
    out = {}
    d = it.dropna(subset=["mean_sqnr_db", "reference_global_max_abs"])
    d = d[np.isfinite(d["mean_sqnr_db"].astype(float)) & (d["reference_global_max_abs"].astype(float) > 0)]
    for pol, g in d.groupby("policy"):
        x = np.log10(g["reference_global_max_abs"].to_numpy(dtype=float))
        y = g["mean_sqnr_db"].to_numpy(dtype=float)
        pearson = float(np.corrcoef(x, y)[0, 1]) if len(g) >= 3 and np.std(x) > 0 and np.std(y) > 0 else None
        out[pol] = {"n": int(len(g)), "pearson_r": pearson, "spearman_rho": spearman(list(x), list(y)) if len(g) >= 3 else None,
                    "checkpoints": sorted(g["name"].astype(str))}
    return out


def aggregate(result_paths: Sequence[str | Path], outputs: AggregateOutputs, meta: Meta,
              pairs: Sequence[Mapping], int8_paths: Sequence[str | Path] = (), published_int8: str | Path | None = None,
              inputs_note: Mapping | None = None, top5_paths: Sequence[str | Path] = (),
              published_top5: Sequence[str | Path] = ()) -> dict:
    """Load, tabulate, derive the claims; write every output of :class:`AggregateOutputs`; return the claims."""
    records = [load_result(p, meta.published, meta.measured) for p in result_paths]
    gt = global_table(records)
    lt = layer_table(records)
    cmp = compare_measured_published(records)
    claims = compute_claims(records, pairs=pairs)
    it = int8_table(int8_paths, meta, published_int8)
    claims["int8_sqnr_vs_log_peak"] = sqnr_peak_correlation(it)
    if inputs_note is not None:
        claims["inputs"] = dict(inputs_note)
    atomic_save(outputs.global_table, lambda tmp: gt.to_csv(tmp, index=False))
    atomic_save(outputs.layer_table, lambda tmp: lt.to_parquet(tmp, index=False))
    atomic_save(outputs.comparison, lambda tmp: cmp.to_csv(tmp, index=False))
    atomic_save(outputs.int8_table, lambda tmp: it.to_csv(tmp, index=False))
    t5 = top5_table(top5_paths, published_top5)
    atomic_save(outputs.top5_table, lambda tmp: t5.to_csv(tmp, index=False))
    write_json(outputs.claims, claims)
    return claims


def _as_dirs(result_dirs: Iterable[str | Path] | str | Path) -> list[Path]:
    return [Path(d) for d in ([result_dirs] if isinstance(result_dirs, (str, Path)) else result_dirs)]


def discover(result_dirs: Iterable[str | Path]) -> list[Path]:
    """Every result file below each folder; ValueError naming a folder that is missing or holds none."""
    dirs = _as_dirs(result_dirs)
    if not dirs:
        raise InputError("no results directory given")
    paths = []
    for d in dirs:
        if not d.exists():
            raise InputError(f"--results {d}: no such folder")
        found = discover_result_files([d])
        if not found:
            raise InputError(f"no result file (activation_stats.json or *_activation_stats.json) below --results {d}")
        paths += found
    return sorted({str(p.resolve()): p for p in paths}.values(), key=lambda p: p.parts)


def run_aggregate(result_dirs: Iterable[str | Path], out_dir: str | Path, config_paths: Sequence[str | Path] = (),
                  int8_paths: Sequence[str | Path] = ()) -> dict:
    """``maxact aggregate``: the result files found below ``result_dirs``; the published checkpoints' meta and matched
    pairs from the ``config_paths`` (e.g. ``config/paper.yaml``; none: no pairs, meta from the files alone); a measured
    result's meta is its own (written when it was measured); a published INT-8 summary found in a results folder is
    included."""
    dirs = _as_dirs(result_dirs)  # once: an iterator given here is read a single time
    paths = discover(dirs)
    meta, pairs = meta_and_pairs([read_study_config(p) for p in config_paths])
    published_int8 = next((d / PUBLISHED_INT8 for d in dirs if (d / PUBLISHED_INT8).exists()), None)
    note = {"result_dirs": [str(d) for d in dirs], "n_files": len(paths), "configs": [str(p) for p in config_paths]}
    # Top-5 files found beside the results: plain ones were written here, gzipped ones are the vendored published ones.
    top5 = sorted({str(p) for d in dirs if d.is_dir() for p in d.rglob("*_top5_stats.json")})
    published_top5 = sorted({str(p) for d in dirs if d.is_dir() for p in d.rglob("*_top5_stats.json.gz")})
    return aggregate(paths, AggregateOutputs.in_dir(out_dir), meta, pairs, int8_paths, published_int8, inputs_note=note,
                     top5_paths=top5, published_top5=published_top5)


def add_aggregate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR",
                        help="folders searched recursively for activation_stats.json / *_activation_stats.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for claims.json and the tables")
    parser.add_argument("--config", nargs="+", default=[], metavar="FILE",
                        help="study config(s) giving checkpoint meta and matched pairs, e.g. config/paper.yaml for the "
                             "published checkpoints (later ones win)")
    parser.add_argument("--int8", nargs="*", default=[], metavar="FILE", help="int8_check.json files to tabulate")
    return parser


def aggregate_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    for f in args.int8:
        if not Path(f).is_file():
            raise InputError(f"--int8 {f}: no such file")
    claims = run_aggregate(args.results, args.out, config_paths=args.config, int8_paths=args.int8)
    print(claims_markdown(claims))
    print(f"wrote {', '.join(str(p) for p in AggregateOutputs.in_dir(args.out).all())}")
    return 0

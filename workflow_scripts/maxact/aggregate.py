"""``maxact aggregate --results DIR [DIR ...] --out DIR [--config FILE]``.

Finds every result file (measured ``activation_stats.json`` and published
``*_activation_stats.json``) below the given folders, and writes, atomically:

- ``claims.json``                  the claims (see :mod:`maxact.claims`), every number derived;
- ``global_max.csv``               one row per checkpoint;
- ``layer_stats.parquet``          tidy per-component statistics;
- ``measured_vs_published.csv``    measured components beside the published ones (may be empty).
"""

from __future__ import annotations

import argparse
import io as _io
from pathlib import Path
from typing import Iterable

from .claims import claims_markdown, compare_measured_published, compute_claims, default_paper_config, pairs_from_config
from .io import atomic_save, atomic_write_text, write_json
from .resultset import discover_result_files, global_table, layer_table, load_config_meta, load_result

OUTPUT_FILES = ("claims.json", "global_max.csv", "layer_stats.parquet", "measured_vs_published.csv")


def _csv_text(df) -> str:
    buf = _io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def run_aggregate(result_dirs: Iterable[str | Path], out_dir: str | Path, config_path: str | Path | None = None) -> dict:
    """Discover, load, tabulate, derive the claims; write the four output files; return the claims.

    ``config_path``: study config giving each checkpoint's meta (family, role, params, main_analysis)
    and the matched pairs; default ``config/paper.yaml`` of this repository when it exists.
    Raises ValueError naming a folder that does not exist or holds no result file.
    """
    dirs = [Path(d) for d in ([result_dirs] if isinstance(result_dirs, (str, Path)) else result_dirs)]
    if not dirs:
        raise ValueError("no results directory given")
    paths = []
    for d in dirs:
        if not d.exists():
            raise ValueError(f"results directory does not exist: {d}")
        found = discover_result_files([d])
        if not found:
            raise ValueError(f"no result file (activation_stats.json or *_activation_stats.json) under {d}")
        paths += found
    paths = sorted({str(p.resolve()): p for p in paths}.values(), key=lambda p: p.parts)

    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.exists():
            raise ValueError(f"config file does not exist: {config_path}")
    else:
        default = default_paper_config()
        config_path = default if default.exists() else None
    meta = load_config_meta(config_path) if config_path else {}
    pairs = pairs_from_config(config_path) if config_path else []

    records = [load_result(p, meta) for p in paths]
    gt = global_table(records)
    lt = layer_table(records)
    cmp = compare_measured_published(records)
    claims = compute_claims(records, pairs=pairs)
    claims["inputs"] = {"result_dirs": [str(d) for d in dirs], "n_files": len(paths),
                        "config": str(config_path) if config_path else None}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "global_max.csv", _csv_text(gt))
    atomic_save(out / "layer_stats.parquet", lambda tmp: lt.to_parquet(tmp, index=False))
    atomic_write_text(out / "measured_vs_published.csv", _csv_text(cmp))
    write_json(out / "claims.json", claims)
    return claims


def add_aggregate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR",
                        help="folders searched recursively for activation_stats.json / *_activation_stats.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for claims.json and the tables")
    parser.add_argument("--config", metavar="FILE",
                        help="study config giving checkpoint meta and matched pairs (default: config/paper.yaml)")
    return parser


def aggregate_main(args: argparse.Namespace) -> int:
    claims = run_aggregate(args.results, args.out, config_path=getattr(args, "config", None))
    print(claims_markdown(claims))
    print(f"wrote {', '.join(str(Path(args.out) / f) for f in OUTPUT_FILES)}")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience entry point
    ap = argparse.ArgumentParser(prog="maxact aggregate", description=__doc__.splitlines()[0])
    add_aggregate_arguments(ap)
    return aggregate_main(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

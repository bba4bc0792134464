"""The first real 20,000-sample saturation curves, and the extreme-value estimate tested on them.

Input: the merged result folders of benchmarks/saturation_cpu.sh (the two real checkpoints of the default study over
the 20,000 samples of the extended corpus) and its texts.jsonl (ids and categories). Writes into OUT, per checkpoint:

* ``<ckpt>.per_sample_maxima.parquet``: per sample its id, category, whether it belongs to the shipped 5,000, and its
  maximum |a| per component kind (global, residual, attention, mlp, gate, final_norm);
* ``<ckpt>.saturation.csv``: the exact saturation curves (category-proportional subsets, bootstrap bands) per kind;
* ``<ckpt>.summary.json``: the measured maxima, where each curve reached 95%/99%, the extreme-value fit on all 20,000
  samples, and the predictions tested against measurement:

  - the shipped 5,000 (the paper-sized corpus) fitted alone predict the median maximum over 20,000;
  - 20 random category-proportional subsets of 5,000 do the same (how often the measured 20,000 max is inside);
  - each random quarter of the shipped 5,000 predicts the maximum over the 5,000;

* ``<ckpt>.activation_stats.json.gz``: the merged result file.

    python benchmarks/saturation_real.py OUT_DIR RUN_DIR
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from maxact.corpus.records import read_corpus
from maxact.stages.extremes import extremes_of_table
from maxact.study.analysis import SATURATION_KINDS, per_sample_kind_max, proportional_indices, saturation, saturation_reach
from maxact.study.extremes import covers, fit_extremes

KINDS = list(SATURATION_KINDS)


def analyse(name: str, result_dir: Path, texts: pd.DataFrame, base_ids: set[str], out: Path, method: str) -> dict:
    table = result_dir / "per_sample_extremes.parquet"
    ps = pd.read_parquet(table)
    ids = ps["sample_id"].astype(str)
    cats = texts.set_index("id")["category"].reindex(ids).to_numpy()
    red = pd.DataFrame({"sample_id": ids, "category": cats, "shipped_5000": ids.isin(base_ids).to_numpy()})
    for k in KINDS:
        red[k] = per_sample_kind_max(ps, SATURATION_KINDS[k]).to_numpy()
    red.to_parquet(out / f"{name}.per_sample_maxima.parquet", index=False)

    curves, reach = [], {}
    for k in KINDS:
        m = red[k].to_numpy(dtype=float)
        if not np.isfinite(m).any():
            continue
        s = saturation(m, cats, n_points=16, draws=200, start=50, seed=0)
        curves.append(s.assign(kind=k))
        reach[k] = saturation_reach(s, m)
    pd.concat(curves).to_csv(out / f"{name}.saturation.csv", index=False)

    sizes = [20000, 100000, 1000000]
    whole = extremes_of_table(table, sizes, method)
    g = red["global"].to_numpy(dtype=float)
    shipped = red["shipped_5000"].to_numpy()

    def predict(m_fit, n_target, measured, meth=method):
        r = fit_extremes(m_fit, [n_target], meth)["return_levels"][0]
        out = {"n_fit": int(np.isfinite(m_fit).sum()), "subset_max": float(np.nanmax(m_fit)), "n_predicted": n_target,
               "predicted": r["estimate"], "lower": r["lower"], "upper": r["upper"], "measured": float(measured)}
        out["inside"] = covers(r, measured)
        return out

    n_all, max_all = int(np.isfinite(g).sum()), float(np.nanmax(g))
    # the shipped 5,000 fitted alone, predicting the 20,000
    pred_5k, pred_5k_gev = predict(g[shipped], n_all, max_all), predict(g[shipped], n_all, max_all, "gev")
    # random paper-sized subsets predicting the 20,000
    rng = np.random.default_rng(0)
    subsets = [predict(g[np.sort(proportional_indices(cats, 5000, rng))], n_all, max_all) for _ in range(20)]
    # quarters of the shipped 5,000 predicting the 5,000
    gb, cb = g[shipped], cats[shipped]
    quarters = [{"quarter": q, **predict(gb[np.sort(proportional_indices(cb, 1250, rng))], len(gb), float(np.nanmax(gb)))}
                for q in range(4)]
    stats = json.loads((result_dir / "activation_stats.json").read_text())
    with gzip.open(out / f"{name}.activation_stats.json.gz", "wt", encoding="utf-8") as f:
        json.dump(stats, f)
    summary = {
        "checkpoint": name, "n_samples": int(len(ids)), "num_tokens": stats["num_tokens"],
        "max_seq_len": stats.get("max_seq_len"), "global_max": stats["global_max_activation"],
        "global_max_location": stats["global_max_location"], "peak": stats.get("peak"),
        "max_of_shipped_5000": float(red.loc[red["shipped_5000"], "global"].max()),
        "max_of_new_15000": float(red.loc[~red["shipped_5000"], "global"].max()),
        "reach": reach,
        "extremes_all_20000": {k: whole[k] for k in ("return_levels", "shape", "endpoint", "structural_share",
                                                     "structural_peak", "gof", "method", "model", "observed_max")},
        "prediction_shipped_5000_to_20000": {method: pred_5k, "gev": pred_5k_gev},
        "prediction_random_5000_to_20000": {"method": method, "subsets": subsets,
                                            "inside": sum(s["inside"] for s in subsets), "of": len(subsets)},
        "prediction_quarters_of_shipped_5000": {"method": method, "quarters": quarters,
                                                "inside": sum(q["inside"] for q in quarters), "of": len(quarters)},
        "provenance": {"model_id": stats["provenance"].get("model_id"),
                       "revision": stats["provenance"].get("resolved_revision") or stats["provenance"].get("revision"),
                       "corpus_sha256": stats["provenance"].get("corpus_sha256"),
                       "tokenization": stats["provenance"].get("tokenization"),
                       "shards": {k: v for k, v in (stats["provenance"].get("shards") or {}).items() if k != "merged_from"},
                       "libraries": (stats["provenance"].get("environment") or {}).get("libraries")},
    }
    (out / f"{name}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for the committed files")
    ap.add_argument("run", help="the OUT_DIR of benchmarks/saturation_cpu.sh")
    ap.add_argument("--method", default="gpd")
    a = ap.parse_args(argv)
    out, run = Path(a.out), Path(a.run)
    out.mkdir(parents=True, exist_ok=True)
    texts = pd.read_json(run / "texts.jsonl", lines=True, dtype={"id": str})
    base_ids = {r["id"] for r in read_corpus("resources/corpus/default.jsonl.gz")}
    shutil.copy(run / "corpus.json", out / "corpus.json")
    for d in sorted(run.iterdir()):
        if (d / "merged" / "activation_stats.json").exists():
            s = analyse(d.name, d / "merged", texts, base_ids, out, a.method)
            p = s["prediction_shipped_5000_to_20000"][a.method]
            print(f"{d.name}: max over 20,000 = {s['global_max']:.6g} (shipped 5,000: {s['max_of_shipped_5000']:.6g}); "
                  f"5,000 -> 20,000 predicted {p['predicted']:.6g} [{p['lower']}, {p['upper']}], inside: {p['inside']}; "
                  f"random 5,000s inside {s['prediction_random_5000_to_20000']['inside']}/20; quarters inside "
                  f"{s['prediction_quarters_of_shipped_5000']['inside']}/4", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

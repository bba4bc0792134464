"""Run the paper's own INT-8 script on the samples of a maxact study and compare the two.

The paper's `quant_sanity_check.py` (public repository clx1415926/Max_act_llm; fetch it and pass the file with
--paper-script) is imported from where it lies; none of its code is copied here. Only what its
`MODEL_CONFIGS` and `load_model` name is changed: each checkpoint's model folder (maxact's prepared folder), a
data file holding the token ids of the samples maxact's INT-8 check used (its calibration samples first, then its
evaluation samples: the script takes the first N lines and the next M), a stats file naming the peak maxact
measured (the script's `layer_policy: peak` reads `global_max_location`), and the device (float32 on the CPU
instead of bfloat16 on a GPU). It runs with `--batch_size 1` (maxact captures one sample at a time), the study's
`int8.max_tokens` as `--max_seq_len`, and its defaults otherwise (8 bits, 2,048 bins, quantile 0.999).

    python benchmarks/paper_int8_reference.py --paper-script /path/to/Max_act_llm/quant_sanity_check.py \
        --results results --out benchmarks/measured/paper-int8-reference/reference.json

It writes the script's summary rows, maxact's numbers from each `results/int8/<ckpt>/int8_check.json` (which must
have been made with `int8.definition: paper`) and the relative difference of every metric.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import pyarrow.parquet as pq

METRICS = ("mean_rel_rmse", "mean_rel_mae", "mean_clip_rate", "mean_sqnr_db")


def load_paper_module(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("paper_quant_sanity_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def paper_run(mod, name: str, model_dir: Path, token_ids: list[list[int]], peak: str, peak_value: float, int8: dict,
              work: Path) -> list[dict]:
    """The paper's run_model and summarize on one checkpoint; its summary rows."""
    import torch
    from transformers import AutoModelForCausalLM

    data = work / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in token_ids))
    stats = work / f"{name}_activation_stats.json"
    stats.write_text(json.dumps({"global_max_activation": peak_value, "global_max_location": f"{peak} (max)"}))
    mod.MODEL_CONFIGS[name] = {"family": "maxact", "model_path": str(model_dir), "data_path": str(data),
                               "stats_path": str(stats), "batch_size": 1, "role": "reference"}

    def load_model(model_path, gpu_id):  # the device: float32 on the CPU (the script: bfloat16 on cuda)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        return model, 0.0

    mod.load_model = load_model
    split = int8["split"]
    args = argparse.Namespace(bits=8, clip_quantile=0.999, calibration_samples=split["n_calib"], eval_samples=split["n_eval"],
                              max_seq_len=int8["max_tokens"], hist_bins=2048, layer_policy="peak", batch_size=1, gpu_id=0)
    output = mod.run_model(name, mod.MODEL_CONFIGS[name], args)
    return mod.summarize([output]), output["thresholds"]


def rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper-script", required=True, type=Path, help="quant_sanity_check.py of clx1415926/Max_act_llm")
    ap.add_argument("--results", default=Path("results"), type=Path, help="a maxact study's results folder")
    ap.add_argument("--out", required=True, type=Path, help="JSON file for the reference numbers and the comparison")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    mod = load_paper_module(a.paper_script)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for int8_path in sorted(a.results.glob("int8/*/int8_check.json")):
            int8 = json.loads(int8_path.read_text())
            name = int8["checkpoint"]
            if int8.get("definition") != "paper":
                raise SystemExit(f"{int8_path}: made with int8.definition {int8.get('definition')!r}; rerun with paper")
            prepared = json.loads((a.results / "checkpoints" / name / "prepared.json").read_text())
            tokens = pq.read_table(_tokens_path(a.results, name)).to_pandas().set_index("sample_id")
            split = int8["split"]
            order = split["calibration_ids"] + split["evaluation_ids"]
            token_ids = [list(map(int, tokens.loc[i, "input_ids"])) for i in order]
            model_dir = Path(prepared["load_path"])  # relative paths are the workflow folder's: run from it
            if not model_dir.is_dir():
                raise SystemExit(f"{model_dir}: no such model folder; run this from the workflow folder")
            summary, thresholds = paper_run(mod, name, model_dir, token_ids, int8["peak_component"],
                                            int8["reference_global_max_abs"], int8, Path(tmp))
            if {r["policy"] for r in summary} != {"max_abs", "clip_q0.999"}:
                raise SystemExit(f"{name}: the paper's script gave policies {sorted(r['policy'] for r in summary)}")
            for r in summary:
                ours = int8["policies"].get(r["policy"], {})
                missing = [k for k in METRICS if k not in ours]
                if missing:
                    raise SystemExit(f"{name} {r['policy']}: maxact's result lacks {missing}")
                rows.append({"checkpoint": name, "policy": r["policy"], "peak_component": int8["peak_component"],
                             "point": int8["point"], "max_tokens": int8["max_tokens"], "seed": int8["seed"],
                             "calibration_ids": split["calibration_ids"], "evaluation_ids": split["evaluation_ids"],
                             "corpus_sha256": int8["provenance"]["corpus_sha256"], "paper_script": {k: r[k] for k in METRICS},
                             "maxact": {k: ours.get(k) for k in METRICS},
                             "relative_difference": {k: rel_diff(r[k], ours[k]) for k in METRICS if k in ours},
                             "threshold_maxact": ours.get("threshold"),
                             "threshold_paper_script": next(iter(thresholds[r["policy"]].values()), None)})
    if not rows:
        raise SystemExit(f"no int8_check.json under {a.results / 'int8'}")
    worst = max(d for r in rows for d in r["relative_difference"].values())
    import hashlib
    import os

    import torch

    report = {"paper_script": str(a.paper_script.name), "paper_repository": "clx1415926/Max_act_llm",
              "paper_script_sha256": hashlib.sha256(a.paper_script.read_bytes()).hexdigest(),
              "how": "benchmarks/paper_int8_reference.py: the paper's run_model/summarize on maxact's samples, "
                     "float32 CPU, batch size 1; only data loading and device changed",
              "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "libraries": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
              "rows": rows, "max_relative_difference": worst}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['checkpoint']:<24} {r['policy']:<12} " + "  ".join(
            f"{k}={r['paper_script'][k]:.9g}/{r['maxact'][k]:.9g}" for k in METRICS))
    print(f"largest relative difference: {worst:.3g}")
    return 0


def _tokens_path(results: Path, name: str) -> Path:
    """The tokenized corpus a checkpoint was measured on (its tokenizer group's)."""
    stats = json.loads((results / "measure" / name / "activation_stats.json").read_text())
    sha = stats["provenance"]["tokenizer_sha256"]
    for p in sorted(results.glob("tokens/*/tokens.parquet")):
        meta = json.loads(pq.read_schema(p).metadata[b"maxact"])
        if meta.get("tokenizer_sha256") == sha:
            return p
    raise SystemExit(f"no tokens.parquet of {name}'s tokenizer under {results / 'tokens'}")


if __name__ == "__main__":
    sys.exit(main())

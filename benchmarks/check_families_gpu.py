"""On CUDA: every family through ``maxact measure`` on a saved tiny checkpoint, with the attention
implementation and kernels the registry picks on the GPU (eager for Gemma 2 and gpt-oss unless
``--attn-implementation`` names another, flash-linear-attention for Qwen3.5 where installed), against the
float64 CPU reference of the tests (where fla is installed, computed in a child process that cannot import it).

    python benchmarks/check_families_gpu.py [--dtype float32] [--types gemma2 gpt_oss ...]

Prints, per model type, the attention and kernels used and the largest relative difference of the
per-layer residual-stream max/min from the reference ('agree' under --rtol).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the shared tiny-model helpers (tests/tiny_models.py)
sys.path.insert(0, str(TESTS))

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "x = [1, 2, 3]", "Grüße aus Köln!", "Ok.",
         "def f(a, b):\n    return a ** b  # power", "Lorem ipsum dolor sit amet, consectetur " * 2]


def main(argv=None) -> int:
    from maxact.cli import main as cli
    from maxact.models.registry import FAMILIES, supported_model_types
    from tiny_models import call_without_fla, save_tiny_checkpoint

    remote = {t for f in FAMILIES if f.remote_code for t in f.model_types}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=[t for t in supported_model_types() if t not in remote])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rtol", type=float, default=2e-3)
    ap.add_argument("--max-len", type=int, default=160)
    ap.add_argument("--attn-implementation", default="auto")
    a = ap.parse_args(argv)
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = tmp / "texts.jsonl"
        texts.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
        for mt in a.types:
            folder = save_tiny_checkpoint(mt, tmp / mt, seed=3)
            out = tmp / f"{mt}-out"
            try:
                rc = cli(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out), "--device", "cuda",
                          "--dtype", a.dtype, "--attn-implementation", a.attn_implementation, "--batch-size", "3", "--max-seq-len", str(a.max_len)])
                if rc != 0:
                    raise RuntimeError(f"maxact measure exited {rc}")
                r = json.loads((out / "activation_stats.json").read_text())
                ref, n = call_without_fla("tiny_models", "reference_layer_extremes", str(folder), TEXTS, a.max_len)
                worst = 0.0
                for i in range(n):
                    st = r["per_layer_stats"][f"layer_{i}_hidden"]
                    for got, want in ((st["max"], ref[i][0]), (st["min"], ref[i][1])):
                        worst = max(worst, abs(got - want) / max(abs(want), 1e-6))
                ok = worst <= a.rtol
                failed += not ok
                rows.append((mt, "agree" if ok else "DIFFER", f"{worst:.2e}", json.dumps(r["provenance"]["kernels"])))
            except Exception as e:  # keep going: one family's failure is a row, not the end of the check
                failed += 1
                rows.append((mt, "FAILED", "", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            print(" | ".join(rows[-1]), flush=True)
    print("\n| model_type | vs float64 reference | max rel diff | kernels |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""H200-hours for the paper's 27 checkpoints with packed measurement, from the measured files.

The rehearsal (``rehearsal.json``: every checkpoint, padded measurement through the DAG, 145k tokens each)
over-weights one-off compile and autotune costs, so each checkpoint's rate is first brought to the steady
state of its family's representative (``families.py`` before packing: padded measured tok/s / the
representative's rehearsal tok/s). The packed rate is then that steady-state rate times the family's gain,
both ratios to the padded bare forward of their own run (so runs with different batch caps compare):

    gain = (packed measured / padded bare, packed families.py run) / (measured / bare, padded families.py run)

Prints one row per checkpoint and the totals for the paper's corpus (17.0M tokens).

    python benchmarks/projection.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "measured"
PAPER_TOKENS = 17.0e6
# The family representative each checkpoint's steady state and gain come from (families.py's set).
REPRESENTATIVE = {"qwen2": "Qwen2.5-7B", "qwen2_5_vl": "Qwen2.5-VL-7B", "qwen3": "Qwen3-8B", "qwen3_moe": "Qwen3-30B-A3B",
                  "qwen3_5": "Qwen3.5-9B", "qwen3_5_moe": "Qwen3.5-35B-A3B", "gemma": "gemma-2b", "gemma2": "gemma-2-9b",
                  "gemma3": "gemma-3-4b-it", "gpt_oss": "gpt-oss-20b", "bailing_hybrid": "Ling-mini-20T"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rehearsal", default=str(ROOT / "h200-2026-12-01" / "rehearsal.json"))
    ap.add_argument("--padded", default=str(ROOT / "h200-2026-12-01" / "families_full_stats_all.json"))
    ap.add_argument("--packed", nargs="+", default=[str(ROOT / "h200-2026-12-02" / "families_packed_all.json"),
                                                    str(ROOT / "h200-2026-12-02c" / "families_gemma2_flex.json")],
                    help="families.py runs, packed; a checkpoint in a later file replaces its row of an earlier one")
    a = ap.parse_args(argv)
    rehearsal = json.loads(Path(a.rehearsal).read_text())
    padded = {r["checkpoint"]: r for r in json.loads(Path(a.padded).read_text())}
    packed = {r["checkpoint"]: r for f in a.packed for r in json.loads(Path(f).read_text())}
    by_name = {r["checkpoint"]: r for r in rehearsal}
    print("| checkpoint | family forward | rehearsal tok/s | steady padded tok/s | gain | packed tok/s | paper corpus padded (h) | packed (h) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    tot_rehearsal = tot_padded = tot_packed = 0.0
    for r in rehearsal:
        rep = REPRESENTATIVE[r["model_type"]]
        old, new = padded[rep], packed[rep]
        steady = r["tok_s"] * old["measured_tok_s"] / by_name[rep]["tok_s"]
        gain = (new["ratios"]["packed_measured_vs_padded_bare"]) / (old["measured_tok_s"] / old["bare_tok_s"])
        rate = steady * gain
        h_old, h_new = PAPER_TOKENS / steady / 3600, PAPER_TOKENS / rate / 3600
        tot_rehearsal += PAPER_TOKENS / r["tok_s"] / 3600
        tot_padded += h_old
        tot_packed += h_new
        fwd = "packed" if new["method"] == "varlen" else "padded"
        print(f"| {r['checkpoint']} | {fwd} | {r['tok_s']:,.0f} | {steady:,.0f} | {gain:.2f} | {rate:,.0f} | {h_old:.2f} | {h_new:.2f} |")
    print(f"\nPaper corpus ({PAPER_TOKENS / 1e6:.1f}M tokens), 27 checkpoints: {tot_rehearsal:.1f} H200-hours at the rehearsal's "
          f"rates, {tot_padded:.1f} at the padded steady state, **{tot_packed:.1f} packed** "
          f"({tot_padded / tot_packed:.2f}x fewer than padded).")


if __name__ == "__main__":
    main()

"""summary.json from the per-point files here: for each checkpoint, compiled (with and without eager's rounding,
inductor's emulate_precision_casts) against eager in bf16 on the CPU: the global max (the first point, in layer
order, whose max or min has the largest magnitude), and every point's max and min apart in bf16 steps."""
import gzip
import json
import math
from pathlib import Path

D = Path(__file__).resolve().parent


def step(v):  # spacing of bf16 numbers at |v|
    v = abs(v)
    return 2.0 ** (math.floor(math.log2(v)) - 7) if v > 0 else 2.0 ** -133


def gmax(d):
    best = None
    for p, a in d.items():
        for k in ("max", "min"):
            if best is None or abs(a[k]) > abs(best[0]):
                best = (a[k], f"{p} ({k})")
    return best


rows = []
for ck in ("SmolLM2-135M-Instruct", "gemma-3-270m"):
    def load(m):
        return json.load(gzip.open(D / f"{ck}.{m}.per_layer_stats.json.gz"))
    e = load("eager")
    for m in ("compiled_no_option", "compiled_option"):
        c = load(m)
        st = sorted(((abs(e[p][k] - c[p][k]) / step(e[p][k]), p, k) for p in e for k in ("max", "min")), reverse=True)
        ge, gc = gmax(e), gmax(c)
        rows.append({"checkpoint": ck, "compiled": m, "eager_global_max": list(ge), "compiled_global_max": list(gc),
                     "global_max_steps": abs(ge[0] - gc[0]) / step(ge[0]), "worst_point_steps": st[0][0],
                     "worst_point": [st[0][1], st[0][2]], "points_differing": sum(x[0] > 0 for x in st), "points": len(st)})
(D / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
for r in rows:
    print(r)

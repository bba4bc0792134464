# ruff: noqa -- the script as it made the runs here (an ad hoc session script, kept verbatim)
import sys, time, json
sys.path[:0] = ["tests", "tests/measurement"]
import torch
from test_packing import real_runs
from real_checkpoints import SMOL, GEMMA
from pathlib import Path
import torch._inductor.config as ic
mode = sys.argv[1]
out = Path("/tmp/smolcpu") / (sys.argv[2] + mode)
out.mkdir(parents=True, exist_ok=True)
if mode == "noemulate":
    import maxact.measurement.compiled as mc; mc.INDUCTOR_OPTIONS.clear()
if mode == "emulate":
    ic.emulate_precision_casts = True
t = time.time()
v = {"eager": {"compile": "off"}} if mode == "eager" else {"compiled": {"compile": "on"}}
r = real_runs({"smol": SMOL, "gemma": GEMMA}[sys.argv[2]], out, "cpu", "bfloat16", v)
for k, x in r.items():
    print(mode, k, x["global_max_activation"], x["global_max_location"], f"{time.time()-t:.0f}s")
    json.dump(x["per_layer_stats"], open(f"/tmp/smolcpu/{sys.argv[2]}_{mode}_pls.json", "w"))

#!/usr/bin/env bash
# The two real checkpoints of the default study over all 20,000 samples of the extended corpus on the CPU, each as
# two shards (one core each) merged into the whole: the first real 20,000-sample saturation curves.
#   bash benchmarks/saturation_cpu.sh OUT_DIR [MAX_SEQ_LEN]
# Needs the converted checkpoints in .cache/maxact/converted (the default study's prepare rule makes them).
set -euo pipefail
out=${1:?usage: saturation_cpu.sh OUT_DIR [MAX_SEQ_LEN]}
len=${2:-64}
mkdir -p "$out"
python - "$out/texts.jsonl" <<'PY'
import json, sys, tempfile
from maxact.corpus.materialize import materialize_corpus
from maxact.corpus.records import read_corpus
with tempfile.TemporaryDirectory() as d:
    m = materialize_corpus({"source": "extended"}, f"{d}/c.jsonl.gz", "resources")
    recs = read_corpus(f"{d}/c.jsonl.gz")
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for r in recs:
        f.write(json.dumps({"id": r["id"], "text": r["text"], "category": r["category"]}, ensure_ascii=False) + "\n")
json.dump({k: m[k] for k in ("n_samples", "sha256", "source_sha256", "counts_by_category")},
          open(sys.argv[1].replace("texts.jsonl", "corpus.json"), "w"), indent=2)
PY
for ckpt in .cache/maxact/converted/SmolLM2-135M-Instruct.Q4_1-* .cache/maxact/converted/gemma-3-270m-q4_k_m-*; do
  name=$(basename "$ckpt" | cut -d. -f1 | sed 's/-q4_k_m.*//')
  for k in 1 2; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 maxact measure --model "$ckpt" --texts "$out/texts.jsonl" --device cpu \
      --max-seq-len "$len" --shard "$k/2" --checkpoint-every 50 --out "$out/$name/shard$k" --overwrite \
      > "$out/$name.shard$k.log" 2>&1 &
  done
  wait
  maxact merge "$out/$name/shard1" "$out/$name/shard2" --out "$out/$name/merged" --overwrite > "$out/$name.merge.log" 2>&1
done

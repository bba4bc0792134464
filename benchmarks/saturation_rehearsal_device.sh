#!/usr/bin/env bash
# The saturation rehearsal (config/saturation_rehearsal.yaml: the nine representatives at full shape, random init)
# through the DAG on one GPU, every checkpoint in two shards, on a category-proportional slice of the extended corpus;
# what the run left (benchmark TSVs, logs, result provenance) is packed into OUT. Rerun the same command to resume
# (Snakemake keeps what finished). On the device machine, from the repository root:
#   source benchmarks/device_env.sh && bash benchmarks/saturation_rehearsal_device.sh "$OUT" [SAMPLES] [SECONDS]
set -uo pipefail
out=${1:?usage: saturation_rehearsal_device.sh OUT [SAMPLES] [SECONDS]}
samples=${2:-32}
seconds=${3:-540}
slice=$(mktemp --suffix=.yaml)
printf 'corpus: {source: extended, max_samples: %d, seed: 0}\nruntime: {device: cuda, shards: 2, checkpoint_every: 0}\n' \
    "$samples" >"$slice"
python3 -c "import scipy" 2>/dev/null || printf 'extremes: {enabled: false}\n' >>"$slice"  # no scipy: no fit here
cat "$slice"
timeout "$seconds" snakemake --cores 16 --resources gpu=1 --scheduler greedy --keep-going \
    --configfile config/saturation_rehearsal.yaml "$slice"
echo "snakemake exit: $?"
r=results/saturation_rehearsal
tar czf "$out/saturation_rehearsal.tgz" --ignore-failed-read $r/benchmarks $r/logs $r/corpus/manifest.json \
    $(ls $r/measure/*/activation_stats.json $r/measure_shards/*/*/shard.json $r/extremes/*/extremes.json 2>/dev/null) \
    reports/saturation_rehearsal/tables 2>/dev/null
ls -la "$out"

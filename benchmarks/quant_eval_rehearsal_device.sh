#!/usr/bin/env bash
# The quant_eval stage in the rehearsal: config/saturation_rehearsal.yaml's representatives at full shape (random
# init: time and memory only), through the DAG on one GPU, measured on a category-proportional slice of the extended
# corpus with the calibration exports the stage reads, then quant_eval on its held-out samples. What the run left
# (Snakemake's per-job benchmark TSVs, logs, the quant_eval results) is packed into OUT. On the device machine:
#   source benchmarks/device_env.sh && bash benchmarks/quant_eval_rehearsal_device.sh "$OUT" [SAMPLES] [SECONDS] [CKPT...]
set -uo pipefail
out=${1:?usage: quant_eval_rehearsal_device.sh OUT [SAMPLES] [SECONDS] [CKPT...]}
samples=${2:-32}
seconds=${3:-540}
shift 3 2>/dev/null || shift $#
ckpts=("$@")
((${#ckpts[@]})) || ckpts=(Qwen3-8B Qwen3-30B-A3B gemma-2-9b)
formats="fp8_static, int8_static, int8_dynamic, fp8_dynamic, smoothquant_w8a8"
# llm-compressor imports datasets, which the device lacks (not shipped): SmoothQuant is then left out, and said.
LLM_COMPRESSOR_LOG_DISABLED=true python3 -c "import llmcompressor.modifiers.transform.smoothquant" 2>/dev/null \
    || { formats="fp8_static, int8_static, int8_dynamic, fp8_dynamic"; echo "llm-compressor does not import here: no smoothquant_w8a8"; }
slice=$(mktemp --suffix=.yaml)
cat >"$slice" <<YAML
corpus: {source: extended, max_samples: $samples, seed: 0}
runtime: {device: cuda, shards: 1, checkpoint_every: 0}
measure: {exports: [input_scales, smoothquant]}
extremes: {enabled: false}
quant_eval: {enabled: true, formats: [$formats], llama_cpp: {enabled: false}}
YAML
cat "$slice"
r=results/saturation_rehearsal
targets=()
for c in "${ckpts[@]}"; do targets+=("$r/quant_eval/$c/quant_eval.json"); done
timeout "$seconds" snakemake "${targets[@]}" --cores 16 --resources gpu=1 --scheduler greedy --keep-going \
    --configfile config/saturation_rehearsal.yaml "$slice"
echo "snakemake exit: $?"
tar czf "$out/quant_eval_rehearsal.tgz" --ignore-failed-read $r/benchmarks $r/logs $r/corpus/manifest.json \
    $(ls $r/quant_eval/*/quant_eval.json $r/measure/*/activation_stats.json 2>/dev/null) 2>/dev/null
ls -la "$out"

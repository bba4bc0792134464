#!/usr/bin/env bash
# Re-create .whl/ (git-ignored): the wheels, at their versions in constraints.txt, that the GPU device
# machine lacks, for CPython 3.12 on manylinux x86_64. benchmarks/device_env.sh installs them there.
#   tools/device_wheels.sh            (needs the package registries; PIP="python3 -m pip" by default)
#
# The device (no registry access) is taken to have, working, with their own dependencies: python 3.12,
# torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0 (and so regex, typer, filelock, packaging),
# accelerate 1.15.0, safetensors 0.8.0, tokenizers 0.23.2, huggingface_hub 1.33.0, numpy, pandas, pyarrow,
# jinja2, pyyaml, matplotlib, seaborn, tqdm, psutil, requests, rich, sentencepiece 0.2.2, einops.
# Shipped: the locked transformers (5.24.0 needs huggingface_hub>=1.31,<3, tokenizers>=0.23.1,<0.24,
# safetensors>=0.8: the device's satisfy these, so they are not shipped), snakemake and every
# dependency of it the device lacks, jsonschema, gguf, fla-core ([gpu]), compressed-tensors, llmcompressor and loguru
# (quant_eval), pytest (the CUDA test files), plus packaging (snakemake asks
# <26) and pydantic with its typing-extensions>=4.16 (device versions unknown; these shadow them).
# Not shipped: pulp (36 MB of CBC binaries; snakemake imports it only inside its ilp scheduler and falls
# back to greedy without it: run with --scheduler greedy), datasets (maxact imports it lazily, only to
# fetch a corpus from the hub, which the device cannot reach), the checkpoint packages (~340 MB).
# Checked on the H200: after benchmarks/device_env.sh, `python3 -m pip check` reports only pulp missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$root/constraints.txt"
dest="$root/.whl"
PIP="${PIP:-python3 -m pip}"
MAX_MIB="${MAX_MIB:-40}"
names=(
    transformers
    snakemake
    snakemake-interface-common snakemake-interface-executor-plugins snakemake-interface-storage-plugins
    snakemake-interface-report-plugins snakemake-interface-logger-plugins snakemake-interface-scheduler-plugins
    argparse-dataclass conda-inject configargparse connection-pool docutils dpath humanfriendly immutables
    gitpython gitdb smmap
    jsonschema jsonschema-specifications referencing rpds-py attrs
    nbformat fastjsonschema jupyter-core traitlets platformdirs
    smart-open wrapt tabulate tenacity throttler yte
    sqlmodel sqlalchemy greenlet pydantic pydantic-core annotated-types typing-inspection typing-extensions
    packaging
    gguf
    fla-core
    compressed-tensors llmcompressor loguru
    pytest pluggy iniconfig pytest-timeout pygments
)
norm() { tr 'A-Z_.' 'a-z--' <<<"$1"; }
version_of() { # the locked version of $1 (names compared normalized)
    local want line n
    want="$(norm "$1")"
    while IFS= read -r line; do
        line="${line%%#*}"
        [[ "$line" == *==* ]] || continue
        n="$(norm "${line%%==*}")"
        [[ "$n" == "$want" ]] && { echo "${line#*==}" | tr -d '[:space:]'; return; }
    done <"$lock"
    echo "device_wheels.sh: $1 is not in $lock" >&2
    return 1
}
# Published as an sdist only (pure python): built into a py3-none-any wheel here.
build=(connection-pool)
specs=()
built=()
for n in "${names[@]}"; do
    if [[ " ${build[*]} " == *" $n "* ]]; then built+=("$n==$(version_of "$n")"); else specs+=("$n==$(version_of "$n")"); fi
done
rm -rf "$dest"
mkdir -p "$dest"
if ((${#built[@]})); then
    $PIP wheel --quiet --no-deps -w "$dest" "${built[@]}"
    for w in "$dest"/*.whl; do
        [[ "$w" == *-py3-none-any.whl ]] || { echo "device_wheels.sh: $w is not pure python" >&2; exit 1; }
    done
fi
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${specs[@]}"
# One wheel per name, and nothing else.
count="$(ls "$dest"/*.whl | wc -l)"
[[ "$count" -eq "${#names[@]}" ]] || { echo "device_wheels.sh: $count wheels for ${#names[@]} names" >&2; exit 1; }
mib="$(du -sm "$dest" | cut -f1)"
[[ "$mib" -le "$MAX_MIB" ]] || { echo "device_wheels.sh: .whl is $mib MiB (> $MAX_MIB)" >&2; exit 1; }
echo "device_wheels.sh: $count wheels, $(du -sh "$dest" | cut -f1) in $dest"

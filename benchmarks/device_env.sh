# Source at the start of each command on the GPU device machine (no registry there), from the repo root:
#   source benchmarks/device_env.sh && snakemake --cores 1 --scheduler greedy ...
# Installs .whl/ (made from the lock by tools/device_wheels.sh: the locked transformers, snakemake and
# its dependencies, jsonschema, gguf, fla-core) into /tmp/site, offline, once per set of wheels; then
# puts /tmp/site first on PYTHONPATH (so it shadows the device's own transformers etc.), the checkout's
# src after it, and /tmp/site/bin (the snakemake entry point) first on PATH.
# pulp is not shipped: snakemake's default ilp scheduler falls back to greedy (with a warning) without
# it, so pass --scheduler greedy.
_maxact_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_maxact_site="${MAXACT_SITE:-/tmp/site}"
_maxact_stamp="$(cd "$_maxact_root/.whl" && ls -l -- *.whl | md5sum | cut -d' ' -f1)"
if [[ "$(cat "$_maxact_site/.maxact-wheels" 2>/dev/null)" != "$_maxact_stamp" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$_maxact_site" "$_maxact_root"/.whl/*.whl \
        || { echo "device_env.sh: installing .whl into $_maxact_site failed" >&2; return 1; }
    echo "$_maxact_stamp" >"$_maxact_site/.maxact-wheels"
fi
export PYTHONPATH="$_maxact_site:$_maxact_root/src${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$_maxact_site/bin:$PATH"
unset _maxact_root _maxact_site _maxact_stamp

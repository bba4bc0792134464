"""Check the package's import graph: no cycle (lazy imports inside functions count too), no private name
(``_x``) imported from another module, and the layers import only downward.

    python tools/import_graph.py          # exit 1 with the offending edges
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: Layer of each subpackage: a module may import its own layer and lower ones only.
LAYERS = {"io": 0, "errors": 0, "outdir": 0, "stalelock": 0, "gpuslots": 0, "provenance": 0, "rulelog": 0, "points": 0, "config": 0, "schema": 0,
          "models": 1, "corpus": 1, "measurement": 2, "study": 2, "calibration": 3, "quant": 3, "report": 3, "stages": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, modules: set[str]):
    """(imported module, imported names) of every import in the file, resolved to package modules."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("maxact"):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maxact") and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:  # `from maxact.pkg import module`
                    yield sub, []
                else:
                    yield node.module, [a.name]


def layer(mod: str) -> int:
    return LAYERS[mod.split(".")[1]] if mod.count(".") else -1


def main() -> int:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for mod, path in files.items():
        for target, names in imports(path, modules):
            if target not in modules or target == mod:
                continue
            edges[mod].add(target)
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    problems.append(f"private name: {mod} imports {target}.{n}")
            if mod.count(".") and target.count(".") and layer(target) > layer(mod):
                problems.append(f"upward import: {mod} (layer {layer(mod)}) imports {target} (layer {layer(target)})")
    # cycles (a package's __init__ importing its own submodules is not a cycle through them)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                problems.append("cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    for p in problems:
        print(p)
    print(f"{len(modules)} modules, {sum(map(len, edges.values()))} imports, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

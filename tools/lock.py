"""Check the installed packages against the lock (constraints.txt), or list what an install needs.

    python tools/lock.py check   [--lock FILE] ROOT... [--no-deps NAME...]
    python tools/lock.py closure ROOT... [--no-deps NAME...]
    python tools/lock.py freeze  ROOT... [--no-deps NAME...]

ROOT is a requirement such as ``maxact[test,gpu]`` or ``torch``; its installed dependencies are walked
(markers and extras evaluated here), the ``--no-deps`` names are taken alone. ``check`` fails (exit 1)
when a package in that set is missing, is not in the lock, differs from its locked version (a local
label such as ``+cpu`` is ignored), or does not satisfy what a package in the set asks of it (a
``pip check`` limited to this set, so unrelated packages of a shared interpreter do not count).
The project itself (maxact) is not locked. ``closure`` prints the set's canonical names, one a line; ``freeze`` prints it as ``name==version`` lines
(public version: ``torch==2.13.0`` for a ``2.13.0+cpu`` build), each tagged with the extras of the roots
that alone bring it in (``# test``, ``# gpu``): tools/update_lock.sh writes constraints.txt with it. Only needs ``packaging``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SELF = "maxact"  # the project itself: installed editable, never in the lock


def read_lock(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, ver = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: not an exact pin: {raw!r}")
        out[canonicalize_name(name)] = ver.strip()
    return out


def _dist(name: str):
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def walk(roots: list[str], no_deps: list[str]):
    """canonical name -> installed version (None when missing), plus the (asker, requirement) edges."""
    seen: dict[str, str | None] = {}
    edges: list[tuple[str, Requirement]] = []
    todo = [Requirement(r) for r in roots]
    done: set[tuple[str, frozenset]] = set()
    for n in no_deps:
        d = _dist(n)
        seen[canonicalize_name(n)] = d.version if d else None
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if (key, frozenset(req.extras)) in done:
            continue
        done.add((key, frozenset(req.extras)))
        d = _dist(req.name)
        seen[key] = d.version if d else None
        if d is None:
            continue
        extras = {""} | set(req.extras)
        for spec in d.requires or []:
            sub = Requirement(spec)
            if sub.marker is not None and not any(sub.marker.evaluate({"extra": e}) for e in extras):
                continue
            edges.append((key, sub))
            todo.append(sub)
    return seen, edges


def freeze(roots: list[str], no_deps: list[str], seen: dict[str, str | None]) -> int:
    reqs = [Requirement(r) for r in roots]
    bare = [r.name for r in reqs]
    base = set(walk(bare, no_deps)[0])
    tags: dict[str, list[str]] = {}
    for r in reqs:
        for extra in sorted(r.extras):
            with_extra = set(walk([*bare, f"{r.name}[{extra}]"], no_deps)[0])
            for name in with_extra - base:
                tags.setdefault(name, []).append(extra)
    missing = [n for n, v in seen.items() if v is None]
    if missing:
        print("not installed:", *missing, file=sys.stderr)
        return 1
    for name in sorted(seen):
        if name == SELF:
            continue
        d = metadata.distribution(name)
        line = f"{d.metadata['Name']}=={Version(d.version).public}"
        if name in tags:
            line = f"{line:<48}# {', '.join(tags[name])}"
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["check", "closure", "freeze"])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--no-deps", nargs="*", default=[], metavar="NAME")
    ap.add_argument("--lock", type=Path, default=ROOT / "constraints.txt")
    a = ap.parse_args(argv)
    seen, edges = walk(a.roots, a.no_deps)
    if a.mode == "closure":
        print("\n".join(sorted(seen)))
        return 0
    if a.mode == "freeze":
        return freeze(a.roots, a.no_deps, seen)
    lock = read_lock(a.lock)
    bad: list[str] = []
    for name, ver in sorted(seen.items()):
        if name == SELF:
            continue
        if ver is None:
            bad.append(f"{name}: not installed")
        elif name not in lock:
            bad.append(f"{name}=={ver}: not in {a.lock.name} (regenerate it: tools/update_lock.sh)")
        elif Version(Version(ver).public) != Version(lock[name]):
            bad.append(f"{name}: installed {ver}, locked {lock[name]}")
    for asker, req in edges:
        ver = seen.get(canonicalize_name(req.name))
        if ver is not None and not req.specifier.contains(Version(ver), prereleases=True):
            bad.append(f"{asker} requires {req}, installed {ver}")
    if bad:
        print(f"lock check FAILED ({a.lock}):", *bad, sep="\n  ", file=sys.stderr)
        return 1
    print(f"lock check: {len(seen)} packages at their locked versions ({a.lock.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Source code: CPython stdlib (running interpreter), Go and Rust standard library sources."""
from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

from maxact.corpus.sources.base import Doc, pick, rel, scaled, source
from maxact.corpus.sources.text import clean_text, decode_bytes

FILES_PER_LANGUAGE = 400


def python_stdlib_files(limit=None, seed=0):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not any(part in ("test", "tests", "site-packages", "idle_test", "__pycache__")
                        for part in p.relative_to(root).parts)]
    return root, pick(files, limit, seed, "python-stdlib")


@source("python_stdlib", "code", [("local", "cpython-stdlib")], "Python standard library *.py of the running interpreter")
def python_stdlib(fx, seed):
    ver = platform.python_version()
    if fx.pins.get("cpython-stdlib", ver) != ver:
        fx.pin_mismatch["cpython-stdlib"] = fx.pins["cpython-stdlib"]
        fx.log(f"[corpus_build] WARNING: stdlib of Python {ver} used, corpus was built with {fx.pins['cpython-stdlib']}")
    fx.local("cpython-stdlib", ver)
    root, files = python_stdlib_files(scaled(FILES_PER_LANGUAGE), seed)
    for f in files:
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("code", "en", clean_text(t), "cpython-stdlib", rel(f, root), "PSF-2.0", "python", "python")


def _deb_code(fx, seed, pkg, exts, lang, licence, k=FILES_PER_LANGUAGE, exclude=("testdata",)):
    root = fx.deb(pkg)
    files = [p for p in root.rglob("*") if p.suffix in exts and p.is_file() and not p.is_symlink()
             and not any(x in p.parts for x in exclude)]
    for f in pick(files, scaled(k), seed, pkg, lang):
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("code", "en", clean_text(t), pkg, rel(f, root), licence, lang, lang)


@source("golang", "code", [("deb", "golang-1.19-src")], "Go 1.19 standard library sources (.go)")
def golang(fx, seed):
    yield from _deb_code(fx, seed, "golang-1.19-src", {".go"}, "go", "BSD-3-Clause")


@source("golang_c", "code", [("deb", "golang-1.19-src")], "C and assembly-free C sources in the Go tree (runtime/cgo etc.)")
def golang_c(fx, seed):
    yield from _deb_code(fx, seed, "golang-1.19-src", {".c", ".h"}, "c", "BSD-3-Clause", k=150)


@source("rust", "code", [("deb", "rust-src")], "Rust standard library sources (.rs)")
def rust(fx, seed):
    yield from _deb_code(fx, seed, "rust-src", {".rs"}, "rust", "MIT OR Apache-2.0")


@source("shell", "code", [("deb", "golang-1.19-src"), ("deb", "rust-src")], "Shell scripts from the Go and Rust trees")
def shell(fx, seed):
    yield from _deb_code(fx, seed, "golang-1.19-src", {".sh", ".bash"}, "shell", "BSD-3-Clause", k=100)
    yield from _deb_code(fx, seed, "rust-src", {".sh"}, "shell", "MIT OR Apache-2.0", k=100)

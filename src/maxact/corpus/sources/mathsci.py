"""Mathematics (PARI/GP and GAP manuals, SymPy and mpmath docstrings) and scientific text (SciPy and
sympy.physics docstrings)."""
from __future__ import annotations

import ast
import inspect
import zipfile

from maxact.corpus.sources.base import Doc, pick, rel, scaled, source
from maxact.corpus.sources.text import clean_text, decode_bytes, html_to_text, strip_tex_comments


def docstrings_of(src: str, modname: str) -> str:
    """Module, class and function docstrings of a Python module, each headed by its qualified name."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return ""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_") and not child.name.startswith("__init__"):
                    continue
                name = f"{prefix}.{child.name}"
                d = ast.get_docstring(child, clean=True)
                if d and len(d) > 80:
                    out.append(f"{name}\n\n{d}")
                if isinstance(child, ast.ClassDef):
                    visit(child, name)
    d = ast.get_docstring(tree, clean=True)
    if d and len(d) > 80:
        out.append(f"{modname}\n\n{d}")
    visit(tree, modname)
    # scipy documents compiled functions via add_newdoc("module", "name", """docstring""")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("add_newdoc", "docadd"):
            strs = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if len(strs) >= 2 and len(strs[-1]) > 80:
                out.append(f"{'.'.join(strs[:-1])}\n\n{inspect.cleandoc(strs[-1])}")
    return clean_text("\n\n".join(out))


def wheel_docstrings(fx, name, category, licence, include, exclude=(), k=None, seed=0, group=None):
    w = fx.wheel(name)
    z = zipfile.ZipFile(w)
    names = [n for n in z.namelist() if n.endswith(".py") and any(n.startswith(p) for p in include)
             and not any(x in n for x in exclude) and "/tests/" not in n and "/test_" not in n]
    for n in pick(names, None if k is None else scaled(k), seed, name, category):
        src = decode_bytes(z.read(n))
        if not src:
            continue
        t = docstrings_of(src, n[:-3].replace("/", "."))
        if t:
            yield Doc(category, "en", t, name, "/" + n, licence, group or name)


@source("pari", "math", [("deb", "pari-doc")], "PARI/GP user's guide and tutorials (TeX sources)")
def pari(fx, seed):
    root = fx.deb("pari-doc")
    base = root / "usr/share/pari/doc"
    for f in sorted(base.glob("*.tex")):
        if f.name in ("paricfg.tex", "parimacro.tex", "pdfmacs.tex", "users.tex"):
            continue
        t = decode_bytes(f.read_bytes(), fallback="latin-1")
        if t:
            yield Doc("math", "en", strip_tex_comments(t), "pari-doc", rel(f, root), "GPL-2.0-or-later", "pari-doc")


@source("gap", "math", [("deb", "gap-doc")], "GAP tutorial and reference manual (HTML)")
def gap(fx, seed):
    root = fx.deb("gap-doc")
    base = root / "usr/share/gap/doc"
    files = [p for p in base.rglob("chap*.html") if not p.name.endswith("_mj.html")
             and p.stem not in ("chapBib", "chapInd", "chap0")]
    for f in pick(files, scaled(120), seed, "gap-doc"):
        t = decode_bytes(f.read_bytes())
        if t:
            yield Doc("math", "en", html_to_text(t), "gap-doc", rel(f, root), "GPL-2.0-or-later", "gap-doc")


@source("sympy", "math", [("wheel", "sympy")], "SymPy docstrings (excluding sympy.physics)")
def sympy(fx, seed):
    yield from wheel_docstrings(fx, "sympy", "math", "BSD-3-Clause", ("sympy/",), ("sympy/physics",), k=300, seed=seed)


@source("mpmath", "math", [("wheel", "mpmath")], "mpmath docstrings")
def mpmath(fx, seed):
    yield from wheel_docstrings(fx, "mpmath", "math", "BSD-3-Clause", ("mpmath/",), seed=seed)


@source("scipy", "scientific", [("wheel", "scipy")], "SciPy docstrings (stats, signal, optimize, integrate, special, ...)")
def scipy(fx, seed):
    yield from wheel_docstrings(fx, "scipy", "scientific", "BSD-3-Clause", ("scipy/",), ("_lib/", "/_build_utils"), k=500, seed=seed)


@source("sympy_physics", "scientific", [("wheel", "sympy")], "sympy.physics docstrings (mechanics, quantum, optics, units)")
def sympy_physics(fx, seed):
    yield from wheel_docstrings(fx, "sympy", "scientific", "BSD-3-Clause", ("sympy/physics/",), seed=seed, group="sympy-physics")


@source("numpy_docs", "scientific", [("wheel", "numpy")], "NumPy docstrings (linalg, fft, random, polynomial, ma, ...)",
        editions=("extended",))
def numpy_docs(fx, seed):
    yield from wheel_docstrings(fx, "numpy", "scientific", "BSD-3-Clause", ("numpy/",), ("/_build_utils", "numpy/f2py/"),
                                seed=seed)


@source("statsmodels_docs", "scientific", [("wheel", "statsmodels")],
        "statsmodels docstrings (regression, time series, statistical tests)", editions=("extended",))
def statsmodels_docs(fx, seed):
    yield from wheel_docstrings(fx, "statsmodels", "scientific", "BSD-3-Clause", ("statsmodels/",), seed=seed)

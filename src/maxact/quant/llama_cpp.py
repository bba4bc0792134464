"""llama.cpp's own quantizer and perplexity tool with and without maxact's imatrix.

Where ``llama-quantize`` and ``llama-perplexity`` are built (``quant_eval.llama_cpp.tools``: a folder, or ``auto``:
the cache's ``llama.cpp-*/build/bin`` that the slow test builds from llama-cpp-python's source distribution, then
PATH), for a checkpoint that has a GGUF file:

1. the GGUF is dequantized to F32 (``llama-quantize --allow-requantize ... F32``): the base every type starts from,
   the same weights maxact measured (it dequantizes the GGUF too);
2. each type of ``types`` is made from the base twice, with ``--imatrix`` maxact's ``imatrix.gguf`` and without
   (a type llama-quantize refuses without an imatrix, such as IQ2_XXS, is recorded as refused);
3. ``llama-perplexity`` scores the base and every file on the same held-out text (the samples the PyTorch formats
   were scored on, joined by blank lines), ``ctx`` tokens per chunk, at most ``chunks`` chunks (llama.cpp scores
   the second half of each chunk).

``delta_nll_per_token`` = ln PPL(type) - ln PPL(base): the same units as the PyTorch formats' ΔNLL.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from maxact.errors import InputError

TOOLS = ("llama-quantize", "llama-perplexity")
#: llama-cpp-python's source distribution vendors llama.cpp's sources (PyPI: reachable where the hub is not).
LLAMA_CPP_PYTHON = "0.3.36"
BUILD_TARGETS = ("llama-quantize", "llama-imatrix", "llama-perplexity")
_PPL = re.compile(r"Final estimate:\s*PPL\s*=\s*([0-9.]+)\s*\+/-\s*([0-9.]+)")


def find_tools(spec, cache_dir) -> tuple[Path | None, str]:
    """(folder holding both tools, how it was found) or (None, why not)."""
    if spec not in (None, "", "auto"):
        d = Path(spec)
        miss = [t for t in TOOLS if not (d / t).is_file()]
        if miss:
            raise InputError(f"quant_eval.llama_cpp.tools {d} lacks {', '.join(miss)}: build them (cmake --build <build> --target "
                             f"{' '.join(TOOLS)}) or set tools: auto")
        return d, f"quant_eval.llama_cpp.tools {d}"
    for d in sorted(Path(cache_dir).glob("llama.cpp-*/build/bin"), reverse=True):
        if all((d / t).is_file() for t in TOOLS):
            return d, f"built in the cache ({d})"
    found = [shutil.which(t) for t in TOOLS]
    if all(found):
        return Path(found[0]).parent, "PATH"
    return None, (f"llama.cpp's {' and '.join(TOOLS)} are not built (looked in {Path(cache_dir)}/llama.cpp-*/build/bin and PATH); "
                  f"build them with `python -m maxact.quant.llama_cpp build --cache-dir {cache_dir}`")


def build_tools(cache_dir, version: str = LLAMA_CPP_PYTHON, jobs: int = 2) -> Path:
    """Build llama.cpp's tools from llama-cpp-python's source distribution into ``<cache>/llama.cpp-<version>``
    (once); returns their folder. Needs cmake, a C++ compiler and pip's access to PyPI."""
    import sys
    import tarfile

    build = Path(cache_dir) / f"llama.cpp-{version}"
    bin_dir = build / "build" / "bin"
    if all((bin_dir / t).exists() for t in BUILD_TARGETS):
        return bin_dir
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        raise InputError("building llama.cpp's tools needs cmake and a C++ compiler (apt install cmake g++)")
    build.mkdir(parents=True, exist_ok=True)
    if not sorted(build.glob("llama_cpp_python-*/vendor/llama.cpp")):
        dl = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(build),
                             f"llama-cpp-python=={version}"], capture_output=True, text=True)
        sdists = sorted(build.glob("llama_cpp_python-*.tar.gz"))
        if dl.returncode != 0 or not sdists:
            raise InputError(f"llama-cpp-python {version}'s source distribution could not be downloaded: {dl.stderr[-300:]}")
        with tarfile.open(sdists[0]) as tf:
            tf.extractall(build, filter="data")
    src = next(build.glob("llama_cpp_python-*/vendor/llama.cpp"))
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(build / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build / "build"), "-j", str(jobs), "--target", *BUILD_TARGETS], check=True,
                   capture_output=True)
    return bin_dir


def main(argv=None) -> int:
    """``python -m maxact.quant.llama_cpp build [--cache-dir DIR]``: build the tools quant_eval uses."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m maxact.quant.llama_cpp", description=main.__doc__)
    ap.add_argument("command", choices=["build"])
    ap.add_argument("--cache-dir", default=".cache/maxact", help="the study's cache_dir (quant_eval looks for the tools there)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args(argv)
    print(build_tools(a.cache_dir, jobs=max(1, a.jobs)))
    return 0


def _run(cmd, env, timeout=3600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)


def perplexity(bin_dir: Path, model: Path, text_file: Path, ctx: int, chunks: int, env) -> dict:
    r = _run([bin_dir / "llama-perplexity", "-m", model, "-f", text_file, "-c", ctx, "-b", ctx, "--chunks", chunks, "-t",
              os.cpu_count() or 1], env)
    m = _PPL.search(r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"llama-perplexity failed on {model.name} (exit {r.returncode}): {(r.stdout + r.stderr)[-800:]}")
    n = re.search(r"calculating perplexity over (\d+) chunks", r.stdout + r.stderr)
    return {"ppl": float(m.group(1)), "ppl_error": float(m.group(2)), "chunks": int(n.group(1)) if n else None}


def llama_cpp_eval(prepared: dict, calib_dir: Path, texts: list[str], cfg: dict) -> dict:
    """The llama.cpp part of the stage for one checkpoint (see the module docstring); a document that says why
    where it did not run."""
    enabled = cfg.get("enabled", "auto")
    if enabled is False or enabled == "off":
        return {"status": "skipped", "reason": "quant_eval.llama_cpp.enabled is false"}
    bin_dir, how = find_tools(cfg.get("tools", "auto"), cfg["cache_dir"])
    if bin_dir is None:
        if enabled is True:
            raise InputError(f"quant_eval.llama_cpp.enabled is true but {how}")
        return {"status": "skipped", "reason": how}
    src = (prepared.get("gguf") or {}).get("path")
    if not src or not Path(src).is_file():
        return {"status": "skipped", "reason": f"{prepared['name']} has no GGUF file (its source is {prepared.get('source')}); "
                                               "convert it with llama.cpp's convert_hf_to_gguf.py and measure the GGUF"}
    imatrix = Path(calib_dir) / "imatrix.gguf"
    if not imatrix.is_file():
        return {"status": "skipped", "reason": f"{imatrix} is missing: add imatrix to measure.exports"}
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")]))}
    ctx, chunks = int(cfg.get("ctx", 128)), int(cfg.get("chunks", 16))
    out = {"status": "measured", "tools": how, "source_gguf": str(src), "imatrix": str(imatrix), "ctx": ctx,
           "chunks_asked": chunks, "types": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maxact-llama-") as tmp:
        tmp = Path(tmp)
        text = tmp / "heldout.txt"
        text.write_text("\n\n".join(texts), encoding="utf-8")
        base = tmp / "base-F32.gguf"
        r = _run([bin_dir / "llama-quantize", "--allow-requantize", src, base, "F32"], env)
        if r.returncode != 0:
            raise RuntimeError(f"llama-quantize could not dequantize {src} to F32: {(r.stdout + r.stderr)[-800:]}")
        out["base"] = perplexity(bin_dir, base, text, ctx, chunks, env)
        base_nll = math.log(out["base"]["ppl"])
        for t in cfg.get("types") or []:
            row = {}
            for label, extra in (("with_imatrix", ["--imatrix", imatrix]), ("without_imatrix", [])):
                dst = tmp / f"{t}-{label}.gguf"
                r = _run([bin_dir / "llama-quantize", *extra, base, dst, t], env)
                if r.returncode != 0 or not dst.is_file():
                    row[label] = {"status": "refused", "reason": (r.stdout + r.stderr).strip().splitlines()[-1:] or ["?"]}
                    row[label]["reason"] = row[label]["reason"][0][-300:]
                    continue
                used = "imatrix" in (r.stdout + r.stderr).lower() if extra else None
                p = perplexity(bin_dir, dst, text, ctx, chunks, env)
                row[label] = {"status": "measured", **p, "delta_nll_per_token": math.log(p["ppl"]) - base_nll,
                              "size_bytes": dst.stat().st_size, "imatrix_used": used}
                dst.unlink()
            out["types"][t] = row
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


if __name__ == "__main__":
    raise SystemExit(main())

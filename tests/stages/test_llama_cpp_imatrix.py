"""maxact's imatrix.gguf against llama.cpp itself, on the real SmolLM2-135M GGUF (slow).

llama.cpp's tools are built from the sources inside the llama-cpp-python source distribution (PyPI; cmake +
a C++ compiler), once, into the conversion cache. Then:

- ``llama-quantize --imatrix`` accepts maxact's file for the real SmolLM2 GGUF and uses it;
- ``llama-imatrix`` run on the same text gives, weight by weight, mean x^2 per input channel within a factor
  of 2 of maxact's (llama.cpp runs its own kernels on its own dequantized weights and reads the text as
  128-token chunks of one stream, maxact as 600-character samples: they differ in detail, not in scale;
  measured here: median ratio 1.006, 0.79 to 1.08 over 210 weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from real_checkpoints import CACHE, SMOL

LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors llama.cpp's sources
BUILD = CACHE / f"llama.cpp-{LLAMA_CPP_PYTHON}"
TOOLS = ("llama-quantize", "llama-imatrix")

pytestmark = pytest.mark.slow


def _build() -> Path:
    """The built tools' folder (built once); skips where the sources or a toolchain cannot be had."""
    bin_dir = BUILD / "build" / "bin"
    if all((bin_dir / t).exists() for t in TOOLS):
        return bin_dir
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("cmake and a C++ compiler are needed to build llama.cpp's tools")
    BUILD.mkdir(parents=True, exist_ok=True)
    dl = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(BUILD),
                         f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], capture_output=True, text=True)
    sdists = sorted(BUILD.glob("llama_cpp_python-*.tar.gz"))
    if dl.returncode != 0 or not sdists:
        pytest.skip(f"llama-cpp-python {LLAMA_CPP_PYTHON} source distribution not downloadable: {dl.stderr[-300:]}")
    with tarfile.open(sdists[0]) as tf:
        tf.extractall(BUILD, filter="data")
    src = next(BUILD.glob("llama_cpp_python-*/vendor/llama.cpp"))
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(BUILD / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(BUILD / "build"), "-j", "2", "--target", *TOOLS], check=True, capture_output=True)
    return bin_dir


def _text() -> str:
    """About 9,000 characters of the shipped multi-domain corpus (its first records)."""
    import gzip

    texts = []
    with gzip.open(Path(__file__).resolve().parents[2] / "resources" / "corpus" / "default.jsonl.gz", "rt") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if sum(map(len, texts)) > 9000:
                break
    return "\n\n".join(texts)[:9000]


def test_llama_cpp_reads_and_agrees_with_maxacts_imatrix(tmp_path):
    import gguf

    from maxact.cli import main
    from maxact.models.checkpoints import prepare_checkpoint

    bin_dir = _build()
    prepared = prepare_checkpoint(SMOL, CACHE)
    model_gguf = Path(prepared["gguf"]["path"])
    text = _text()
    (tmp_path / "text.txt").write_text(text)
    # maxact: the same text in 600-character samples, measured with the imatrix export.
    chunks = [text[i : i + 600] for i in range(0, len(text), 600)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "text": c}) + "\n" for i, c in enumerate(chunks)))
    assert main(["measure", "--model", str(model_gguf), "--texts", str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "m"),
                 "--device", "cpu", "--export", "imatrix", "--cache-dir", str(CACHE)]) == 0
    ours = tmp_path / "m" / "imatrix.gguf"

    # The tools' shared libraries sit beside them: found also when the cache was built elsewhere and moved.
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")]))}
    q = subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", "--imatrix", str(ours), str(model_gguf),
                        str(tmp_path / "out.gguf"), "Q4_K_M"], capture_output=True, text=True, env=env)
    assert q.returncode == 0, q.stderr[-2000:]
    log = q.stdout + q.stderr
    assert "imatrix" in log and (tmp_path / "out.gguf").stat().st_size > 0

    ref = tmp_path / "llama_imatrix.gguf"
    r = subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(model_gguf), "-f", str(tmp_path / "text.txt"), "-c", "128",
                        "-o", str(ref), "--no-ppl"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and ref.exists(), (r.stdout + r.stderr)[-2000:]

    def read(path):
        rd = gguf.GGUFReader(str(path))
        t = {x.name: np.asarray(x.data, dtype=np.float64).reshape(-1) for x in rd.tensors}
        return {n[: -len(".in_sum2")]: t[n].sum() / max(t[n[: -len(".in_sum2")] + ".counts"].sum(), 1) / t[n].size
                for n in t if n.endswith(".in_sum2")}

    a, b = read(ours), read(ref)
    common = sorted(set(a) & set(b))
    assert len(common) >= 0.9 * len(b), (len(common), len(b))
    ratios = np.array([a[n] / b[n] for n in common if b[n] > 0])
    print(f"maxact / llama-imatrix mean x^2 per channel over {len(ratios)} weights: median {np.median(ratios):.3f}, "
          f"range {ratios.min():.3f} to {ratios.max():.3f}")
    assert np.all((ratios > 0.5) & (ratios < 2)), {n: a[n] / b[n] for n in common if not 0.5 < a[n] / b[n] < 2}

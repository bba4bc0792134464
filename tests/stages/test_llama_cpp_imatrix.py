"""maxact's imatrix.gguf against llama.cpp itself, on the real SmolLM2-135M GGUF (slow).

llama.cpp's tools are built from the sources inside the llama-cpp-python source distribution (PyPI; cmake +
a C++ compiler), once, into the conversion cache (``python -m maxact.quant.llama_cpp build``). Then:

- ``llama-quantize --imatrix`` accepts maxact's file for the real SmolLM2 GGUF and uses it;
- ``llama-imatrix`` run on the same text gives, weight by weight, mean x^2 per input channel within a factor
  of 2 of maxact's (llama.cpp runs its own kernels on its own dequantized weights and reads the text as
  128-token chunks of one stream, maxact as 600-character samples: they differ in detail, not in scale;
  measured here: median ratio 1.006, 0.79 to 1.08 over 210 weights).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from maxact.quant.llama_cpp import LLAMA_CPP_PYTHON  # its sdist vendors llama.cpp's sources
from real_checkpoints import CACHE, SMOL

pytestmark = pytest.mark.slow


def _build() -> Path:
    """The built tools' folder (built once, by maxact's own builder); skips where the sources or a toolchain cannot be had."""
    from maxact.errors import InputError
    from maxact.quant.llama_cpp import build_tools

    try:
        return build_tools(CACHE, LLAMA_CPP_PYTHON)
    except InputError as e:
        pytest.skip(str(e))


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


@pytest.mark.extended  # llama.cpp reading maxact's imatrix stays in CI (above)
def test_quant_eval_runs_llama_cpp_with_and_without_maxacts_imatrix(tmp_path):
    """The quant_eval stage's llama.cpp part on the real SmolLM2: its GGUF dequantized to F32, Q4_K_M and IQ3_XXS made
    with and without maxact's imatrix, all scored by llama-perplexity on the same text; the imatrix lowers the
    low-bit type's perplexity."""
    from maxact.cli import main
    from maxact.models.checkpoints import prepare_checkpoint
    from maxact.quant.llama_cpp import llama_cpp_eval

    _build()
    prepared = prepare_checkpoint(SMOL, CACHE)
    text = _text()
    chunks = [text[i : i + 600] for i in range(0, len(text), 600)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "text": c}) + "\n" for i, c in enumerate(chunks)))
    assert main(["measure", "--model", prepared["gguf"]["path"], "--texts", str(tmp_path / "texts.jsonl"), "--out",
                 str(tmp_path / "m"), "--device", "cpu", "--export", "imatrix", "--cache-dir", str(CACHE)]) == 0
    doc = llama_cpp_eval(prepared, tmp_path / "m", chunks, {"types": ["Q4_K_M", "IQ3_XXS"], "ctx": 128, "chunks": 8,
                                                           "cache_dir": CACHE})
    assert doc["status"] == "measured" and doc["base"]["chunks"] == 8 and doc["base"]["ppl"] > 1
    for t in ("Q4_K_M", "IQ3_XXS"):
        w, wo = doc["types"][t]["with_imatrix"], doc["types"][t]["without_imatrix"]
        assert w["status"] == wo["status"] == "measured" and w["imatrix_used"] is True
        assert w["delta_nll_per_token"] > -0.05 and wo["delta_nll_per_token"] > -0.05
    iq = doc["types"]["IQ3_XXS"]
    assert iq["with_imatrix"]["ppl"] < iq["without_imatrix"]["ppl"], iq

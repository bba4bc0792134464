"""The NVRTC-compiled CUDA row-statistics kernel (maxact.measurement.kernels.cuda).

On a machine without a GPU the kernel's pieces that do not need one are checked: the |a|-pattern ->
log10-bin table against the torch path's own histogram, the launch geometry, and (where ``nvcc`` is
installed) that every kernel variant compiles for Hopper without register spills beyond a few words.
With CUDA, the kernel itself is compared with the plain-torch reference on the same cases as the
Triton kernel (tests/measurement/test_kernels.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
from test_kernels import compare, make_case

from maxact.measurement import kernels as K
from maxact.measurement.kernels import cuda as CK

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_key_bin_table_equals_torch_histogram(dtype):
    table = CK.key_bin_table(dtype, "cpu")
    assert table.shape == (1 << 15,) and table.dtype == torch.int32
    exp_all = 0x7F80 if dtype == torch.bfloat16 else 0x7C00
    assert int(table[0]) == -1 and bool((table[exp_all:] == -1).all())  # zero and non-finite: not counted
    counted = table[1:exp_all]
    assert bool((counted >= 0).all()) and bool((counted[1:] >= counted[:-1]).all())  # monotone in |a|
    # Independent: random activations binned by the torch path vs looked up through the table.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(200_000, generator=g) * 10.0 ** (torch.rand(200_000, generator=g) * 24 - 12)).to(dtype)
    x[::97] = 0.0
    ref = torch.zeros(512, dtype=torch.int64)
    K.row_stats_reference(x.reshape(1, -1), torch.ones(1, dtype=torch.bool), ref, want_median=False)
    keys = x.view(torch.int16).to(torch.int32) & 0x7FFF
    bins = table[keys.long()]
    got = torch.bincount(bins[bins >= 0].long(), minlength=512)
    assert torch.equal(got, ref)
    # And the closed form the CUDA histc uses, pattern by pattern.
    vals = torch.arange(1, exp_all, dtype=torch.int32).to(torch.int16).view(dtype).float()
    la = torch.log10(vals).clamp(-8.0, 8.0 - 1e-6)
    assert torch.equal(((la + 8.0) * 512.0 / 16.0).to(torch.int32).clamp(0, 511), counted)


@pytest.mark.parametrize("c", [1, 5, 32, 640, 1000, 1024, 1025, 1536, 2048, 2049, 4096, 4097, 12288, 30000, 32768])
@pytest.mark.parametrize("elems", [32, 48, 64])
def test_launch_shape_covers_the_row(c, elems):
    g, nch, groups, threads = CK.launch_shape(c, elems)
    assert g >= 32 and g & (g - 1) == 0 and g <= 1024
    assert nch * 8 * g >= c  # every channel has a thread
    assert nch * 8 <= elems  # at most elems / 2 packed key registers a thread
    assert (nch - 1) * 8 * g < c  # no chunk that is out of range for every thread
    assert threads == groups * g <= 1024
    if g > 32:
        assert groups <= 15  # named barriers 1..15, one per row group


def test_backend_selection_on_cpu():
    x = torch.zeros(4, 8, dtype=torch.bfloat16)
    assert not CK.supports(x)
    assert K.backend_for(x, "cuda") in ("triton", "torch")  # never the CUDA kernel off the GPU
    assert K.backend_for(x, "torch") == "torch"


def test_describe_off_the_gpu(monkeypatch):
    assert K.describe(torch.device("cpu"), torch.bfloat16) == "torch"
    monkeypatch.setattr(K, "FUSED_ENABLED", False)
    assert not K.fused_enabled()
    assert K.describe(torch.device("cpu"), torch.float32) == "torch"


def test_source_is_the_cu_file():
    from pathlib import Path

    cu = Path(CK.__file__).with_name("row_stats.cu")
    assert CK.SOURCE == cu.read_text() and "maxact_row_stats" in CK.SOURCE
    d = CK.defines(0, 4096, True, True, True)
    assert CK.source_for(d) == "".join(f"#define {k} {v}\n" for k, v in d.items()) + cu.read_text()


def test_kernel_modules_do_not_import_each_other():
    """cuda.py and triton.py share kernels.common; only the package (the dispatch) imports both."""
    import ast
    from pathlib import Path

    root = Path(K.__file__).parent
    for name in ("cuda.py", "triton.py", "common.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maxact"):
                assert node.module == "maxact.measurement.kernels.common", (name, node.module)
                assert not any(a.name.startswith("_") for a in node.names), (name, [a.name for a in node.names])


def _nvrtc():
    """libnvrtc from the CUDA wheels (nvidia-cuda-nvrtc) or the system, or None."""
    import ctypes
    import glob
    import importlib.util

    names = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        names += sorted(glob.glob(f"{root}/*/lib/libnvrtc.so*")) + sorted(glob.glob(f"{root}/cuda_nvrtc/lib/libnvrtc.so*"))
    names += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for name in names:
        if "builtins" in name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def nvrtc_compile(source: str, arch: str = "compute_90") -> tuple[bool, str]:
    """Compile with NVRTC exactly as torch.cuda._compile_kernel does (same flags), to PTX: no GPU needed."""
    import ctypes

    lib = _nvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"k.cu", 0, None, None) == 0
    flags = [f"--gpu-architecture={arch}", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    opts = (ctypes.c_char_p * len(flags))(*[f.encode() for f in flags])
    rc = lib.nvrtcCompileProgram(prog, len(flags), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, log.value.decode(errors="replace")


@pytest.mark.skipif(_nvrtc() is None, reason="NVRTC not installed (pip install nvidia-cuda-nvrtc): compile check skipped")
@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("c", [640, 1536, 4096, 12288, 30000])
def test_kernel_variants_compile_with_nvrtc(kind, c):
    for vec, median, hist in ((True, True, True), (False, True, True), (True, False, False), (True, True, False)):
        if vec and c % 8:
            continue
        ok, log = nvrtc_compile(CK.source_for(CK.defines(kind, c, vec, median, hist)))
        assert ok, log[-3000:]
        assert "warning" not in log, log[-3000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: register/spill check needs the CUDA toolkit")
@pytest.mark.parametrize("c", [640, 4096, 12288])
def test_kernel_fits_its_register_budget(tmp_path, c):
    """1024 threads a block leave 64 registers a thread: spills must stay a few words."""
    for vec, median, hist in ((True, True, True), (False, True, True)):
        src = tmp_path / "k.cu"
        src.write_text(CK.source_for(CK.defines(0, c, vec, median, hist)))
        r = subprocess.run(["nvcc", "-arch=sm_90", "-Xptxas", "-v", "-c", str(src), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", r.stderr)]
        assert spills and max(spills) <= 128, r.stderr[-2000:]


cuda = pytest.mark.skipif(not (torch.cuda.is_available() and CK.available()), reason="needs CUDA and NVRTC")


@cuda
@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("c", [5, 64, 640, 1000, 1536, 2048, 4096, 4097, 12288, 32768])
def test_cuda_kernel_equals_reference(dtype, n, c):
    x, valid = make_case(n, c, dtype)
    x, valid = x.cuda(), valid.cuda()
    assert K.backend_for(x) == "cuda"
    errs = []
    for want_median, with_hist in ((True, True), (False, False), (True, False), (False, True)):
        hg = torch.full((512,), 3, dtype=torch.int64, device="cuda") if with_hist else None
        hr = hg.clone() if with_hist else None
        got = K.row_stats(x, valid, hg, want_median, backend="cuda")
        ref = K.row_stats_reference(x, valid, hr, want_median)
        errs += compare(got, ref, hg, hr, f"{dtype} {n}x{c} med={want_median} hist={with_hist}")
    assert not errs, "\n".join(errs[:20])


@cuda
def test_cuda_kernel_in_point_stats_equals_torch_path(monkeypatch):
    from maxact.measurement import statistics as S

    x, valid = make_case(300, 4096, torch.bfloat16, seed=5)
    info = S.TokenInfo(valid, torch.arange(300) % 4, torch.arange(300), torch.arange(300))
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(K, "FUSED_ENABLED", flag)
        ps = S.PointStats("p", 4, "cuda")
        ps.update(x.cuda(), S.TokenInfo(*(t.cuda() for t in (info.valid, info.sample, info.position, info.token_id))))
        out[flag] = ps.finalize()
    for k, v in out[False].items():
        w = out[True][k]
        if isinstance(v, float):
            assert w == pytest.approx(v, rel=1e-5, abs=1e-7, nan_ok=True), k
        else:
            assert w == v, k


@cuda
@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("c", [640, 4096, 12288])
def test_cuda_kernel_median_at_extreme_magnitudes(dtype, c):
    """The median's two compare paths: packed fp16 compares (keys below fp16's inf pattern, including
    patterns that read as fp16 subnormals) and the integer fallback (bf16 rows holding |a| >= 2**121)."""
    g = torch.Generator().manual_seed(c)
    info = torch.finfo(dtype)
    rows = [
        torch.randn(c, generator=g) * 1e-3,
        torch.rand(c, generator=g) * info.tiny,  # subnormals (and, read as fp16, subnormal patterns)
        torch.randn(c, generator=g) * info.max / 8,  # bf16: beyond 2**121 -> integer path
        torch.cat([torch.randn(c // 2, generator=g), torch.full((c - c // 2,), info.max)]),
        torch.cat([torch.randn(c - 3, generator=g) * 1e-30, torch.tensor([info.max, -info.max, info.tiny])]),
    ]
    x = torch.stack(rows).to(dtype).cuda()
    valid = torch.ones(len(rows), dtype=torch.bool, device="cuda")
    got = K.row_stats(x, valid, None, True, backend="cuda")
    ref = K.row_stats_reference(x, valid, None, True)
    assert torch.equal(got["median"], ref["median"]), (got["median"], ref["median"])
    assert torch.equal(got["max"], ref["max"]) and torch.equal(got["min"], ref["min"])

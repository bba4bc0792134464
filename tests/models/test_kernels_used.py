"""How Triton multiplies float32 matrices inside the package kernels (fla) of a float32 CUDA measurement."""

from __future__ import annotations

import importlib

import pytest
import torch

from maxact.models import kernels_used as ku
from tiny_models import tiny_model

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def fla_bound(monkeypatch):
    """A model whose optional kernel is bound to fla's implementation (what transformers binds where fla imports)."""
    monkeypatch.setattr(ku, "package_kernels", lambda model: {"chunk_gated_delta_rule": "fla.ops.gated_delta_rule.chunk"})
    monkeypatch.delenv(ku.TRITON_F32_ENV, raising=False)
    monkeypatch.setattr(ku, "_set_by_maxact", [])


def test_float32_on_cuda_asks_triton_for_ieee_float32_and_takes_it_back_after(fla_bound):
    import os

    assert ku.float32_triton_dots(None, CUDA, torch.float32) == "ieee"
    assert os.environ[ku.TRITON_F32_ENV] == "ieee"
    # a bf16 run after it in the same process gets Triton's default again, as in a fresh process
    assert ku.float32_triton_dots(None, CUDA, torch.bfloat16) == "tf32 (Triton's default)"
    assert ku.TRITON_F32_ENV not in os.environ


def test_the_users_own_setting_is_kept(fla_bound, monkeypatch):
    import os

    monkeypatch.setenv(ku.TRITON_F32_ENV, "tf32")
    assert ku.float32_triton_dots(None, CUDA, torch.float32) == "tf32"
    assert ku.float32_triton_dots(None, CUDA, torch.bfloat16) == "tf32"
    assert os.environ[ku.TRITON_F32_ENV] == "tf32"


def test_nothing_is_set_on_the_cpu_or_without_package_kernels(fla_bound, monkeypatch):
    import os

    assert ku.float32_triton_dots(None, CPU, torch.float32) is None
    monkeypatch.setattr(ku, "package_kernels", lambda model: {})
    assert ku.float32_triton_dots(None, CUDA, torch.float32) is None
    assert ku.TRITON_F32_ENV not in os.environ


def _fla_imports() -> bool:
    try:  # what transformers itself tries when it imports the Qwen3.5 code (fla needs triton: CUDA machines)
        importlib.import_module("fla.ops.gated_delta_rule")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _fla_imports(), reason="transformers binds fla's kernels only where fla imports")
def test_a_qwen3_5_model_with_fla_records_the_setting_in_its_kernels(monkeypatch):
    monkeypatch.delenv(ku.TRITON_F32_ENV, raising=False)
    monkeypatch.setattr(ku, "_set_by_maxact", [])
    model = tiny_model("qwen3_5_text")
    assert ku.float32_triton_dots(model, CUDA, torch.float32) == "ieee"
    assert ku.kernels_used(model)["triton_float32_dot"] == "ieee"
    assert "triton_float32_dot" not in ku.kernels_used(tiny_model("llama"))

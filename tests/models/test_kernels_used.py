"""How Triton multiplies float32 matrices inside the package kernels (fla) of a float32 CUDA measurement."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from maxact.models import kernels_used as ku
from tiny_models import tiny_model

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FLA = {"chunk_gated_delta_rule": "fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule"}


def _unset(monkeypatch, name):
    monkeypatch.setenv(name, "x")  # recorded first, so that the teardown puts back what was there (or nothing)
    monkeypatch.delenv(name)


@pytest.fixture
def fla_bound(monkeypatch):
    """transformers bound the model's optional kernel to fla's implementation (as where fla imports)."""
    monkeypatch.setattr(ku, "optional_kernels", lambda model: dict(FLA))
    _unset(monkeypatch, ku.TRITON_F32_ENV)
    monkeypatch.setattr(ku, "_set_by_maxact", [])


def test_float32_on_cuda_asks_triton_for_ieee_float32_and_takes_it_back_after(fla_bound):
    assert ku.float32_triton_dots(None, CUDA, torch.float32) == "ieee"
    assert os.environ[ku.TRITON_F32_ENV] == "ieee"
    # a bf16 or float16 run after it in the same process gets Triton's default again, as in a fresh process
    assert ku.float32_triton_dots(None, CUDA, torch.bfloat16) == ku.TRITON_DEFAULT
    assert ku.TRITON_F32_ENV not in os.environ
    assert ku.float32_triton_dots(None, CUDA, torch.float16) == ku.TRITON_DEFAULT


@pytest.mark.parametrize("users", ["tf32", "ieee"])
def test_the_users_own_setting_is_kept(fla_bound, monkeypatch, users):
    monkeypatch.setenv(ku.TRITON_F32_ENV, users)
    assert ku.float32_triton_dots(None, CUDA, torch.float32) == users
    assert ku.float32_triton_dots(None, CUDA, torch.bfloat16) == users
    assert os.environ[ku.TRITON_F32_ENV] == users


def test_an_empty_variable_is_triton_default_and_float32_still_gets_ieee(fla_bound, monkeypatch):
    monkeypatch.setenv(ku.TRITON_F32_ENV, "")  # Triton reads "" as unset
    assert ku.triton_f32_setting() == ku.TRITON_DEFAULT
    assert ku.float32_triton_dots(None, CUDA, torch.float32) == "ieee"


def test_nothing_is_set_on_the_cpu_or_without_package_kernels(fla_bound, monkeypatch):
    assert ku.float32_triton_dots(None, CPU, torch.float32) is None
    monkeypatch.setattr(ku, "optional_kernels", lambda model: {"chunk_gated_delta_rule": "torch reference (fla not importable)"})
    assert ku.float32_triton_dots(None, CUDA, torch.float32) is None
    assert ku.TRITON_F32_ENV not in os.environ


def test_kernels_used_records_the_setting_only_where_package_kernels_run(fla_bound, monkeypatch):
    model = tiny_model("llama")
    assert ku.kernels_used(model)["triton_float32_dot"] == ku.TRITON_DEFAULT
    ku.float32_triton_dots(model, CUDA, torch.float32)
    assert ku.kernels_used(model)["triton_float32_dot"] == "ieee"
    monkeypatch.setattr(ku, "optional_kernels", lambda model: {})
    assert "triton_float32_dot" not in ku.kernels_used(model)


def _fla_imports() -> bool:
    try:  # what transformers itself tries when it imports the Qwen3.5 code (fla needs triton: CUDA machines)
        importlib.import_module("fla.ops.gated_delta_rule")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _fla_imports(), reason="transformers binds fla's kernels only where fla imports")
def test_a_qwen3_5_model_with_fla_records_the_setting_in_its_kernels(monkeypatch):
    _unset(monkeypatch, ku.TRITON_F32_ENV)
    monkeypatch.setattr(ku, "_set_by_maxact", [])
    model = tiny_model("qwen3_5_text")
    assert ku.float32_triton_dots(model, CUDA, torch.float32) == "ieee"
    assert ku.kernels_used(model)["triton_float32_dot"] == "ieee"
    assert "triton_float32_dot" not in ku.kernels_used(tiny_model("llama"))

"""Gated DeltaNet layers (Qwen3.5) over packed rows: a causal conv1d that keeps the samples apart.

A Gated DeltaNet layer runs a depthwise causal conv1d of ``K`` taps (4) along the row, then the chunked
gated delta rule. Packed, the rule restarts at each sample with fla's kernel (``cu_seqlens``, passed by
transformers), but transformers' conv (its torch fallback, or the causal-conv1d kernel, which it calls
without sample indices) lets the first ``K - 1`` tokens of a sample see the last ones of the sample
before it. While a packed measurement runs, the layers' module-level ``causal_conv1d_fn`` is swapped for
:func:`boundary_causal_conv1d`: the same conv over the row, then the first ``K - 1`` outputs of every
sample recomputed from that sample's own inputs (zeros before its start, as the padded path has). The
rows to recompute are known on the host and come in the forward's kwargs (``maxact_conv_rows``/``_starts``).
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F

#: The layer attribute holding a Gated DeltaNet module, and the module-level conv its forward calls.
LAYER_ATTR = "linear_attn"
CONV_FN = "causal_conv1d_fn"


def boundary_rows(lengths: list[int], kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, starts) on the host: the first ``kernel_size - 1`` rows of every sample of a packed row, and
    where each one's sample starts."""
    rows, starts, at = [], [], 0
    for n in lengths:
        for p in range(min(kernel_size - 1, n)):
            rows.append(at + p)
            starts.append(at)
        at += n
    return torch.tensor(rows, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def boundary_causal_conv1d(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           activation: str | None, rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """transformers' causal conv (``hidden_states`` [1, C, N], ``weight`` [C, K]) over a packed row, with the
    rows at a sample's start computed from that sample alone."""
    from transformers.activations import ACT2FN

    x = hidden_states.to(weight.dtype)
    c, n = x.shape[1], x.shape[2]
    k = weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias=bias, padding=k - 1, groups=c)[:, :, :n]
    if rows.numel():
        src = rows[:, None] + torch.arange(1 - k, 1, device=rows.device)  # [M, K]: t-K+1 .. t
        inside = src >= starts[:, None]  # taps before the sample's start read zeros
        window = x[0][:, src.clamp_min(0)].float() * inside  # [C, M, K]
        fixed = (window * weight.float()[:, None, :]).sum(-1)
        if bias is not None:
            fixed = fixed + bias.float()[:, None]
        out[0].index_copy_(1, rows, fixed.to(out.dtype))
    if activation is not None:
        out = ACT2FN[activation](out)
    return out.to(hidden_states.dtype)


def _wrap(original):
    def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, maxact_conv_rows=None,
                         maxact_conv_starts=None, **kwargs):
        if maxact_conv_rows is None:  # not a packed forward of maxact's
            return original(hidden_states, weight, bias=bias, activation=activation, **kwargs)
        return boundary_causal_conv1d(hidden_states, weight, bias, activation, maxact_conv_rows, maxact_conv_starts)

    causal_conv1d_fn.maxact_original = original
    return causal_conv1d_fn


_OPEN: dict[str, int] = {}  # module name -> open boundary_conv contexts (the swap is undone by the last)


@contextlib.contextmanager
def boundary_conv(backbone: torch.nn.Module):
    """The backbone's Gated DeltaNet layers call :func:`boundary_causal_conv1d` while the context is open."""
    modules = {sys.modules[type(getattr(layer, LAYER_ATTR)).__module__]
               for layer in backbone.layers if hasattr(layer, LAYER_ATTR)}
    for mod in modules:
        if getattr(mod, CONV_FN, None) is None:
            raise RuntimeError(f"{mod.__name__} has no {CONV_FN}: this transformers lays out Gated DeltaNet differently; "
                               "measure with packing: off")
    for mod in modules:
        if _OPEN.get(mod.__name__, 0) == 0:
            setattr(mod, CONV_FN, _wrap(getattr(mod, CONV_FN)))
        _OPEN[mod.__name__] = _OPEN.get(mod.__name__, 0) + 1
    try:
        yield
    finally:
        for mod in modules:
            _OPEN[mod.__name__] -= 1
            if _OPEN[mod.__name__] == 0:
                setattr(mod, CONV_FN, getattr(mod, CONV_FN).maxact_original)


def kernel_size(backbone: torch.nn.Module) -> int:
    for layer in backbone.layers:
        if hasattr(layer, LAYER_ATTR):
            return int(getattr(layer, LAYER_ATTR).conv1d.weight.shape[-1])
    raise ValueError("the backbone has no Gated DeltaNet layer")

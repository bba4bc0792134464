"""Attention over packed rows (several samples in one row, no padding) for transformers' attention modules.

Registered in transformers' ``AttentionInterface`` as :data:`NAME` and deliberately *not* in its mask
interface: transformers then builds no mask at all (it skips mask creation for an attention function it has
no mask function for), and the per-sample boundaries come from ``cu_seq_lens_q/k`` and ``max_length_q/k``
in the forward's keyword arguments, which every backbone of the registry passes down to its attention.

One kernel, torch's ``varlen_attn`` (flash attention), covers every family that packs on CUDA:

- causal attention: ``window_size=(-1, 0)``;
- sliding windows: transformers' window ``W`` lets a query see itself and the ``W - 1`` keys before it,
  i.e. ``window_size=(W - 1, 0)``;
- gpt-oss's attention sinks: a learned logit ``s_h`` per head joins each query's softmax without a value.
  With ``lse`` the log-sum-exp of the query's (scaled) logits, the output with the sink is the output
  without it times ``exp(lse) / (exp(lse) + exp(s_h)) = sigmoid(lse - s_h)``.

Soft-capped logits (Gemma 2) cannot be expressed: the registry keeps that family padded on CUDA.
"""

from __future__ import annotations

import functools
import inspect

import torch

NAME = "maxact_varlen"


class PackedAttentionError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def capabilities() -> dict:
    """What this torch's ``varlen_attn`` takes: sliding windows, grouped K/V heads, the log-sum-exp.
    Empty when torch has no ``varlen_attn`` (before 2.10)."""
    try:
        from torch.nn.attention import varlen
    except ImportError:
        return {}
    if not hasattr(varlen, "varlen_attn"):
        return {}
    params = inspect.signature(varlen.varlen_attn).parameters
    return {"window_size": "window_size" in params, "enable_gqa": "enable_gqa" in params,
            "return_aux": "return_aux" in params and hasattr(varlen, "AuxRequest"), "is_causal": "is_causal" in params}


def available() -> bool:
    return bool(capabilities())


def describe() -> str:
    caps = capabilities()
    if not caps:
        return "unavailable (torch has no torch.nn.attention.varlen.varlen_attn)"
    gqa = "grouped K/V natively" if caps["enable_gqa"] else "K/V heads repeated for grouped-query attention"
    win = "sliding windows by window_size" if caps["window_size"] else "sliding windows by aten._flash_attention_forward"
    return f"torch.nn.attention.varlen.varlen_attn {torch.__version__} (flash; {gqa}; {win}; sinks through the LSE)"


def _flash(q, k, v, cu, max_len: int, scale, window: tuple[int, int], want_lse: bool, gqa: bool = False):
    """Packed causal attention of [N, H, D] tensors; (out, lse [N, H] float32 or None)."""
    from torch.nn.attention import varlen

    caps = capabilities()
    if window != (-1, 0) and not caps["window_size"]:
        # This torch's varlen_attn takes no window: the flash forward it wraps does (K/V repeated by the caller).
        out, lse = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale,
            window_size_left=window[0], window_size_right=window[1])[:2]
        return out, (_lse_rows(lse, q) if want_lse else None)
    kw: dict = {"scale": scale}
    if caps["window_size"]:
        kw["window_size"] = window
    elif caps["is_causal"]:
        kw["is_causal"] = True
    if gqa:
        kw["enable_gqa"] = True
    if want_lse:
        if not caps["return_aux"]:
            raise PackedAttentionError("attention sinks need varlen_attn's log-sum-exp (return_aux), which this torch lacks")
        out, lse = varlen.varlen_attn(q, k, v, cu, cu, max_len, max_len, return_aux=varlen.AuxRequest(lse=True), **kw)
        return out, _lse_rows(lse, q)
    return varlen.varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw), None


def _lse_rows(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The flash forward's LSE ([H, N], as torch's own fake kernel declares it) as [N, H] float32. Only an
    [N, H] result with N != H is taken as already laid out by rows; N == H is read as the kernel's [H, N]."""
    n, h = q.shape[0], q.shape[1]
    if lse.shape == (n, h) and n != h:
        return lse.float()
    if lse.shape != (h, n):
        raise PackedAttentionError(f"varlen_attn returned a log-sum-exp of shape {tuple(lse.shape)} for {n} tokens, {h} heads")
    return lse.transpose(0, 1).float()


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, softcap: float | None = None,
                             s_aux: torch.Tensor | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                             cu_seq_lens_k: torch.Tensor | None = None, max_length_q: int | None = None,
                             max_length_k: int | None = None, **kwargs):
    """transformers' attention-function contract: ``query`` [1, H, N, D], ``key``/``value`` [1, H_kv, N, D];
    returns ([1, N, H, D], None)."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise PackedAttentionError(f"{NAME} needs cu_seq_lens_q and max_length_q in the forward's kwargs (a packed batch)")
    if query.shape[0] != 1 or attention_mask is not None:
        raise PackedAttentionError(f"{NAME} runs one packed row without a mask; got batch {query.shape[0]}, "
                                   f"mask {None if attention_mask is None else tuple(attention_mask.shape)}")
    if softcap:
        raise PackedAttentionError(f"{NAME} cannot apply attention logit soft-capping ({type(module).__name__})")
    if (cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q) or max_length_k not in (None, max_length_q):
        raise PackedAttentionError(f"{NAME} computes self-attention over one packed row (keys = queries)")
    if sliding_window is None:  # some attention modules (Qwen2-MoE) keep their window without passing it
        sliding_window = getattr(module, "sliding_window", None)
    q = query[0].transpose(0, 1)  # [N, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    window = (int(sliding_window) - 1, 0) if sliding_window else (-1, 0)
    caps = capabilities()
    h, h_kv = q.shape[1], k.shape[1]
    gqa = h != h_kv and caps["enable_gqa"] and (window == (-1, 0) or caps["window_size"])
    if h != h_kv and not gqa:
        k = k.repeat_interleave(h // h_kv, dim=1)
        v = v.repeat_interleave(h // h_kv, dim=1)
    out, lse = _flash(q, k, v, cu_seq_lens_q, max_length_q, scaling, window, want_lse=s_aux is not None, gqa=gqa)
    if s_aux is not None:
        # The sink's share of each query's softmax, removed from the output (see the module docstring).
        out = (out.float() * torch.sigmoid(lse - s_aux.float()[None, :])[..., None]).to(out.dtype)
    return out.unsqueeze(0), None


def register() -> None:
    """Make :data:`NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)

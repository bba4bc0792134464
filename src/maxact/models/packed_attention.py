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

Soft-capped logits (Gemma 2) cannot be expressed in ``varlen_attn``. They go through FlexAttention instead
(:data:`FLEX_NAME`): the soft-cap as its ``score_mod`` and the per-sample boundaries, causality and sliding
window as a block mask built exactly from ``cu_seq_lens_q`` with tensor ops (:func:`document_block_mask`, no
host sync). The row is padded inside the attention function to a power-of-two length (at least
:data:`FLEX_MIN_LEN`), so the compiled kernel sees a handful of shapes over a whole study (transformers' own flex
path recompiles for every packed length and runs into torch.compile's recompile limit); the padding is masked
out, never seen by a hook, and cut off before the output projection.
"""

from __future__ import annotations

import functools
import inspect

import torch

NAME = "maxact_varlen"
FLEX_NAME = "maxact_flex"
FLEX_BLOCK = 128  # FlexAttention's default block size; the block mask is built at this granularity
FLEX_MIN_LEN = 1024
FLEX_MIN_HEAD_DIM = 16  # Triton's flex kernel: "embedding dimension ... must be at least 16" (torch 2.11)


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


def flex_available(device_type: str = "cuda") -> bool:
    """FlexAttention as this module uses it: torch's flex_attention with ``BlockMask.from_kv_blocks`` taking
    ``seq_lengths`` and, on CUDA, Triton to compile it."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    if "seq_lengths" not in inspect.signature(BlockMask.from_kv_blocks).parameters:
        return False
    if device_type != "cuda":
        return True  # uncompiled (the reference path that materialises the scores): the CPU tests
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def function_name(kernel: str) -> str:
    """The attention function registered for a family's packed ``kernel`` ('varlen_attn' or 'flex_attention')."""
    return FLEX_NAME if kernel == "flex_attention" else NAME


def describe(kernel: str = "varlen_attn") -> str:
    if kernel == "flex_attention":
        return (f"torch.nn.attention.flex_attention {torch.__version__} (compiled on CUDA; soft-capping as score_mod; samples, "
                f"causality and sliding windows as a block mask; rows padded to a power of two >= {FLEX_MIN_LEN})")
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


def flex_length(n: int) -> int:
    """The padded row length the compiled FlexAttention kernel runs for ``n`` tokens: a power of two."""
    return max(FLEX_MIN_LEN, 1 << max(n - 1, 0).bit_length())


def document_block_mask(cu_seqlens: torch.Tensor, n: int, n_pad: int, window: int | None):
    """FlexAttention's block mask for one packed row of ``n`` tokens padded to ``n_pad``: a query sees the keys of
    its own sample at or before it, and within ``window`` of it (transformers' sliding window ``W``: itself and the
    ``W - 1`` before); padding sees nothing.

    Built with tensor ops only, exactly: samples are contiguous and in order, so the kv block ``j < i`` holds a
    key visible from the q block ``i`` iff the last sample of ``j`` is the first of ``i`` and the nearest pair
    (the last key of ``j``, the first query of ``i``) is within the window; ``j`` is fully visible iff both blocks
    lie in one sample and the farthest pair is within the window. Partial blocks apply ``mask_mod`` per element."""
    from torch.nn.attention.flex_attention import BlockMask

    b = FLEX_BLOCK
    dev = cu_seqlens.device
    idx = torch.arange(n_pad, device=dev, dtype=torch.int32)
    doc = torch.searchsorted(cu_seqlens[1:].to(torch.int32).contiguous(), idx, right=True).to(torch.int32)
    doc = torch.where(idx < n, doc, torch.full_like(doc, -1))
    w = int(window) if window else n_pad + 1
    lo = idx - (w - 1)  # the first key a query may see (before its sample's start: the doc test cuts it)

    def mask_mod(bi, h, q, kv):
        return (doc[q] == doc[kv]) & (doc[q] >= 0) & (kv <= q) & (kv >= lo[q])

    nb = n_pad // b
    d = doc.view(nb, b)
    last = d.max(1).values  # -1: a block of padding only
    first = torch.where(d >= 0, d, torch.full_like(d, torch.iinfo(torch.int32).max)).min(1).values
    i = torch.arange(nb, device=dev)[:, None]
    j = torch.arange(nb, device=dev)[None, :]
    nearest = i * b - (j * b + b - 1)
    farthest = i * b + b - 1 - j * b
    live = (last >= 0)[:, None]
    visible = live & ((j == i) | ((j < i) & (last[None, :] == first[:, None]) & (nearest < w)))
    single = (first == last) & (d >= 0).all(1)  # one sample, no padding
    full = (j < i) & single[:, None] & single[None, :] & (last[:, None] == last[None, :]) & (farthest < w)
    partial = visible & ~full

    def blocks(m):  # per q block: how many kv blocks, and their indices first
        return (m.sum(1).to(torch.int32)[None, None],
                torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)[None, None])

    return BlockMask.from_kv_blocks(*blocks(partial), *blocks(full), BLOCK_SIZE=b, mask_mod=mask_mod,
                                    seq_lengths=(n_pad, n_pad))


@functools.lru_cache(maxsize=None)
def _flex_kernel(device_type: str):
    """FlexAttention compiled (one graph per padded row length, see flex_length) on CUDA; elsewhere its
    uncompiled reference path, which materialises the scores (the CPU tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


FLEX_RECOMPILE_LIMIT = 512


def _compile_limits():
    """For the compiled call only: room for one graph per padded length (7 from 1,024 to 65,536), per GPU a model
    is spread over and per scale/soft-cap constant (one per model), and an error past it: at torch's default of
    8, dynamo would silently run flex_attention uncompiled, materialising every N x N score matrix."""
    import torch._dynamo.config as cfg

    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # the name before torch 2.6
    fail = "fail_on_recompile_limit_hit" if hasattr(cfg, "fail_on_recompile_limit_hit") else "fail_on_cache_limit_hit"
    return cfg.patch(**{limit: FLEX_RECOMPILE_LIMIT, **({fail: True} if hasattr(cfg, fail) else {})})


_FLEX_MASKS: dict = {}  # the last row's masks: every layer of one forward gets the same cu_seqlens tensor


def _row_mask(cu: torch.Tensor, n: int, n_pad: int, window: int | None):
    if _FLEX_MASKS.get("cu") is not cu or _FLEX_MASKS.get("n") != n:
        _FLEX_MASKS.clear()
        _FLEX_MASKS.update(cu=cu, n=n)  # holds cu, so a later row's tensor cannot reuse its identity
    key = ("mask", n_pad, window)
    if key not in _FLEX_MASKS:
        _FLEX_MASKS[key] = document_block_mask(cu, n, n_pad, window)
    return _FLEX_MASKS[key]


def flex_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           sliding_window: int | None = None, softcap: float | None = None,
                           cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                           max_length_q: int | None = None, max_length_k: int | None = None, **kwargs):
    """transformers' attention-function contract over one packed row with FlexAttention: soft-capped logits,
    per-sample causal attention with an optional sliding window, grouped K/V heads; ([1, N, H, D], None)."""
    if cu_seq_lens_q is None:
        raise PackedAttentionError(f"{FLEX_NAME} needs cu_seq_lens_q in the forward's kwargs (a packed batch)")
    if query.shape[0] != 1 or attention_mask is not None:
        raise PackedAttentionError(f"{FLEX_NAME} runs one packed row without a mask; got batch {query.shape[0]}, "
                                   f"mask {None if attention_mask is None else tuple(attention_mask.shape)}")
    if (cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q) or max_length_k not in (None, max_length_q):
        raise PackedAttentionError(f"{FLEX_NAME} computes self-attention over one packed row (keys = queries)")
    if kwargs.get("s_aux") is not None:
        raise PackedAttentionError(f"{FLEX_NAME} does not apply attention sinks ({type(module).__name__}); {NAME} does")
    if sliding_window is None:
        sliding_window = getattr(module, "sliding_window", None)
    n = query.shape[2]
    n_pad = flex_length(n)
    pad = (0, 0, 0, n_pad - n)  # pad the token dimension of [1, H, N, D]
    q, k, v = (torch.nn.functional.pad(t, pad) for t in (query, key, value))
    cap = float(softcap) if softcap else None

    def soft_cap(score, b, h, qi, kv):
        return cap * torch.tanh(score / cap)

    mask = _row_mask(cu_seq_lens_q, n, n_pad, sliding_window)
    with _compile_limits():
        out = _flex_kernel(query.device.type)(q, k, v, score_mod=soft_cap if cap else None, block_mask=mask, scale=scaling,
                                              enable_gqa=query.shape[1] != key.shape[1])
    return out[:, :, :n].transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`NAME` and :data:`FLEX_NAME` transformers attention implementations (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionInterface.register(FLEX_NAME, flex_attention_forward)

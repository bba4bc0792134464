"""Which forward a measurement runs: padded batches, or packed rows (the samples of a batch end to end in one
row, position ids restarting per sample, no padding), settled from ``measure.packing`` and the family's
registry entry (:class:`maxact.models.registry.Packing`).

Methods: ``varlen`` (CUDA, bf16/fp16: variable-length rows, the per-sample boundaries as cumulative sequence
lengths, no mask at all; torch's ``varlen_attn``, or FlexAttention for Gemma 2's soft-capped logits), ``block_mask`` (transformers' own block-diagonal packed mask under SDPA or eager: the CPU, or CUDA in
float32, where flash kernels do not run) and ``padded`` (today's batches with an attention mask).

``auto`` packs wherever packing is exact and faster: ``varlen`` on CUDA. On the CPU it stays padded: the
block-diagonal mask makes every attention layer quadratic in the whole row (all samples' tokens), which
costs more than the padding it saves. ``on`` packs or stops, naming what blocks it; ``off`` never packs.
"""

from __future__ import annotations

import contextlib

import torch

from maxact.errors import InputError
from maxact.measurement.batching import PackedBatch, to_device
from maxact.models import packed_attention, packed_recurrent
from maxact.models.kernels_used import optional_kernels
from maxact.models.registry import Family

MODES = ("auto", "on", "off")
METHODS = ("padded", "varlen", "block_mask")


class PackingError(InputError):
    pass


def recurrent_kernels_pack(model: torch.nn.Module | None) -> bool:
    """Gated DeltaNet layers keep packed samples apart only with fla's chunked rule (it takes cu_seqlens; the
    torch reference transformers falls back to does not)."""
    if model is None:
        return False
    return optional_kernels(model).get("chunk_gated_delta_rule", "").startswith("fla.")


def resolve_packing(family: Family, mode: str, device_type: str, dtype: torch.dtype,
                    model: torch.nn.Module | None = None, attn_implementation: str | None = "auto") -> tuple[str, str]:
    """(method, why): the forward this family runs under ``mode`` on this device and dtype, and why it is
    not packed where it is not. ``model``: the loaded model, whose bound kernels decide for Gated DeltaNet;
    ``attn_implementation``: the one asked for (packing on CUDA replaces it with varlen_attn, so a named one
    keeps ``auto`` padded and stops ``on``)."""
    if mode not in MODES:
        raise PackingError(f"measure.packing must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return "padded", "packing: off"
    spec = family.packing
    half = dtype in (torch.bfloat16, torch.float16)
    named = attn_implementation not in (None, "", "auto")
    dt = str(dtype).replace("torch.", "")
    flex = spec.kernel == "flex_attention"
    head_dim = _head_dim(model) if flex and model is not None else None
    if device_type == "cuda" and half:
        if not spec.varlen:
            why = f"family {family.name!r} cannot run packed on CUDA: {spec.why_not}"
        elif spec.recurrent and not recurrent_kernels_pack(model):
            why = f"family {family.name!r} cannot run packed here: {spec.why_not}"
        elif flex and not packed_attention.flex_available(device_type):
            why = f"family {family.name!r} packs through FlexAttention, which this torch ({torch.__version__}) cannot compile here"
        elif flex and head_dim is not None and head_dim < packed_attention.FLEX_MIN_HEAD_DIM:
            why = (f"family {family.name!r} packs through FlexAttention, whose compiled kernel needs attention heads of at "
                   f"least {packed_attention.FLEX_MIN_HEAD_DIM} dimensions; this model's have {head_dim}")
        elif not flex and not packed_attention.available():
            why = f"this torch ({torch.__version__}) has no torch.nn.attention.varlen.varlen_attn"
        elif named:
            why = (f"runtime.attn_implementation is {attn_implementation!r}, and a packed row on CUDA runs "
                   f"{spec.kernel} instead; set attn_implementation: auto to pack")
        else:
            return "varlen", ""
        block_ok = False  # the block-diagonal mask is quadratic in the row: never on CUDA in 16-bit
    else:
        block_ok = spec.block_mask
        if not spec.block_mask:
            why = f"family {family.name!r} has no packed path on {device_type} in {dt}: {spec.why_not}"
        elif device_type == "cuda":
            why = f"the packed CUDA path ({spec.kernel}) runs in bfloat16/float16 only, not {dt}"
        else:
            why = f"on {device_type} the block-diagonal mask makes attention quadratic in the packed row"
    if mode == "on":
        if block_ok:
            return "block_mask", ""
        raise PackingError(
            f"measure.packing: on, but {why}. Use packing: auto (it packs where that is exact and runs this one "
            f"padded) or packing: off."
        )
    return "padded", why


def _head_dim(model: torch.nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


@contextlib.contextmanager
def packed_forward(backbone: torch.nn.Module, family: Family, method: str):
    """For the ``varlen`` method: the backbone's attention switched to torch's varlen_attn (FlexAttention where the
    family's ``Packing.kernel`` says so) and, for Gated
    DeltaNet families, their causal conv to the one that keeps samples apart; restored when the last open
    context on this backbone closes (two measurements of one model may overlap)."""
    if method != "varlen":
        yield
        return
    packed_attention.register()
    cfg = backbone.config
    depth = getattr(backbone, "_maxact_packed_depth", 0)
    if depth == 0:
        backbone._maxact_attn_before = cfg._attn_implementation
        cfg._attn_implementation = packed_attention.function_name(family.packing.kernel)
    backbone._maxact_packed_depth = depth + 1
    try:
        with packed_recurrent.boundary_conv(backbone) if family.packing.recurrent else contextlib.nullcontext():
            yield
    finally:
        backbone._maxact_packed_depth -= 1
        if backbone._maxact_packed_depth == 0:
            cfg._attn_implementation = backbone._maxact_attn_before


def forward_kwargs(backbone: torch.nn.Module, family: Family, method: str, batch: PackedBatch, device) -> dict:
    """The backbone's keyword arguments for one packed row: ids, restarting position ids, and what keeps the
    samples apart (``varlen``: cumulative sequence lengths; ``block_mask``: transformers' packed masks, which the
    backbone builds from the position ids or, where it cannot, maxact builds for it)."""
    pos = to_device(batch.position_ids, device)
    if family.packing.positions == "mrope_text":  # text positions, then the three M-RoPE rows
        pos = pos[None].expand(4, 1, -1)
    kw = dict(input_ids=to_device(batch.input_ids, device), position_ids=pos, use_cache=False)
    if method == "varlen":
        cu = to_device(batch.cu_seqlens, device)
        kw.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=batch.max_length, max_length_k=batch.max_length)
        if family.packing.recurrent:
            rows, starts = packed_recurrent.boundary_rows(batch.lengths, packed_recurrent.kernel_size(backbone))
            # fla builds its chunk index from the host copy (no device sync); the conv fix-up rows (see packed_recurrent).
            kw.update(cu_seqlens_cpu=batch.cu_seqlens.long(), maxact_conv_rows=to_device(rows, device),
                      maxact_conv_starts=to_device(starts, device))
    elif method == "block_mask" and family.packing.block_mask_from == "mapping":
        kw["attention_mask"] = _mask_mapping(backbone, pos, batch.input_ids.shape[1], device)
    elif method != "block_mask":
        raise ValueError(f"no packed forward for method {method!r}")
    return kw


def _mask_mapping(backbone, pos: torch.Tensor, n: int, device) -> dict:
    """transformers' own full and sliding-window masks of one packed row (from its restarting position ids),
    for a backbone whose forward builds its masks without them."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    like = torch.empty((1, n, 1), dtype=backbone.get_input_embeddings().weight.dtype, device=device)
    args = dict(config=backbone.config, inputs_embeds=like, attention_mask=None, cache=None, position_ids=pos)
    return {"full_attention": create_causal_mask(**args), "sliding_attention": create_sliding_window_causal_mask(**args)}

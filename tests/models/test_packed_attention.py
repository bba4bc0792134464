"""The packed attention function's own logic on the CPU (layouts, grouped heads, windows, sinks), with the flash
kernel replaced by a float64 reference of what flash computes (per-sample causal softmax, optionally windowed,
and its log-sum-exp). Compared with transformers' own gpt-oss eager attention (sinks and windows) run on each
sample alone. The kernel itself is checked on the GPU (tests/measurement/test_cuda_packing.py)."""

import math

import pytest
import torch

from maxact.models import packed_attention as PA


def flash_reference(q, k, v, cu, max_len, scale, window, want_lse, gqa=False):
    """What flash varlen computes, in float64: [N, H, D] in, (out, lse) with the LSE laid out as the kernel
    lays it out, [H, N] (read back by the wrapper's _lse_rows)."""
    h = q.shape[1]
    if k.shape[1] != h:
        k = k.repeat_interleave(h // k.shape[1], 1)
        v = v.repeat_interleave(h // v.shape[1], 1)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.zeros(q.shape[:2], dtype=torch.float64)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        s = torch.einsum("ihd,jhd->hij", q[a:b].double(), k[a:b].double()) * scale
        i = torch.arange(b - a)
        keep = i[None, :] <= i[:, None]
        if window[0] >= 0:
            keep &= i[:, None] - i[None, :] <= window[0]
        s = s.masked_fill(~keep, -math.inf)
        lse[a:b] = torch.logsumexp(s, -1).transpose(0, 1)
        out[a:b] = torch.einsum("hij,jhd->ihd", torch.softmax(s, -1), v[a:b].double())
    return out, (PA._lse_rows(lse.transpose(0, 1).contiguous(), q) if want_lse else None)


def sample_mask(length: int, window: int | None) -> torch.Tensor:
    """One sample's additive float64 mask [1, 1, L, L] from transformers' own mask functions (a window of W: the
    query and the W - 1 keys before it)."""
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    idx = torch.arange(length)
    keep = torch.stack([torch.stack([torch.as_tensor(fn(0, 0, i, j)) for j in idx]) for i in idx])
    return torch.zeros(1, 1, length, length, dtype=torch.float64).masked_fill(~keep, -math.inf)


class _Module(torch.nn.Module):  # what gpt-oss's eager attention reads off its module
    def __init__(self, sinks, groups):
        super().__init__()
        self.sinks, self.num_key_value_groups, self.training = sinks, groups, False


@pytest.mark.parametrize("lengths", [[5, 1, 7], [3, 1]], ids=["13-tokens", "as-many-tokens-as-heads"])
@pytest.mark.parametrize("gqa", [False, True], ids=["kv-repeated", "native-gqa"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("sinks", [False, True])
def test_packed_row_equals_each_sample_alone(monkeypatch, window, sinks, gqa, lengths):
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    monkeypatch.setattr(PA, "_flash", flash_reference)
    monkeypatch.setattr(PA, "capabilities", lambda: {"window_size": True, "enable_gqa": gqa, "return_aux": True, "is_causal": False})
    g = torch.Generator().manual_seed(0)
    h, h_kv, d = 4, 2, 8
    n = sum(lengths)
    q = torch.randn(1, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64)
    s_aux = torch.randn(h, generator=g, dtype=torch.float64) if sinks else None
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    out, _ = PA.varlen_attention_forward(None, q, k, v, None, scaling=d ** -0.5, sliding_window=window, s_aux=s_aux,
                                         cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths),
                                         max_length_k=max(lengths))
    assert out.shape == (1, n, h, d)
    module = _Module(s_aux if sinks else torch.full((h,), -1e30, dtype=torch.float64), h // h_kv)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref, _ = eager_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], sample_mask(b - a, window),
                                         scaling=d ** -0.5)
        assert torch.allclose(out[0, a:b].double(), ref[0], rtol=1e-5, atol=1e-6), (a, b)


def test_refuses_softcap_masks_and_unpacked_calls():
    q = torch.zeros(1, 2, 3, 4)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(PA.PackedAttentionError, match="soft-capping"):
        PA.varlen_attention_forward(None, q, q, q, None, softcap=50.0, cu_seq_lens_q=cu, max_length_q=3)
    with pytest.raises(PA.PackedAttentionError, match="cu_seq_lens_q"):
        PA.varlen_attention_forward(None, q, q, q, None)
    with pytest.raises(PA.PackedAttentionError, match="without a mask"):
        PA.varlen_attention_forward(None, q, q, q, torch.ones(1, 1, 3, 3), cu_seq_lens_q=cu, max_length_q=3)


def test_lse_rows_reads_the_kernels_head_major_layout():
    q = torch.zeros(5, 3, 4)  # 5 tokens, 3 heads
    lse = torch.arange(15.0).reshape(3, 5)  # [H, N]: lse[h, t] = 5 h + t
    rows = PA._lse_rows(lse, q)
    assert rows[4, 2] == 14.0 and rows[1, 0] == 1.0 and rows[0, 1] == 5.0  # [t, h]
    assert torch.equal(PA._lse_rows(rows.clone(), q), rows)  # already [N, H] (N != H): kept
    square = torch.arange(9.0).reshape(3, 3)  # as many tokens as heads: the kernel's [H, N]
    assert PA._lse_rows(square, torch.zeros(3, 3, 4))[0, 1] == 3.0
    with pytest.raises(PA.PackedAttentionError, match="shape"):
        PA._lse_rows(torch.zeros(2, 2), q)


def test_window_kept_on_the_module_is_used(monkeypatch):
    seen = {}

    def fake(q, k, v, cu, max_len, scale, window, want_lse, gqa=False):
        seen["window"] = window
        return flash_reference(q, k, v, cu, max_len, scale, window, want_lse, gqa)

    monkeypatch.setattr(PA, "_flash", fake)
    q = torch.randn(1, 2, 6, 4)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    module = torch.nn.Module()
    module.sliding_window = 4  # as Qwen2-MoE's sliding layers keep it, without passing it on
    PA.varlen_attention_forward(module, q, q, q, None, scaling=0.5, cu_seq_lens_q=cu, max_length_q=6)
    assert seen["window"] == (3, 0)


# FlexAttention for soft-capped logits (Gemma 2): the block mask and the attention function, uncompiled on the CPU.

def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def _kv_blocks(num, idx):
    """Per q block, the set of kv blocks a block mask lists (its first ``num`` indices)."""
    return [set(idx[0, 0, i, : int(num[0, 0, i])].tolist()) for i in range(num.shape[-1])]


MASK_CASES = [([5, 300, 17, 700], None), ([5, 300, 17, 700], 128), ([128, 128, 256], 100), ([1000], 130),
              ([1, 1, 1], None), ([129, 255, 3, 400, 77], 256), ([1024], None), ([640, 384], 129),
              ([900, 1, 700], 1), ([2000], 255), ([1500, 500], 383), ([257, 1, 1, 1200], 127), ([3000], 5000)]


@pytest.mark.parametrize("lengths, window", MASK_CASES)
def test_document_block_mask_is_exact(lengths, window):
    """The block mask built by tensor ops lists the same partial and the same fully visible kv blocks per q block
    as FlexAttention's own (every element of mask_mod evaluated), and mask_mod is, on the whole grid, what the
    definition says: same sample, causal, the query and the W - 1 keys before it; padding sees nothing."""
    from torch.nn.attention.flex_attention import create_block_mask

    cu = _cu(lengths)
    n = int(cu[-1])
    n_pad = PA.flex_length(n)
    assert n_pad >= n and n_pad & (n_pad - 1) == 0 and n_pad % PA.FLEX_BLOCK == 0
    ours = PA.document_block_mask(cu, n, n_pad, window)
    ref = create_block_mask(ours.mask_mod, None, None, n_pad, n_pad, device="cpu", BLOCK_SIZE=PA.FLEX_BLOCK, _compile=False)
    assert _kv_blocks(ours.kv_num_blocks, ours.kv_indices) == _kv_blocks(ref.kv_num_blocks, ref.kv_indices)
    assert _kv_blocks(ours.full_kv_num_blocks, ours.full_kv_indices) == _kv_blocks(ref.full_kv_num_blocks, ref.full_kv_indices)
    sample = torch.full((n_pad,), -1)
    sample[:n] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    qi = torch.arange(n_pad)[:, None]
    ki = torch.arange(n_pad)[None, :]
    want = (sample[qi] == sample[ki]) & (sample[qi] >= 0) & (ki <= qi) & ((qi - ki) < (window or n_pad + 1))
    assert torch.equal(ours.mask_mod(0, 0, qi, ki), want)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_flex_packed_row_equals_gemma2_eager_per_sample(window, softcap):
    """maxact's FlexAttention function over one packed row (grouped K/V heads) against transformers' own Gemma 2
    eager attention (soft-cap, window) run on each sample alone, in float64."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    g = torch.Generator().manual_seed(1)
    lengths = [5, 1, 9, 4]
    h, h_kv, d = 4, 2, 8
    n = sum(lengths)
    q = torch.randn(1, h, n, d, generator=g, dtype=torch.float64) * 2
    k = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64) * 2
    v = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64)
    cu = _cu(lengths)
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = h // h_kv, False
    out, _ = PA.flex_attention_forward(module, q, k, v, None, scaling=0.3, sliding_window=window, softcap=softcap,
                                       cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    assert out.shape == (1, n, h, d)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref, _ = eager_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], sample_mask(b - a, window),
                                         scaling=0.3, softcap=softcap)
        # flex's reference path takes the softmax in float32 whatever the input (observed 2e-7 here)
        assert torch.allclose(out[0, a:b], ref[0], rtol=1e-5, atol=1e-6), (a, b, float((out[0, a:b] - ref[0]).abs().max()))


def test_flex_refuses_masks_sinks_and_unpacked_calls():
    q = torch.zeros(1, 2, 3, 4)
    cu = _cu([3])
    with pytest.raises(PA.PackedAttentionError, match="cu_seq_lens_q"):
        PA.flex_attention_forward(None, q, q, q, None)
    with pytest.raises(PA.PackedAttentionError, match="without a mask"):
        PA.flex_attention_forward(None, q, q, q, torch.ones(1, 1, 3, 3), cu_seq_lens_q=cu, max_length_q=3)
    with pytest.raises(PA.PackedAttentionError, match="sinks"):
        PA.flex_attention_forward(None, q, q, q, None, cu_seq_lens_q=cu, max_length_q=3, s_aux=torch.zeros(2))


def test_flex_compiles_once_per_padded_length(monkeypatch):
    """Rows of other lengths, samples and windows reuse the compiled kernel of their padded length: one graph per
    power of two, not one per packed row (transformers' own flex path exhausts torch.compile's recompile limit)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(flex_attention, backend="eager", dynamic=False)  # dynamo's guards, without codegen
    monkeypatch.setattr(PA, "_flex_kernel", lambda device_type: compiled)
    g = torch.Generator().manual_seed(0)
    rows = [[5, 300, 17], [50, 250], [700, 600], [3, 1], [1000, 900], [60, 61, 62]]
    for lengths in rows:
        for window in (None, 5):
            n = sum(lengths)
            q = torch.randn(1, 4, n, 16, generator=g)
            k = torch.randn(1, 2, n, 16, generator=g)
            cu = _cu(lengths)
            PA.flex_attention_forward(None, q, k, k, None, scaling=0.25, sliding_window=window, softcap=30.0,
                                      cu_seq_lens_q=cu, max_length_q=max(lengths))
    assert {PA.flex_length(sum(r)) for r in rows} == {1024, 2048}
    assert counters["stats"]["unique_graphs"] == 2
    # Past the limit the call fails instead of running flex uncompiled (N x N scores): a third length, limit 2
    monkeypatch.setattr(PA, "FLEX_RECOMPILE_LIMIT", 2)
    q = torch.randn(1, 4, 3000, 16, generator=g)
    with pytest.raises(Exception, match="(?i)limit"):
        PA.flex_attention_forward(None, q, q[:, :2], q[:, :2], None, scaling=0.25, softcap=30.0,
                                  cu_seq_lens_q=_cu([3000]), max_length_q=3000)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_flex_over_multi_block_rows_equals_gemma2_eager_per_sample(monkeypatch):
    """The compiled kernel (inductor on the CPU; Triton on CUDA) is the one that reads the block tables: rows of
    several 128-token blocks, windows at and around block edges, against Gemma 2's eager attention per sample."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    torch._dynamo.reset()
    monkeypatch.setattr(PA, "_flex_kernel", lambda device_type: torch.compile(flex_attention, dynamic=False))
    g = torch.Generator().manual_seed(3)
    h, h_kv, d = 4, 2, 16
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = h // h_kv, False
    for lengths, window in (([300, 1, 450, 200], 129), ([700, 250], 255), ([129, 128, 600], None), ([950], 383)):
        n = sum(lengths)
        q = torch.randn(1, h, n, d, generator=g) * 2
        k = torch.randn(1, h_kv, n, d, generator=g) * 2
        v = torch.randn(1, h_kv, n, d, generator=g)
        cu = _cu(lengths)
        out, _ = PA.flex_attention_forward(module, q, k, v, None, scaling=0.25, sliding_window=window, softcap=20.0,
                                           cu_seq_lens_q=cu, max_length_q=max(lengths))
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            ref, _ = eager_attention_forward(module, q[:, :, a:b].double(), k[:, :, a:b].double(), v[:, :, a:b].double(),
                                             sample_mask(b - a, window), scaling=0.25, softcap=20.0)
            assert torch.allclose(out[0, a:b].double(), ref[0], rtol=1e-4, atol=1e-5), (lengths, window, a, b)
    torch._dynamo.reset()

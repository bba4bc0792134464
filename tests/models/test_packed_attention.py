"""The packed attention function's own logic on the CPU (layouts, grouped heads, windows, sinks), with the flash
kernel replaced by a float64 reference of what flash computes (per-sample causal softmax, optionally windowed,
and its log-sum-exp). Compared with transformers' own gpt-oss eager attention (sinks and windows) run on each
sample alone. The kernel itself is checked on the GPU (tests/measurement/test_cuda_packing.py)."""

import math

import pytest
import torch

from maxact.models import packed_attention as PA


def flash_reference(q, k, v, cu, max_len, scale, window, want_lse, gqa=False):
    """What flash varlen computes, in float64: [N, H, D] in, (out, lse [N, H])."""
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
    return out, (lse.float() if want_lse else None)


class _Module(torch.nn.Module):  # what gpt-oss's eager attention reads off its module
    def __init__(self, sinks, groups):
        super().__init__()
        self.sinks, self.num_key_value_groups, self.training = sinks, groups, False


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("sinks", [False, True])
def test_packed_row_equals_each_sample_alone(monkeypatch, window, sinks):
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    monkeypatch.setattr(PA, "_flash", flash_reference)
    monkeypatch.setattr(PA, "capabilities", lambda: {"window_size": True, "enable_gqa": False, "return_aux": True, "is_causal": False})
    g = torch.Generator().manual_seed(0)
    h, h_kv, d, lengths = 4, 2, 8, [5, 1, 7]
    n = sum(lengths)
    q = torch.randn(1, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, h_kv, n, d, generator=g, dtype=torch.float64)
    s_aux = torch.randn(h, generator=g, dtype=torch.float64) if sinks else None
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    out, _ = PA.varlen_attention_forward(None, q, k, v, None, scaling=d ** -0.5, sliding_window=window, s_aux=s_aux,
                                         cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=7, max_length_k=7)
    assert out.shape == (1, n, h, d)
    module = _Module(s_aux if sinks else torch.full((h,), -1e30, dtype=torch.float64), h // h_kv)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        L = b - a
        # transformers' own mask functions (a window of W: the query and the W - 1 keys before it).
        fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
        idx = torch.arange(L)
        keep = torch.stack([torch.stack([torch.as_tensor(fn(0, 0, i, j)) for j in idx]) for i in idx])
        mask = torch.zeros(1, 1, L, L, dtype=torch.float64).masked_fill(~keep, -math.inf)
        ref, _ = eager_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], mask, scaling=d ** -0.5)
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


def test_lse_rows_takes_either_layout():
    q = torch.zeros(5, 3, 4)
    lse = torch.arange(15.0).reshape(3, 5)
    assert PA._lse_rows(lse, q).shape == (5, 3) and PA._lse_rows(lse.t(), q).shape == (5, 3)

"""The Gated DeltaNet causal conv over a packed row: every sample's outputs equal a float64 conv of that sample
alone (transformers' own torch conv, zero history), whatever samples precede it in the row."""

import torch

from maxact.models.packed_recurrent import boundary_causal_conv1d, boundary_rows


def _alone(x, w, b):
    """Depthwise causal conv of one sample [C, L] in float64, zeros before its start, then SiLU."""
    k = w.shape[-1]
    xp = torch.nn.functional.pad(x, (k - 1, 0))
    out = torch.stack([(xp[:, t : t + k] * w).sum(-1) for t in range(x.shape[1])], 1) + b[:, None]
    return torch.nn.functional.silu(out)


def test_boundary_rows_are_each_samples_first_k_minus_1():
    rows, starts = boundary_rows([5, 2, 4], kernel_size=4)
    assert rows.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
    assert starts.tolist() == [0, 0, 0, 5, 5, 7, 7, 7]


def test_packed_conv_equals_each_sample_alone():
    g = torch.Generator().manual_seed(0)
    c, k, lengths = 6, 4, [7, 1, 3, 9]
    w = torch.randn(c, k, generator=g)
    b = torch.randn(c, generator=g)
    xs = [torch.randn(c, n, generator=g) for n in lengths]
    row = torch.cat(xs, 1)[None]  # [1, C, N]
    rows, starts = boundary_rows(lengths, k)
    out = boundary_causal_conv1d(row, w, b, "silu", rows, starts)[0]
    at = 0
    for x, n in zip(xs, lengths):
        ref = _alone(x.double(), w.double(), b.double())
        assert torch.allclose(out[:, at : at + n].double(), ref, rtol=1e-5, atol=1e-6)
        at += n
    # Without the fix-up the conv would read across samples: the first rows of sample 2 differ.
    leaky = torch.nn.functional.silu(torch.nn.functional.conv1d(row, w[:, None], b, padding=k - 1, groups=c)[..., : sum(lengths)])[0]
    assert not torch.allclose(leaky[:, 7:11], out[:, 7:11])

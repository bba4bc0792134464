"""Samples to batches: length-sorted padded batches under a token cap, packed batches (the samples of a batch
end to end in one row, position ids restarting per sample, no padding), and the run loop that halves a
batch on out-of-memory and retries it (a failed batch committed nothing)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 = real token
    sample_index: torch.Tensor  # [B] row in the corpus
    lengths: list[int]


def make_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None,
                 packed: bool = False) -> list[list[int]]:
    """Group sample indices into batches sorted by length (longest first): at most ``batch_size`` samples and
    ``max_batch_tokens`` tokens each, counted as B x T_max for padded batches and as real tokens for packed ones."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur, cur_tokens = [], [], 0
    for i in order:
        if packed:
            tokens = cur_tokens + lengths[i]
        else:
            tokens = (len(cur) + 1) * (lengths[cur[0]] if cur else lengths[i])
        if cur and (len(cur) >= batch_size or (max_batch_tokens and tokens > max_batch_tokens)):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def collate(samples: Sequence[Sequence[int]], indices: Sequence[int], pad_id: int) -> Batch:
    lengths = [len(samples[i]) for i in indices]
    t = max(lengths)
    ids = torch.full((len(indices), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), t), dtype=torch.long)
    for r, i in enumerate(indices):
        ids[r, : lengths[r]] = torch.as_tensor(samples[i], dtype=torch.long)
        mask[r, : lengths[r]] = 1
    return Batch(ids, mask, torch.as_tensor(list(indices), dtype=torch.long), lengths)


@dataclass
class PackedBatch:
    """The samples of one batch end to end in a single row: only real tokens, no padding."""

    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]: 0..L-1 within each sample
    sample_index: torch.Tensor  # [B] row in the corpus
    lengths: list[int]
    cu_seqlens: torch.Tensor  # int32 [B + 1]: where each sample starts in the row, then N

    @property
    def max_length(self) -> int:
        return max(self.lengths)


def collate_packed(samples: Sequence[Sequence[int]], indices: Sequence[int]) -> PackedBatch:
    lengths = [len(samples[i]) for i in indices]
    ids = torch.cat([torch.as_tensor(samples[i], dtype=torch.long) for i in indices])[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.as_tensor(lengths, dtype=torch.int32).cumsum(0)
    return PackedBatch(ids, pos, torch.as_tensor(list(indices), dtype=torch.long), lengths, cu)



def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host tensor to the device without a stream sync (a pageable copy waits for the GPU queue)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def run_batches(
    meas,  # a maxact.measurement.hooks.Measurement (not imported: hooks imports this module)
    samples: Sequence[Sequence[int]],
    batches: list[list[int]],
    pad_id: int,
    progress: Callable[[int], None] | None = None,
    start_batch: int = 0,
    on_batch_done: Callable[[int], None] | None = None,
) -> dict:
    """Run all batches; on CUDA out-of-memory halve the batch and retry it (a failed batch committed
    nothing: statistics change only when a batch's forward completes, see stats.Deferred).

    Returns run facts (batches run, OOM splits).
    """
    splits = []
    t0 = time.perf_counter()
    cap = None  # once a batch had to be halved, later batches start at the size that fitted
    for bi in range(start_batch, len(batches)):
        queue = [batches[bi]]
        while queue:
            idx = queue.pop(0)
            if cap is not None and len(idx) > cap:
                queue[:0] = [idx[i : i + cap] for i in range(cap, len(idx), cap)]
                idx = idx[:cap]
            try:
                meas.forward(collate_packed(samples, idx) if meas.packing != "padded" else collate(samples, idx, pad_id))
            except torch.OutOfMemoryError as e:
                if len(idx) == 1:
                    need = re.search(r"Tried to allocate ([0-9.]+ ?[KMGT]?i?B|[0-9]+ tokens)", str(e))
                    raise RuntimeError(
                        f"out of memory on a single sample of {len(samples[idx[0]])} tokens even at batch size 1"
                        f"{' (it tried to allocate ' + need.group(1) + ')' if need else ''}: {str(e).splitlines()[0]}. "
                        "Lower tokenization.max_seq_len, use bfloat16, or give the checkpoint more GPUs (gpus: N)."
                    ) from e
                meas.discard_batch()  # statistics change only when a batch completes: nothing to undo
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                half = len(idx) // 2
                cap = half
                log.warning("out of memory on a batch of %d samples: halving the batch to %d and continuing from it", len(idx), half)
                splits.append({"batch": bi, "size": len(idx), "new_size": half})
                queue[:0] = [idx[:half], idx[half:]]
                continue
            if progress:
                progress(sum(len(samples[i]) for i in idx))
        if on_batch_done:
            on_batch_done(bi)
    return {"oom_splits": splits, "seconds": time.perf_counter() - t0}

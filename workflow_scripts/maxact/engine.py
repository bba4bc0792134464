"""The measurement engine: forward hooks on the text backbone feeding on-device statistics.

One identical set of hook points for every family (see :mod:`maxact.architectures`):
``embedding_output`` (the residual stream entering layer 0, i.e. after any embedding scaling),
``layer_{i}_hidden``, ``layer_{i}_attn_output``, ``layer_{i}_mlp_output``, ``layer_{i}_mlp_gate``,
``layer_{i}_moe_gate``, ``layer_{i}_router_logits``, ``layer_{i}_{attn,mlp}_residual_in`` and
``final_layernorm``.  Padding never counts: dense points carry the batch mask; MoE blocks are fed
the real tokens only (packed), so router and expert-internal rows are real tokens by construction.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .architectures import Family, LayerPoints, family_for, layer_points, resolve_backbone
from .resultset import GLOBAL_KINDS, forward_order_key, parse_component
from .stats import Deferred, PointStats, TokenInfo

log = logging.getLogger(__name__)



def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 = real token
    sample_index: torch.Tensor  # [B] row in the corpus
    lengths: list[int]


def make_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Group sample indices into batches sorted by length (longest first), capping B*T_max."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur = [], []
    for i in order:
        t_max = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_batch_tokens and (len(cur) + 1) * t_max > max_batch_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
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


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host tensor to the device without a stream sync (a pageable copy waits for the GPU queue)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def kind_of(point: str) -> str:
    return parse_component(point)[0]


class Measurement:
    """Owns the hooks and the statistics of one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        n_samples: int,
        device: torch.device | str,
        full_kinds: Iterable[str] | None = None,
        topk: int = 100,
    ):
        self.model = model
        self.family: Family = family_for(model.config)
        self.backbone = resolve_backbone(model, self.family)
        self.layers: list[LayerPoints] = layer_points(self.backbone, self.family)
        self.device = torch.device(device)
        self.n_samples = n_samples
        self.topk = topk
        # Histogram quantiles and the Sun criterion on every point unless restricted.
        self.full_kinds = set(full_kinds) if full_kinds is not None else None
        self.points: dict[str, PointStats] = {}
        self.expert_counts: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._info: TokenInfo | None = None
        self._packed_info: TokenInfo | None = None
        self._packed_rows: torch.Tensor | None = None
        self._batch_shape: tuple[int, int] | None = None
        self._moved: dict = {}
        # Row updates of the running batch, folded together when its forward ends (stats.fold).
        self._deferred = Deferred()
        self._unknown: dict = {}
        self._register()

    # ----------------------------------------------------------- registration
    def _stats(self, name: str, device=None) -> PointStats:
        ps = self.points.get(name)
        if ps is None:
            full = self.full_kinds is None or kind_of(name) in self.full_kinds
            ps = self.points[name] = PointStats(name, self.n_samples, device or self.device, full=full, topk=self.topk)
        return ps

    def _record(self, name: str, x: torch.Tensor, info: TokenInfo | None = None) -> None:
        if name == self.simulate_oom_in_hook and self._batch_shape[0] * self._batch_shape[1] > self.simulate_oom_tokens:
            raise torch.OutOfMemoryError(f"simulated out of memory in the hook of {name} (Tried to allocate 1 tokens)")
        if info is None:
            info = self._info_for(x)
        # A model split over GPUs (device_map) keeps each point's statistics on its layer's GPU.
        self._stats(name, x.device).update(x, self._on(info, x.device), defer=self._deferred)

    def _on(self, info: TokenInfo, device: torch.device) -> TokenInfo:
        if info.valid.device == device:
            return info
        key = (id(info), device)
        cached = self._moved.get(key)
        if cached is None:
            cached = self._moved[key] = info.to(device)
        return cached

    def _info_for(self, x: torch.Tensor) -> TokenInfo:
        """Token facts for an activation by its row count: full batch, packed real tokens, or unknown rows."""
        n = x.numel() // x.shape[-1]
        b, t = self._batch_shape
        if n == b * t:
            return self._info
        if self._packed_info is not None and n == self._packed_info.valid.numel():
            return self._packed_info
        return self._unknown_info(n, x.device)

    def _unknown_info(self, n: int, dev) -> TokenInfo:
        # Routed copies of real tokens (expert-internal rows): real by construction, origin unknown.
        # One object per row count and device within a batch, so that points with as many rows fold together.
        key = (n, str(dev))
        if key not in self._unknown:
            self._unknown[key] = self._new_unknown_info(n, dev)
        return self._unknown[key]

    def _new_unknown_info(self, n: int, dev) -> TokenInfo:
        return TokenInfo(
            valid=torch.ones(n, dtype=torch.bool, device=dev),
            sample=torch.full((n,), self.n_samples, dtype=torch.long, device=dev),
            position=torch.arange(n, device=dev),
            token_id=torch.full((n,), -1, dtype=torch.long, device=dev),
            unknown_origin=True,
        )

    def _hook(self, module, fn: Callable, pre: bool = False):
        if pre:
            h = module.register_forward_pre_hook(fn, with_kwargs=True)
        else:
            h = module.register_forward_hook(fn)
        self._handles.append(h)

    def _register(self) -> None:
        rec = self._record

        def point(name):
            return lambda m, inp, out: rec(name, _first(out))

        first = self.layers[0].layer

        def emb_pre(m, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            rec("embedding_output", hs)

        self._hook(first, emb_pre, pre=True)
        for lp in self.layers:
            i = lp.index
            self._hook(lp.layer, point(f"layer_{i}_hidden"))
            if lp.attn is not None:
                self._hook(lp.attn, point(f"layer_{i}_attn_output"))
            if lp.moe_block is not None:
                self._register_moe(lp)
            elif lp.mlp is not None:
                self._hook(lp.mlp, point(f"layer_{i}_mlp_output"))
                if lp.gate_proj is not None:
                    self._hook(lp.gate_proj, point(f"layer_{i}_mlp_gate"))
            for suffix, mod in lp.residual_in.items():
                self._hook(mod, point(f"layer_{i}_{suffix}"))
        self._hook(getattr(self.backbone, self.family.final_norm), point("final_layernorm"))

    def _register_moe(self, lp: LayerPoints) -> None:
        spec = self.family.moe
        i = lp.index

        def pack(m, args, kwargs):
            # Feed the block only real tokens so that routers and experts never see padding.
            hs = args[0] if args else kwargs.pop("hidden_states")
            c = hs.shape[-1]
            packed = hs.reshape(-1, c).index_select(0, self._rows_on(hs.device)).unsqueeze(0)
            return (packed, *args[1:]), kwargs

        def unpack(m, inp, out):
            main = _first(out)
            self._record(f"layer_{i}_mlp_output", main, self._packed_info)
            if spec.router_logits_from_block is not None and isinstance(out, (tuple, list)):
                self._record(f"layer_{i}_router_logits", out[spec.router_logits_from_block], self._packed_info)
            b, t = self._batch_shape
            c = main.shape[-1]
            full = main.new_zeros((b * t, c)).index_copy_(0, self._rows_on(main.device), main.reshape(-1, c))
            full = full.reshape(b, t, c)
            if isinstance(out, tuple):
                return (full, *out[1:])
            return full

        def router_hook(m, inp, out):
            outs = out if isinstance(out, (tuple, list)) else (out,)
            g = outs[spec.moe_gate_index]
            if spec.moe_gate_transform == "softmax":
                g = torch.softmax(g.float(), dim=-1)
            self._record(f"layer_{i}_moe_gate", g, self._packed_info)
            if spec.router_logits_from_router is not None:
                self._record(f"layer_{i}_router_logits", outs[spec.router_logits_from_router], self._packed_info)
            if spec.indices_index is not None and lp.num_experts:
                idx = outs[spec.indices_index].reshape(-1).long()

                def count_routes(idx=idx):  # committed with the batch's statistics (stats.Deferred)
                    counts = self.expert_counts.get(i)
                    if counts is None:
                        counts = torch.zeros(lp.num_experts, dtype=torch.long, device=idx.device)
                    counts = self.expert_counts[i] = counts.to(idx.device)
                    counts.index_add_(0, idx, torch.ones_like(idx))

                self._deferred.after.append(count_routes)

        self._hook(lp.moe_block, pack, pre=True)
        self._hook(lp.moe_block, unpack)
        self._hook(lp.router, router_hook)
        if lp.expert_act is not None:
            def act_pre(m, args, kwargs):
                g = args[0] if args else next(iter(kwargs.values()))
                self._record(f"layer_{i}_mlp_gate", g, self._unknown_info(g.numel() // g.shape[-1], g.device))

            self._hook(lp.expert_act, act_pre, pre=True)

    def _rows_on(self, device) -> torch.Tensor:
        rows = self._packed_rows
        if rows.device == device:
            return rows
        key = ("rows", device)
        if key not in self._moved:
            self._moved[key] = rows.to(device)
        return self._moved[key]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ---------------------------------------------------------------- running
    def _set_batch(self, batch: Batch, device) -> None:
        b, t = batch.input_ids.shape
        self._batch_shape = (b, t)
        self.discard_batch()  # per-batch caches and pending updates start empty
        mask = _to_device(batch.attention_mask, device).bool()
        ids = _to_device(batch.input_ids, device)
        if len(set(batch.sample_index.tolist())) != b:  # host tensor: no device sync
            raise ValueError("a batch holds the same corpus sample twice; batches must hold distinct samples")
        batch_samples = _to_device(batch.sample_index, device)
        sample = batch_samples[:, None].expand(b, t).reshape(-1)
        pos = torch.arange(t, device=device).expand(b, t).reshape(-1)
        self._info = TokenInfo(valid=mask.reshape(-1), sample=sample, position=pos, token_id=ids.reshape(-1),
                               batch_shape=(b, t), batch_samples=batch_samples)
        # Row indices of real tokens, built from host-known lengths: no device sync.
        rows = _to_device(torch.cat([torch.arange(L) + r * t for r, L in enumerate(batch.lengths)]), device)
        self._packed_rows = rows
        self._packed_info = TokenInfo(
            valid=torch.ones(rows.numel(), dtype=torch.bool, device=device),
            sample=sample.index_select(0, rows),
            position=pos.index_select(0, rows),
            token_id=self._info.token_id.index_select(0, rows),
            batch_shape=(b, t), batch_samples=batch_samples, rows=rows,
        )

    # Test hooks: raise an out-of-memory error for batches above this many padded tokens (CPU path),
    # before the forward or, with simulate_oom_in_hook, from the hook of that point mid-forward.
    simulate_oom_tokens: int | None = None
    simulate_oom_in_hook: str | None = None

    @torch.no_grad()
    def forward(self, batch: Batch) -> None:
        if (self.simulate_oom_tokens is not None and self.simulate_oom_in_hook is None
                and batch.input_ids.numel() > self.simulate_oom_tokens):
            raise torch.OutOfMemoryError(
                f"simulated out of memory: batch of {tuple(batch.input_ids.shape)} = {batch.input_ids.numel()} tokens "
                f"exceeds the limit of {self.simulate_oom_tokens} (Tried to allocate {batch.input_ids.numel()} tokens)"
            )
        dev = self.input_device()
        self._set_batch(batch, self.device)
        self.backbone(
            input_ids=batch.input_ids.to(dev),
            attention_mask=batch.attention_mask.to(dev),
            use_cache=False,
        )
        self._deferred.flush()

    def input_device(self) -> torch.device:
        return self.backbone.get_input_embeddings().weight.device

    # ------------------------------------------------------- state (resume/OOM)
    def state(self) -> dict:
        return {
            "points": {k: v.state_dict() for k, v in self.points.items()},
            "expert_counts": dict(self.expert_counts),
        }

    def host_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every point's statistics on the host, in one device-to-host transfer per (device, dtype)
        instead of one per tensor (thousands of small synchronising copies)."""
        groups: dict = {}
        for name, ps in self.points.items():
            for key, t in ps.state_dict().items():
                groups.setdefault((t.device, t.dtype), []).append((name, key, t))
        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.points}
        for items in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for _, _, t in items]).cpu()
            for (name, key, t), part in zip(items, flat.split([t.numel() for _, _, t in items])):
                out[name][key] = part.view(t.shape)
        return out

    def discard_batch(self) -> None:
        """Drop the batch's pending updates and per-batch caches (after out of memory: the failed
        batch's statistics were never committed)."""
        self._deferred = Deferred()
        self._moved = {}
        self._unknown = {}

    def restore(self, state: dict) -> None:
        keep = set(state["points"])
        for k in list(self.points):
            if k not in keep:
                del self.points[k]
        for k, st in state["points"].items():
            dev = st["count"].device if "count" in st else self.device
            ps = self.points.get(k) or self._stats(k, dev)
            ps.load_state_dict(st)
        self.expert_counts = {int(k): v.to(self.device) for k, v in state["expert_counts"].items()}


def run_batches(
    meas: Measurement,
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
                meas.forward(collate(samples, idx, pad_id))
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


def assemble_result(meas: Measurement, sample_ids: Sequence[str], decode: Callable[[int], str] | None,
                    host: dict | None = None) -> dict:
    """Host-side summary: published-format ``per_layer_stats`` plus peaks, top-k and routing.

    ``host``: ``meas.host_state()`` when the caller already has it (one transfer to the host at the end).
    """
    per_layer, peaks, tops = {}, {}, {}
    order = _point_order(meas)
    host = host if host is not None else meas.host_state()
    for name in order:
        ps = meas.points[name]
        st = ps.finalize(host[name])
        top = st.pop("top_abs")
        per_layer[name] = st
        tops[name] = [_describe(t, sample_ids, decode) for t in top]
        if top:
            peaks[name] = tops[name][0]
    best = None
    for name in order:
        if kind_of(name) not in GLOBAL_KINDS or per_layer[name]["max"] is None:
            continue
        st = per_layer[name]
        for val, ext in ((st["max"], "max"), (st["min"], "min")):
            if best is None or abs(val) > abs(best[0]):
                best = (val, name, ext)
    routing = {}
    for i, counts in sorted(meas.expert_counts.items()):
        c = counts.cpu().tolist()
        routing[f"layer_{i}"] = {"tokens_per_expert": c, "unused_experts": [e for e, n in enumerate(c) if n == 0]}
    result = {
        "global_max_activation": best[0] if best else None,
        "global_max_location": f"{best[1]} ({best[2]})" if best else None,
        "per_layer_stats": per_layer,
    }
    if best:
        peak = dict(peaks[best[1]])
        peak.update(component=best[1], kind=kind_of(best[1]), layer=_layer_of(best[1]), extreme=best[2])
        result["peak"] = peak
    result["peaks"] = peaks
    result["top_activations"] = tops
    result["expert_routing"] = routing
    nonfinite = {k: {"nan": v["nan_count"], "inf": v["inf_count"]} for k, v in per_layer.items() if v["nan_count"] or v["inf_count"]}
    result["nonfinite"] = nonfinite
    return result


def per_sample_table(meas: Measurement, sample_ids: Sequence[str], host: dict | None = None):
    import pandas as pd

    cols = {"sample_id": list(sample_ids)}
    host = host if host is not None else meas.host_state()
    for name in _point_order(meas):
        mx, mn = meas.points[name].per_sample(host[name])
        cols[f"{name}:max"] = mx.numpy()
        cols[f"{name}:min"] = mn.numpy()
    return pd.DataFrame(cols)


def _layer_of(name: str) -> int | None:
    return int(name.split("_")[1]) if name.startswith("layer_") else None


def _point_order(meas: Measurement) -> list[str]:
    # Forward-pass order, so that exact ties resolve to the earliest point as in the published files.
    return sorted(meas.points, key=forward_order_key)


def _describe(t: dict, sample_ids, decode) -> dict:
    s = t["sample"]
    known = 0 <= s < len(sample_ids)
    d = {
        "value": t["value"],
        "sample_id": sample_ids[s] if known else None,
        "position": t["position"] if known else None,
        "row": None if known else t["position"],
        "token_id": t["token_id"] if t["token_id"] >= 0 else None,
        "channel": t["channel"],
    }
    d["token"] = decode(t["token_id"]) if (decode and t["token_id"] >= 0) else None
    return d


def check_dtype(family: Family, dtype: torch.dtype, force: bool = False) -> None:
    if dtype == torch.float16 and family.fp16_unsafe and not force:
        raise ValueError(
            f"float16 refused for family {family.name!r}: its published peaks (up to ~7e5 for Gemma 2/3) exceed "
            "float16's largest finite value 65,504, so activations would overflow to inf. Use bfloat16 or float32, "
            "or set force_dtype: true to measure anyway."
        )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None

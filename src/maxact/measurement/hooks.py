"""The measurement engine: forward hooks on the text backbone feeding on-device statistics.

One identical set of hook points for every family (see :mod:`maxact.models.registry`):
``embedding_output`` (the residual stream entering layer 0, i.e. after any embedding scaling),
``layer_{i}_hidden``, ``layer_{i}_attn_output``, ``layer_{i}_mlp_output``, ``layer_{i}_mlp_gate``,
``layer_{i}_moe_gate``, ``layer_{i}_router_logits``, ``layer_{i}_{attn,mlp}_residual_in`` and
``final_layernorm``.  Padding never counts: dense points carry the batch mask; MoE blocks are fed
the real tokens only (packed), so router and expert-internal rows are real tokens by construction.

With ``packing`` (see :mod:`maxact.measurement.packing`) a batch is one row of real tokens: every row maps
to its (sample, position) through the batch's token facts, and nothing needs masking or repacking.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

from maxact import points
from maxact.measurement import compiled as compiled_mod
from maxact.measurement import packing as packing_mod
from maxact.measurement.batching import Batch, PackedBatch, to_device
from maxact.measurement.statistics import Deferred, PointStats, TokenInfo
from maxact.models.registry import Family, LayerPoints, family_for, layer_points, resolve_backbone

log = logging.getLogger(__name__)


def _check_distinct(sample_index: torch.Tensor) -> None:
    if len(set(sample_index.tolist())) != sample_index.numel():  # host tensor: no device sync
        raise ValueError("a batch holds the same corpus sample twice; batches must hold distinct samples")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Measurement:
    """Owns the hooks and the statistics of one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        n_samples: int,
        device: torch.device | str,
        full_kinds: Iterable[str] | None = None,
        topk: int = 100,
        packing: str = "padded",
        linear_inputs: bool = False,
        compile: bool = False,
    ):
        if packing not in ("padded", "varlen", "block_mask"):
            raise ValueError(f"packing method must be padded, varlen or block_mask, not {packing!r}")
        self.model = model
        self.packing = packing
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
        # The attention (and Gated DeltaNet conv) of a varlen forward switched while the hooks are on (packing.packed_forward).
        self.linear_inputs = None
        # measure.compile: each decoder layer's forward compiled (maxact.measurement.compiled); hooks inside it hand
        # their tensors to self._captures, whose statistics run when the layer returns.
        self.compiled = bool(compile)
        self._regional = None
        self._captures = compiled_mod.Captures() if self.compiled else None
        self._inner = {id(m) for lp in self.layers for m in lp.layer.modules() if m is not lp.layer}
        self._packed_forward = packing_mod.packed_forward(self.backbone, self.family, packing)
        self._packed_forward.__enter__()
        try:
            self._register()
            if linear_inputs:
                self._register_linear_inputs()
            if self._captures is not None:
                self._captures.expect([lp.layer for lp in self.layers])
                for lp in self.layers:  # first among the layer's hooks: its modules' statistics, then the layer's
                    self._handles.append(lp.layer.register_forward_hook(self._captures.run, prepend=True))
            self._regional = compiled_mod.RegionalCompile([lp.layer for lp in self.layers], self.compiled).__enter__()
        except BaseException:
            self.remove()
            raise

    # ----------------------------------------------------------- registration
    def _stats(self, name: str, device=None) -> PointStats:
        ps = self.points.get(name)
        if ps is None:
            full = self.full_kinds is None or points.kind_of(name) in self.full_kinds
            ps = self.points[name] = PointStats(name, self.n_samples, device or self.device, full=full, topk=self.topk)
        return ps

    def _record(self, name: str, x: torch.Tensor, info: TokenInfo | None = None) -> None:
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

    def _hook(self, module, fn: Callable, pre: bool = False, deferrable: bool = True, whole_output: bool = False):
        """Register ``fn`` as a forward (``pre``: pre-, with kwargs) hook. Inside a compiled layer it is called
        with the captured tensors when the layer returns (``deferrable``): the module's first output only unless
        ``whole_output``; or, where it changes the module's inputs or output, behind a graph break."""
        if self.compiled and id(module) in self._inner:
            if deferrable:
                if pre:
                    self._handles += self._captures.attach(module, "in", lambda m, v, fn=fn: fn(m, (v,), {}))
                else:
                    kind = "out" if whole_output else "out0"
                    self._handles += self._captures.attach(module, kind, lambda m, v, fn=fn: fn(m, None, v))
                return
            fn = compiled_mod.hook(fn, True)
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
            rec(points.EMBEDDING, hs)

        self._hook(first, emb_pre, pre=True)
        for lp in self.layers:
            i = lp.index
            self._hook(lp.layer, point(points.layer_point(i, "hidden")))
            if lp.attn is not None:
                self._hook(lp.attn, point(points.layer_point(i, "attn_output")))
            if lp.moe_block is not None:
                self._register_moe(lp)
            elif lp.mlp is not None:
                self._hook(lp.mlp, point(points.layer_point(i, "mlp_output")))
                if lp.gate_proj is not None:
                    self._hook(lp.gate_proj, point(points.layer_point(i, "mlp_gate")))
            for suffix, mod in lp.residual_in.items():
                self._hook(mod, point(points.layer_point(i, suffix)))
        self._hook(getattr(self.backbone, self.family.final_norm), point(points.FINAL_NORM))

    def _register_moe(self, lp: LayerPoints) -> None:
        spec = self.family.moe
        i = lp.index
        # Names built once here, not in every hook call.
        mlp_output, router_logits = points.layer_point(i, "mlp_output"), points.layer_point(i, "router_logits")
        moe_gate, mlp_gate = points.layer_point(i, "moe_gate"), points.layer_point(i, "mlp_gate")

        packed_rows = self.packing != "padded"  # a packed batch has only real tokens: nothing to repack

        def pack(m, args, kwargs):
            # Feed the block only real tokens so that routers and experts never see padding.
            if packed_rows:
                return None
            hs = args[0] if args else kwargs.pop("hidden_states")
            c = hs.shape[-1]
            packed = hs.reshape(-1, c).index_select(0, self._rows_on(hs.device)).unsqueeze(0)
            return (packed, *args[1:]), kwargs

        def unpack(m, inp, out):
            main = _first(out)
            self._record(mlp_output, main, self._packed_info)
            if spec.router_logits_from_block is not None and isinstance(out, (tuple, list)):
                self._record(router_logits, out[spec.router_logits_from_block], self._packed_info)
            if packed_rows:
                return None
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
            self._record(moe_gate, g, self._packed_info)
            if spec.router_logits_from_router is not None:
                self._record(router_logits, outs[spec.router_logits_from_router], self._packed_info)
            if spec.indices_index is not None and lp.num_experts:
                idx = outs[spec.indices_index].reshape(-1).long()

                def count_routes(idx=idx):  # committed with the batch's statistics (stats.Deferred)
                    counts = self.expert_counts.get(i)
                    if counts is None:
                        counts = torch.zeros(lp.num_experts, dtype=torch.long, device=idx.device)
                    counts = self.expert_counts[i] = counts.to(idx.device)
                    counts.index_add_(0, idx, torch.ones_like(idx))

                self._deferred.after.append(count_routes)

        if not packed_rows:  # the padded forward repacks the block's input and output: not deferrable
            self._hook(lp.moe_block, pack, pre=True, deferrable=False)
        self._hook(lp.moe_block, unpack, deferrable=packed_rows, whole_output=True)
        self._hook(lp.router, router_hook, whole_output=True)
        if lp.expert_act is not None:
            def act_pre(m, args, kwargs):
                g = args[0] if args else next(iter(kwargs.values()))
                self._record(mlp_gate, g, self._unknown_info(g.numel() // g.shape[-1], g.device))

            self._hook(lp.expert_act, act_pre, pre=True)

    def _register_linear_inputs(self) -> None:
        """Per-input-channel statistics of every linear layer of the backbone (calibration files), named as in
        the loaded model's ``named_modules()``; fused 3-D experts per expert."""
        from maxact.measurement.linear_inputs import LinearInputs

        names = {m: n for n, m in self.model.named_modules()}
        experts = []
        for lp in self.layers:
            if lp.moe_block is not None:
                mod = getattr(lp.moe_block, self.family.moe.experts, None)
                if mod is not None and isinstance(getattr(mod, "gate_up_proj", None), torch.nn.Parameter):
                    experts.append((mod, lp.num_experts or int(mod.gate_up_proj.shape[0]),
                                    getattr(getattr(mod, "config", None), "_experts_implementation", None)))
        self.linear_inputs = LinearInputs(self.backbone, names, lambda x: self._info_for(x).valid.reshape(-1), experts,
                                          captures=self._captures, inner=self._inner)

    def _rows_on(self, device) -> torch.Tensor:
        rows = self._packed_rows
        if rows.device == device:
            return rows
        key = ("rows", device)
        if key not in self._moved:
            self._moved[key] = rows.to(device)
        return self._moved[key]

    def compile_report(self) -> dict:
        """What the regional compilation did so far (``{"compiled": False}`` when the layers run eager)."""
        return self._regional.report() if self._regional is not None else {"compiled": False}

    def remove(self) -> None:
        """Everything off the model (each step runs even if one before it failed)."""
        try:
            if self._regional is not None:
                regional, self._regional = self._regional, None
                regional.__exit__(None, None, None)  # the layers' eager forward back
        finally:
            try:
                for h in self._handles:
                    h.remove()
                self._handles.clear()
                if self._captures is not None:
                    self._captures.clear()
            finally:
                try:
                    if self._packed_forward is not None:
                        packed, self._packed_forward = self._packed_forward, None
                        packed.__exit__(None, None, None)
                finally:
                    if self.linear_inputs is not None:
                        self.linear_inputs.remove()

    # ---------------------------------------------------------------- running
    def _set_batch(self, batch: Batch, device) -> None:
        b, t = batch.input_ids.shape
        self._batch_shape = (b, t)
        self.discard_batch()  # per-batch caches and pending updates start empty
        mask = to_device(batch.attention_mask, device).bool()
        ids = to_device(batch.input_ids, device)
        _check_distinct(batch.sample_index)
        batch_samples = to_device(batch.sample_index, device)
        sample = batch_samples[:, None].expand(b, t).reshape(-1)
        pos = torch.arange(t, device=device).expand(b, t).reshape(-1)
        self._info = TokenInfo(valid=mask.reshape(-1), sample=sample, position=pos, token_id=ids.reshape(-1),
                               batch_shape=(b, t), batch_samples=batch_samples)
        # Row indices of real tokens, built from host-known lengths: no device sync.
        rows = to_device(torch.cat([torch.arange(L) + r * t for r, L in enumerate(batch.lengths)]), device)
        self._packed_rows = rows
        self._packed_info = TokenInfo(
            valid=torch.ones(rows.numel(), dtype=torch.bool, device=device),
            sample=sample.index_select(0, rows),
            position=pos.index_select(0, rows),
            token_id=self._info.token_id.index_select(0, rows),
            batch_shape=(b, t), batch_samples=batch_samples, rows=rows,
        )

    def _set_packed_batch(self, batch: PackedBatch, device) -> None:
        """Token facts of one packed row: every row real, its sample and position known, and its place in a
        [B, T_max] layout (``rows``) so that per-sample extremes stay plain reductions (stats.TokenInfo)."""
        lengths = batch.lengths
        b, t, n = len(lengths), max(lengths), sum(lengths)
        self._batch_shape = (1, n)
        self.discard_batch()
        _check_distinct(batch.sample_index)
        counts = torch.as_tensor(lengths)
        host = torch.stack([
            batch.sample_index.repeat_interleave(counts),
            batch.position_ids.reshape(-1),
            batch.input_ids.reshape(-1),
            torch.arange(b).repeat_interleave(counts) * t + batch.position_ids.reshape(-1),
        ])
        sample, pos, ids, rows = to_device(host, device).unbind(0)  # one copy, no device sync
        info = TokenInfo(valid=torch.ones(n, dtype=torch.bool, device=device), sample=sample, position=pos, token_id=ids,
                         batch_shape=(b, t), batch_samples=to_device(batch.sample_index, device), rows=rows)
        self._info = self._packed_info = info
        self._packed_rows = None

    @torch.no_grad()
    def forward(self, batch: Batch | PackedBatch) -> None:
        dev = self.input_device()
        if isinstance(batch, PackedBatch):
            if self.packing == "padded":
                raise ValueError("a packed batch given to a measurement set up for padded batches")
            self._set_packed_batch(batch, self.device)
            self.backbone(**packing_mod.forward_kwargs(self.backbone, self.family, self.packing, batch, dev))
        else:
            if self.packing != "padded":
                raise ValueError(f"a padded batch given to a measurement set up for packed rows ({self.packing})")
            self._set_batch(batch, self.device)
            self.backbone(
                input_ids=batch.input_ids.to(dev),
                attention_mask=batch.attention_mask.to(dev),
                use_cache=False,
            )
        self._deferred.flush()
        if self.linear_inputs is not None:
            self.linear_inputs.flush()

    def input_device(self) -> torch.device:
        return self.backbone.get_input_embeddings().weight.device

    # ------------------------------------------------------- state (resume/OOM)
    def state(self) -> dict:
        state = {
            "points": {k: v.state_dict() for k, v in self.points.items()},
            "expert_counts": dict(self.expert_counts),
        }
        if self.linear_inputs is not None:
            state["linear_inputs"] = self.linear_inputs.state()
        return state

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
        if self._captures is not None:
            self._captures.discard()
        if self.linear_inputs is not None:
            self.linear_inputs.discard()

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
        if self.linear_inputs is not None:
            self.linear_inputs.restore(state["linear_inputs"], self.device)



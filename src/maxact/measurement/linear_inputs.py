"""Per-input-channel statistics of every linear layer's input, the calibration data quantization stacks read.

For each ``nn.Linear`` of the text backbone: max |x|, sum x^2, sum |x| per input channel, the token count and
the non-finite count (NaN/Inf never enter a statistic). A tensor feeding several linears (q/k/v, gate/up) is
reduced once per batch and its partials added to each. Fused 3-D MoE experts get one record per expert and
fused weight over the tokens routed to it: ``<experts>.gate_up_proj`` from the experts module's input and
routing, ``<experts>.down_proj`` from the output of its ``_apply_gate`` (the gated activation the down
projection multiplies), whose rows transformers' grouped_mm lays out sorted by expert and batched_mm in routing
order (:data:`GATE_ROW_ORDER`); the per-expert loop of ``eager`` computes it inline, out of reach of a hook.

Everything stays on the device and is updated with tensor ops (no host sync); padding rows are excluded
through the measurement's token facts, and packed rows are all real. On CUDA one Triton kernel
(:mod:`maxact.measurement.kernels.column_stats`) reads each input once; elsewhere torch ops compute the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from maxact.measurement.exactsum import dd_add_, dd_add_foreach_
from maxact.measurement.kernels.column_stats import column_stats


@dataclass
class ChannelStats:
    """Running per-channel statistics of one input (``[C]``, or ``[E, C]`` for fused experts)."""

    max_abs: torch.Tensor
    sumsq: torch.Tensor
    sumabs: torch.Tensor
    count: torch.Tensor  # int64 [] or [E]: rows (tokens) seen
    nonfinite: torch.Tensor  # int64 []: NaN/Inf elements refused (for experts: per routed copy)
    # The running sums' low words (maxact.measurement.exactsum: shards merge to the unsharded sums bit for bit); None
    # in a batch's partial (nothing to carry) and left out of linear_inputs.safetensors (which holds the sums).
    sumsq_lo: torch.Tensor | None = None
    sumabs_lo: torch.Tensor | None = None
    FIELDS: ClassVar[tuple[str, ...]] = ("max_abs", "sumsq", "sumabs", "count", "nonfinite")
    #: A running state's fields (resume files, shard states): FIELDS and the low words.
    STATE_FIELDS: ClassVar[tuple[str, ...]] = FIELDS + ("sumsq_lo", "sumabs_lo")

    def _with_low_words(self) -> "ChannelStats":
        for k in ("sumsq", "sumabs"):
            if getattr(self, f"{k}_lo") is None:
                setattr(self, f"{k}_lo", torch.zeros_like(getattr(self, k)))
        return self

    @classmethod
    def zeros(cls, shape: tuple[int, ...], device) -> "ChannelStats":
        """A running state: all zero, with its low words."""
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(shape, dtype=torch.float32, device=device), torch.zeros(shape, **f64), torch.zeros(shape, **f64),
                   torch.zeros(shape[:-1], dtype=torch.int64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device))._with_low_words()

    @classmethod
    def of_state(cls, fields: dict, device=None) -> "ChannelStats":
        """A running state from saved fields (a shard state; or the rounded sums alone, whose low words are then
        zero), copied onto ``device``."""
        return cls(**{k: (fields[k].to(device) if device is not None else fields[k].clone())
                      for k in cls.STATE_FIELDS if fields.get(k) is not None})._with_low_words()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.STATE_FIELDS}

    def add(self, part: "ChannelStats") -> None:
        if part.max_abs.device != self.max_abs.device:  # restored from a resume file onto another device: follow
            for k in self.STATE_FIELDS:  # the activations, once
                setattr(self, k, getattr(self, k).to(part.max_abs.device))
        self._with_low_words()
        torch.maximum(self.max_abs, part.max_abs, out=self.max_abs)
        dd_add_(self.sumsq, self.sumsq_lo, part.sumsq, part.sumsq_lo)
        dd_add_(self.sumabs, self.sumabs_lo, part.sumabs, part.sumabs_lo)
        self.count += part.count
        self.nonfinite += part.nonfinite

    @staticmethod
    def add_all(pairs: list[tuple["ChannelStats", "ChannelStats"]]) -> None:
        """``st.add(part)`` for every pair, as a few multi-tensor ops (each ``st`` at most once)."""
        if any(st.max_abs.device != part.max_abs.device for st, part in pairs):
            for st, part in pairs:
                st.add(part)
            return
        sts, parts = [p[0]._with_low_words() for p in pairs], [p[1] for p in pairs]
        torch._foreach_maximum_([s.max_abs for s in sts], [p.max_abs for p in parts])
        for k in ("sumsq", "sumabs"):
            lows = [getattr(p, f"{k}_lo") for p in parts]
            if all(x is None for x in lows):  # batch partials
                lows = None
            else:
                lows = [torch.zeros_like(getattr(p, k)) if x is None else x for p, x in zip(parts, lows)]
            dd_add_foreach_([getattr(s, k) for s in sts], [getattr(s, f"{k}_lo") for s in sts], [getattr(p, k) for p in parts], lows)
        torch._foreach_add_([s.count for s in sts], [p.count for p in parts])
        torch._foreach_add_([s.nonfinite for s in sts], [p.nonfinite for p in parts])

    def host(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().cpu() for k in self.FIELDS}


def dense_partial(x: torch.Tensor, valid: torch.Tensor) -> ChannelStats:
    """One input's partials: rows of ``x`` [N, C] where ``valid`` [N]; non-finite elements count apart."""
    mx, sq, ab, nonfinite = column_stats(x, valid=valid)
    return ChannelStats(mx[0], sq[0], ab[0], valid.sum(), nonfinite)


def _per_expert(x: torch.Tensor, ids: torch.Tensor, n_experts: int, rows_of=None, presorted: bool = False) -> ChannelStats:
    """Partials per expert of the rows ``ids`` [S] assigns (row ``s`` is ``x[rows_of(perm)[s]]``): sorted by
    expert first (unless ``presorted``: ``x``'s rows already come in expert order): the kernel takes each expert's
    rows as one contiguous range (it needs them sorted)."""
    ids = ids.reshape(-1)
    if presorted:
        sorted_ids, rows = ids, None
    else:
        sorted_ids, perm = torch.sort(ids)
        rows = perm if rows_of is None else rows_of(perm)
    mx, sq, ab, nonfinite = column_stats(x, rows=rows, groups=sorted_ids, n_groups=n_experts)
    count = torch.zeros(n_experts, dtype=torch.int64, device=x.device).index_add_(0, ids.long(), torch.ones_like(ids, dtype=torch.int64))
    return ChannelStats(mx, sq, ab, count, nonfinite)


def routed_partial(x: torch.Tensor, experts: torch.Tensor, n_experts: int, presorted: bool = False) -> ChannelStats:
    """Per-expert partials of rows ``x`` [S, C] each belonging to one expert ``experts`` [S] (the down
    projection's input, one row per routed copy); ``presorted``: the rows already come in expert order."""
    return _per_expert(x, experts, n_experts, presorted=presorted)


#: How transformers' experts forwards (integrations/moe.py) order the rows they pass to ``_apply_gate``:
#: grouped_mm sorts the routed (token, slot) pairs by expert, batched_mm keeps them as ``top_k_index.reshape(-1)``.
GATE_ROW_ORDER = {"grouped_mm": "sorted", "batched_mm": "routing"}


def expert_partial(x: torch.Tensor, experts: torch.Tensor, n_experts: int) -> ChannelStats:
    """Per-expert partials of the rows ``x`` [N, C] routed to ``experts`` [N, k] (each row once per expert
    that receives it; top-k never routes a token twice to one expert)."""
    k = experts.shape[1]
    return _per_expert(x, experts, n_experts, rows_of=lambda perm: perm // k)


def _experts_args(args, kwargs) -> tuple:
    """(input rows, routing) of a fused experts module's call."""
    x = args[0] if args else kwargs["hidden_states"]
    idx = args[1] if len(args) > 1 else next(v for k, v in kwargs.items() if k in ("top_k_index", "router_indices"))
    return x, idx


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor, or (handed over by a compiled graph as two outputs) the same memory, shape and strides."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype and a.device == b.device)


class LinearInputs:
    """Hooks on the linear layers of a backbone, feeding :class:`ChannelStats` per module (or expert set).

    ``valid_for(x)`` gives the token rows of an activation that are real (the measurement's token facts).
    """

    def __init__(self, backbone: torch.nn.Module, names: dict[torch.nn.Module, str], valid_for, expert_modules=(),
                 captures=None, inner=frozenset()):
        """``expert_modules``: (fused experts module, number of experts, its experts implementation); ``captures``:
        the layers run compiled, and the modules whose ids are in ``inner`` (inside a compiled layer) hand their
        tensors to it, recorded when the layer returns (:class:`maxact.measurement.compiled.Captures`)."""
        self.stats: dict[str, ChannelStats] = {}
        self.experts: dict[str, ChannelStats] = {}  # keyed "<experts module>.gate_up_proj" / ".down_proj"
        self.not_recorded: dict[str, str] = {}  # fused weight -> why its input has no record
        self._routes: dict[torch.nn.Module, torch.Tensor] = {}  # the routing of an experts module's current call
        self._gated: list[tuple] = []  # (experts module whose _apply_gate is wrapped here, what it had before)
        self._valid_for = valid_for
        self._handles = []
        self._captures = captures
        self._inner = inner
        # The last input seen and its partial: q/k/v (gate/up) are called one after the other on the same tensor,
        # which is held here so that its memory cannot be reused by another tensor meanwhile.
        self._last: tuple | None = None
        self._pending: list = []  # (stats dict, name, shape, partial): committed with the batch (flush)
        for mod in backbone.modules():
            if isinstance(mod, torch.nn.Linear) and mod in names:
                hook = self._linear_hook(names[mod])
                if self._deferred(mod):
                    self._handles += captures.attach(mod, "in", lambda m, v, hook=hook: hook(m, (v,)))
                else:
                    self._handles.append(mod.register_forward_pre_hook(hook))
        try:
            for mod, n_experts, implementation in expert_modules:
                name = names[mod]
                hook = self._expert_hook(mod, name, n_experts)
                if self._deferred(mod):
                    captures.attach(mod, "experts", lambda m, v, hook=hook: hook(m, v, {}))
                    self._handles.append(mod.register_forward_pre_hook(self._capture_experts, with_kwargs=True))
                else:
                    self._handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
                order = GATE_ROW_ORDER.get(implementation)
                if order is None or not hasattr(mod, "_apply_gate"):
                    self.not_recorded[f"{name}.down_proj"] = (
                        f"transformers ran these experts with experts_implementation {implementation!r}, which computes "
                        "the down projection's input where no hook reaches it (eager: inside its per-expert loop); it is "
                        "recorded under grouped_mm (transformers' default where the model class supports it) or batched_mm: "
                        "load the model with experts_implementation='grouped_mm'")
                else:
                    self._wrap_gate(mod, f"{name}.down_proj", n_experts, order)
        except Exception:
            self.remove()  # nothing half-installed stays on the model
            raise

    def _deferred(self, mod) -> bool:
        return self._captures is not None and id(mod) in self._inner

    def _capture_experts(self, mod, args, kwargs):  # inside a compiled layer: the routed input and its routing
        self._captures.value(mod, "experts", _experts_args(args, kwargs))

    def _linear_hook(self, name: str):
        def hook(m, args):
            x = args[0]
            if self._last is not None and _same_tensor(self._last[0], x):
                part = self._last[1]
            else:
                x2 = x.reshape(-1, x.shape[-1])
                part = dense_partial(x2, self._valid_for(x2))
                self._last = (x, part)
            self._pending.append((self.stats, name, (x.shape[-1],), part))

        return hook

    def _expert_hook(self, mod: torch.nn.Module, name: str, n_experts: int):
        def hook(m, args, kwargs):
            x, idx = _experts_args(args, kwargs)
            x2 = x.reshape(-1, x.shape[-1])
            idx = idx.reshape(x2.shape[0], -1)
            self._routes[mod] = idx
            part = expert_partial(x2, idx, n_experts)
            self._pending.append((self.experts, f"{name}.gate_up_proj", (n_experts, x2.shape[-1]), part))

        return hook

    def _wrap_gate(self, mod: torch.nn.Module, key: str, n_experts: int, order: str) -> None:
        """Wrap the module's ``_apply_gate`` (an instance attribute, shadowing the class's) so that its output,
        the down projection's input, is reduced per expert."""
        apply_gate = mod._apply_gate
        before = mod.__dict__.get("_apply_gate")  # an instance attribute someone else set, restored by remove()

        def record(out: torch.Tensor) -> None:
            ids = self._routes[mod].reshape(-1)
            if order == "sorted":
                ids = torch.sort(ids).values
            o2 = out.reshape(-1, out.shape[-1])
            if o2.shape[0] != ids.shape[0]:
                raise RuntimeError(f"{key}: _apply_gate got {o2.shape[0]} rows for {ids.shape[0]} routed tokens, so this "
                                   f"experts implementation ({order} rows expected) lays them out otherwise; measure without "
                                   "measure.linear_inputs/exports, or load the model with experts_implementation='grouped_mm'")
            part = routed_partial(o2, ids, n_experts, presorted=order == "sorted")
            self._pending.append((self.experts, key, (n_experts, o2.shape[-1]), part))

        if self._deferred(mod):  # the gate stays in the compiled graph; its output is recorded when the layer returns
            self._captures.attach(mod, "gate", lambda m, out: record(out))
            captures = self._captures

            def hand_over(out: torch.Tensor) -> None:
                captures.value(mod, "gate", out)
        else:
            hand_over = record

        def gated(gate_up: torch.Tensor) -> torch.Tensor:
            out = apply_gate(gate_up)
            hand_over(out)
            return out

        mod._apply_gate = gated
        self._gated.append((mod, before))

    def flush(self) -> None:
        """Commit the batch's partials (its forward completed)."""
        pending, self._pending, self._last = self._pending, [], None
        self._routes.clear()
        rounds: list[list[tuple[ChannelStats, ChannelStats]]] = []  # a module seen k times this batch: in round k
        seen: dict[int, int] = {}
        for table, name, shape, part in pending:
            st = table.get(name)
            if st is None:
                st = table[name] = ChannelStats.zeros(shape, part.max_abs.device)
            k = seen[id(st)] = seen.get(id(st), -1) + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append((st, part))
        for pairs in rounds:
            ChannelStats.add_all(pairs)

    def discard(self) -> None:
        """Drop the batch's partials (out of memory: it is run again)."""
        self._pending, self._last = [], None
        self._routes.clear()

    def state(self) -> dict:
        """The committed statistics, for a resume file (tensors stay where they are)."""
        return {kind: {n: st.state() for n, st in table.items()}
                for kind, table in (("linear", self.stats), ("experts", self.experts))}

    def restore(self, state: dict, device) -> None:
        for kind, table in (("linear", self.stats), ("experts", self.experts)):
            table.clear()
            for n, d in state[kind].items():
                table[n] = ChannelStats.of_state(d, device)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod, before in self._gated:
            if before is None:
                del mod._apply_gate  # the class's method again
            else:
                mod._apply_gate = before
        self._gated.clear()

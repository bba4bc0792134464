"""Per-input-channel statistics of every linear layer's input, the calibration data quantization stacks read.

For each ``nn.Linear`` of the text backbone: max |x|, sum x^2, sum |x| per input channel, the token count and
the non-finite count (NaN/Inf never enter a statistic). A tensor feeding several linears (q/k/v, gate/up) is
reduced once per batch and its partials added to each. Fused 3-D MoE experts (``gate_up_proj`` of shape
[E, ...]) get one record per expert over the tokens routed to it, from the experts module's input and routing.

Everything stays on the device and is updated with tensor ops (no host sync); padding rows are excluded
through the measurement's token facts, and packed rows are all real.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ChannelStats:
    """Running per-channel statistics of one input (``[C]``, or ``[E, C]`` for fused experts)."""

    max_abs: torch.Tensor
    sumsq: torch.Tensor
    sumabs: torch.Tensor
    count: torch.Tensor  # int64 [] or [E]: rows (tokens) seen
    nonfinite: torch.Tensor  # int64 []: NaN/Inf elements refused
    names: list[str] = field(default_factory=list)

    @classmethod
    def zeros(cls, shape: tuple[int, ...], device) -> "ChannelStats":
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(shape, dtype=torch.float32, device=device), torch.zeros(shape, **f64), torch.zeros(shape, **f64),
                   torch.zeros(shape[:-1], dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device))

    def add(self, part: "ChannelStats") -> None:
        torch.maximum(self.max_abs, part.max_abs, out=self.max_abs)
        self.sumsq += part.sumsq
        self.sumabs += part.sumabs
        self.count += part.count
        self.nonfinite += part.nonfinite

    def host(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().cpu() for k in ("max_abs", "sumsq", "sumabs", "count", "nonfinite")}


def dense_partial(x: torch.Tensor, valid: torch.Tensor) -> ChannelStats:
    """One input's partials: rows of ``x`` [N, C] where ``valid`` [N]; non-finite elements count apart."""
    xf = x.float()
    finite = torch.isfinite(xf)
    keep = finite & valid[:, None]
    a = torch.where(keep, xf, 0.0).abs_()
    return ChannelStats(a.amax(0), a.square().sum(0, dtype=torch.float64), a.sum(0, dtype=torch.float64),
                        valid.sum(), (~finite & valid[:, None]).sum())


def expert_partial(x: torch.Tensor, experts: torch.Tensor, n_experts: int) -> ChannelStats:
    """Per-expert partials of the rows ``x`` [N, C] routed to ``experts`` [N, k] (each row once per expert
    that receives it): sums by a one-hot matmul, maxima by a scatter over the routed copies."""
    xf = x.float()
    finite = torch.isfinite(xf)
    a = torch.where(finite, xf, 0.0).abs_()
    onehot = torch.zeros((x.shape[0], n_experts), dtype=torch.float64, device=x.device)
    onehot.scatter_(1, experts.long(), 1.0)  # a token routed twice to one expert does not happen (top-k)
    sumsq = onehot.T @ a.double().square()
    sumabs = onehot.T @ a.double()
    k = experts.shape[1]
    src = a.repeat_interleave(k, 0)
    mx = torch.zeros((n_experts, x.shape[1]), dtype=torch.float32, device=x.device)
    mx.index_reduce_(0, experts.reshape(-1).long(), src, "amax", include_self=True)
    return ChannelStats(mx, sumsq, sumabs, onehot.sum(0).long(), (~finite).sum())


class LinearInputs:
    """Hooks on the linear layers of a backbone, feeding :class:`ChannelStats` per module (or expert set).

    ``valid_for(x)`` gives the token rows of an activation that are real (the measurement's token facts).
    """

    def __init__(self, backbone: torch.nn.Module, names: dict[torch.nn.Module, str], valid_for, expert_modules=()):
        self.stats: dict[str, ChannelStats] = {}
        self.experts: dict[str, ChannelStats] = {}
        self._valid_for = valid_for
        self._handles = []
        # The last input seen and its partial: q/k/v (gate/up) are called one after the other on the same tensor,
        # which is held here so that its memory cannot be reused by another tensor meanwhile.
        self._last: tuple | None = None
        self._pending: list = []  # (stats dict, name, shape, partial): committed with the batch (flush)
        for mod in backbone.modules():
            if isinstance(mod, torch.nn.Linear) and mod in names:
                self._handles.append(mod.register_forward_pre_hook(self._linear_hook(names[mod])))
        for mod, n_experts in expert_modules:
            self._handles.append(mod.register_forward_pre_hook(self._expert_hook(names[mod], n_experts), with_kwargs=True))

    def _linear_hook(self, name: str):
        def hook(m, args):
            x = args[0]
            if self._last is not None and self._last[0] is x:
                part = self._last[1]
            else:
                x2 = x.reshape(-1, x.shape[-1])
                part = dense_partial(x2, self._valid_for(x2))
                self._last = (x, part)
            self._pending.append((self.stats, name, (x.shape[-1],), part))

        return hook

    def _expert_hook(self, name: str, n_experts: int):
        def hook(m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            idx = args[1] if len(args) > 1 else next(v for k, v in kwargs.items() if k in ("top_k_index", "router_indices"))
            x2 = x.reshape(-1, x.shape[-1])
            part = expert_partial(x2, idx.reshape(x2.shape[0], -1), n_experts)
            self._pending.append((self.experts, name, (n_experts, x2.shape[-1]), part))

        return hook

    def flush(self) -> None:
        """Commit the batch's partials (its forward completed)."""
        pending, self._pending, self._last = self._pending, [], None
        for table, name, shape, part in pending:
            st = table.get(name)
            if st is None:
                st = table[name] = ChannelStats.zeros(shape, part.max_abs.device)
            st.add(part)

    def discard(self) -> None:
        """Drop the batch's partials (out of memory: it is run again)."""
        self._pending, self._last = [], None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

"""Sharded measurement: one checkpoint's corpus over many GPUs and jobs, merged exactly.

A shard is a slice of the unsharded batch plan: the batches an unsharded run makes, in its order, are cut into N
contiguous parts of about equal token count, and shard K runs exactly the batches of part K. Each batch's arithmetic
is therefore the one of the unsharded run, and every statistic combines across parts (:func:`merge_states`):

- counts, histograms, MoE expert counts: added, exactly;
- extremes, per-sample extremes: max/min, exactly;
- top-k: merged by the accumulation's own rule (|a| descending, exact ties to the smallest sample, position,
  channel), exactly the top-k of the whole;
- the Sun criterion's largest ratio: the earliest part holding it, as a run over the batches in order keeps it;
- float64 sums (mean, std, rms, mean |a|, the Sun ratio's sums, the linear inputs' sum x^2 and sum |x|): kept as
  double-double pairs (:mod:`maxact.measurement.exactsum`) by the run and by the merge, so that another grouping of
  the same per-batch additions gives the same float64 bit for bit while the exact total spans at most about 104
  bits (and within about 2^-104 relative beyond).

A shard's mergeable state is written as safetensors (tensors) and JSON (what it belongs to), never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from maxact.errors import InputError
from maxact.measurement.linear_inputs import ChannelStats
from maxact.measurement.statistics import PointStats

STATE = "shard_state.safetensors"
INFO = "shard.json"
MAX_SHARDS = 4096
_SPEC = re.compile(r"^\s*(\d+)\s*(?:/|-of-)\s*(\d+)\s*$")
_SEP = "|"


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> "Shard":
        """``K/N`` (or Snakemake's scatter item ``K-of-N``) with 1 <= K <= N <= 4096."""
        m = _SPEC.match(str(text))
        if not m:
            raise InputError(f"{option} must be K/N, e.g. 2/4 for the second of four shards (got {text!r})")
        k, n = int(m[1]), int(m[2])
        if not 1 <= n <= MAX_SHARDS or not 1 <= k <= n:
            raise InputError(f"{option} {text}: K must be from 1 to N and N from 1 to {MAX_SHARDS} (got K={k}, N={n})")
        return cls(k, n)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def shard_range(batches: list[list[int]], lengths: list[int], shard: Shard) -> tuple[int, int]:
    """[start, end) of the batches of ``shard``: N contiguous parts of about equal token count (a part ends at the
    first batch boundary at or past K/N of all tokens), so that every batch belongs to exactly one shard."""
    tokens = [sum(lengths[i] for i in b) for b in batches]
    total = sum(tokens)

    def boundary(k: int) -> int:
        if k <= 0:
            return 0
        if k >= shard.count:
            return len(batches)
        target, acc = total * k / shard.count, 0
        for j, t in enumerate(tokens):
            if acc >= target:
                return j
            acc += t
        return len(batches)

    return boundary(shard.index - 1), boundary(shard.index)


def plan_digest(batches: list[list[int]]) -> str:
    """sha256 of the batch plan (which samples each batch holds, in order): shards of one plan only are merged."""
    return hashlib.sha256(json.dumps(batches, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- state on disk


def _flatten(state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, st in state["points"].items():
        for k, t in st.items():
            out[_SEP.join(("points", name, k))] = t
    for layer, t in state["expert_counts"].items():
        out[_SEP.join(("experts", str(layer)))] = t
    for kind, table in (state.get("linear_inputs") or {}).items():
        for module, fields in table.items():
            for k, t in fields.items():
                out[_SEP.join(("linear", kind, module, k))] = t
    return {k: t.detach().cpu().contiguous() for k, t in out.items()}


def save_state(folder: Path, state: dict, info: dict) -> None:
    """A shard's state (``Measurement.state()``) as safetensors, and what it belongs to as JSON (written atomically)."""
    from safetensors.torch import save_file

    from maxact.io import atomic_save, write_json

    tensors = _flatten(state)
    has_linear = "linear_inputs" in state
    atomic_save(folder / STATE, lambda tmp: save_file(tensors, str(tmp), metadata={"maxact": "shard state", "linear_inputs": str(has_linear)}))
    write_json(folder / INFO, info)


def load_info(folder: Path) -> dict:
    """What a shard folder belongs to (its ``shard.json``); an InputError naming the folder when a part is missing."""
    folder = Path(folder)
    for f in (STATE, INFO):
        if not (folder / f).is_file():
            raise InputError(f"{folder}: no {f}; not the output folder of `maxact measure --shard` (or the shard did not finish)")
    try:
        return json.loads((folder / INFO).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: {INFO} is unreadable ({type(e).__name__}: {e}); measure that shard again") from None


def load_state(folder: Path) -> dict:
    """The state of a shard folder whose :func:`load_info` was read; an InputError naming the folder when it is
    unreadable."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    try:
        state: dict = {"points": {}, "expert_counts": {}}
        with safe_open(str(folder / STATE), "pt") as f:
            if (f.metadata() or {}).get("linear_inputs") == "True":
                state["linear_inputs"] = {"linear": {}, "experts": {}}
            for key in f.keys():
                parts = key.split(_SEP)
                t = f.get_tensor(key)
                if parts[0] == "points":
                    state["points"].setdefault(parts[1], {})[parts[2]] = t
                elif parts[0] == "experts":
                    state["expert_counts"][int(parts[1])] = t
                elif parts[0] == "linear":
                    state["linear_inputs"][parts[1]].setdefault(parts[2], {})[parts[3]] = t
    except (OSError, ValueError, SafetensorError) as e:
        raise InputError(f"{folder}: the shard's state is unreadable ({type(e).__name__}: {e}); measure that shard again") from None
    return state


# --------------------------------------------------------------------------- merge


def merge_states(states: list[dict], topk: int) -> dict:
    """The state of the whole corpus from the states of its shards, in shard order (see the module docstring)."""
    names = []
    for s in states:
        names += [n for n in s["points"] if n not in names]
    points = {n: PointStats.merge_states([s["points"][n] for s in states if n in s["points"]], topk) for n in names}
    experts: dict[int, torch.Tensor] = {}
    for s in states:
        for layer, t in s["expert_counts"].items():
            experts[layer] = experts[layer] + t if layer in experts else t.clone()
    merged = {"points": points, "expert_counts": experts}
    if all("linear_inputs" in s for s in states):
        merged["linear_inputs"] = {}
        for kind in ("linear", "experts"):
            table: dict[str, ChannelStats] = {}
            for s in states:
                for module, fields in s["linear_inputs"][kind].items():
                    part = ChannelStats.of_state(fields)
                    if module in table:
                        table[module].add(part)
                    else:
                        table[module] = part
            merged["linear_inputs"][kind] = {m: st.state() for m, st in table.items()}
    return merged


class MergedMeasurement:
    """A measurement's statistics without its model: what the summary (``assemble_result``, ``per_sample_table``)
    and the calibration files read, rebuilt from a (merged) state."""

    def __init__(self, state: dict, n_samples: int, topk: int):
        self.points: dict[str, PointStats] = {}
        for name, st in state["points"].items():
            ps = PointStats(name, n_samples, "cpu", full="hist" in st, topk=topk)
            ps.load_state_dict(st)
            self.points[name] = ps
        self.expert_counts = {int(k): v for k, v in state["expert_counts"].items()}
        self.linear_inputs = None
        if "linear_inputs" in state:
            self.linear_stats = {m: ChannelStats.of_state(f) for m, f in state["linear_inputs"]["linear"].items()}
            self.linear_experts = {m: ChannelStats.of_state(f) for m, f in state["linear_inputs"]["experts"].items()}

    def host_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: ps.state_dict() for name, ps in self.points.items()}

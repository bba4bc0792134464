"""Hook point names: one owner for how they are written, their kind, their layer, the forward order and
the global-max rule. The measurement names its points with these builders; the study reads them back
with the same parser (published files use the same names).

``embedding_output``, ``layer_{i}_{suffix}`` (suffix: ``hidden``, ``attn_output``, ``mlp_output``,
``mlp_gate``, ``moe_gate``, ``router_logits``, ``attn_residual_in``, ``mlp_residual_in``),
``final_layernorm``.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

EMBEDDING = "embedding_output"
FINAL_NORM = "final_layernorm"

#: Component kinds counted in the global maximum (router logits and gate outputs are excluded).
GLOBAL_KINDS = frozenset({"embedding", "hidden", "attn", "mlp", "final_norm"})
#: Component kinds that are the residual stream.
RESIDUAL_KINDS = frozenset({"hidden"})

_LAYER_SUFFIX_KIND = {
    "hidden": "hidden",
    "attn_output": "attn",
    "mlp_output": "mlp",
    "mlp_gate": "mlp_gate",
    "moe_gate": "moe_gate",
    "router_logits": "router_logits",
    "attn_residual_in": "attn_residual_in",
    "mlp_residual_in": "mlp_residual_in",
}
_LAYER_RE = re.compile(r"^layer_(\d+)_(.+)$")
_LOCATION_RE = re.compile(r"^\s*(.+?)\s*\((max|min)\)\s*$")

#: Order of the points inside one layer in the forward pass (ties are broken by this order).
_FORWARD_ORDER = {"attn": 0, "attn_residual_in": 1, "moe_gate": 2, "router_logits": 3, "mlp_gate": 4, "mlp": 5,
                  "mlp_residual_in": 6, "hidden": 7, "other": 8}


def layer_point(layer: int, suffix: str) -> str:
    """``layer_point(3, "hidden")`` -> ``'layer_3_hidden'``."""
    if suffix not in _LAYER_SUFFIX_KIND:
        raise ValueError(f"unknown point suffix {suffix!r}; known: {', '.join(_LAYER_SUFFIX_KIND)}")
    return f"layer_{layer}_{suffix}"


def parse_component(name: str) -> tuple[str, int | None]:
    """``'layer_16_hidden'`` -> ``('hidden', 16)``; ``'final_layernorm'`` -> ``('final_norm', None)``.

    Unknown names give kind ``'other'`` (with the layer index when the name has one).
    """
    if name == EMBEDDING:
        return "embedding", None
    if name in (FINAL_NORM, "final_norm"):
        return "final_norm", None
    m = _LAYER_RE.match(name)
    if m:
        return _LAYER_SUFFIX_KIND.get(m.group(2), "other"), int(m.group(1))
    return "other", None


def kind_of(name: str) -> str:
    return parse_component(name)[0]


def layer_of(name: str) -> int | None:
    return parse_component(name)[1]


def parse_location(location: str | None) -> tuple[str | None, str | None]:
    """``'layer_16_hidden (max)'`` -> ``('layer_16_hidden', 'max')``."""
    if not location:
        return None, None
    m = _LOCATION_RE.match(location)
    if not m:
        return location.strip(), None
    return m.group(1), m.group(2)


def forward_order_key(name: str) -> tuple:
    """Sort key putting components in forward-pass order: embedding, layer 0 (attn, mlp, hidden), ..., final norm."""
    kind, layer = parse_component(name)
    if kind == "embedding":
        return (-1, 0, name)
    if kind == "final_norm":
        return (math.inf, 0, name)
    if layer is None:
        return (math.inf, 1, name)
    return (layer, _FORWARD_ORDER.get(kind, 8), name)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def global_max(per_layer_stats: Mapping[str, Mapping]) -> tuple[float, str, str] | None:
    """Signed value of largest magnitude over the GLOBAL_KINDS components, ``(value, component, 'max'|'min')``,
    or None when no such component has a finite max/min.

    Exact ties in magnitude go to the component earliest in the forward pass (embedding, layer 0 attn, mlp,
    hidden, layer 1 ..., final norm), and a max beats a min of equal magnitude: the rule the published files
    follow (gpt-oss-20b's last ``mlp_output`` ties its ``hidden`` exactly; Qwen2.5-1.5B ties two layers).
    """
    best: tuple[float, str, str] | None = None
    for comp in sorted(per_layer_stats, key=forward_order_key):
        if kind_of(comp) not in GLOBAL_KINDS:
            continue
        st = per_layer_stats[comp] or {}
        for ext in ("max", "min"):
            v = st.get(ext)
            if not is_number(v) or not math.isfinite(float(v)):
                continue
            v = float(v)
            if best is None or abs(v) > abs(best[0]):
                best = (v, comp, ext)
    return best


def recompute_global_max(per_layer_stats: Mapping[str, Mapping]) -> tuple[float, str, str]:
    """:func:`global_max` of a result file's ``per_layer_stats``; ValueError when there is none."""
    best = global_max(per_layer_stats)
    if best is None:
        raise ValueError("no finite max/min in any global component (embedding/hidden/attn/mlp/final_layernorm)")
    return best


def components_at_global_max(per_layer_stats: Mapping[str, Mapping]) -> list[str]:
    """Every GLOBAL_KINDS component whose max or min reaches the global |max| exactly (ties), forward order."""
    value = abs(recompute_global_max(per_layer_stats)[0])
    out = []
    for comp in sorted(per_layer_stats, key=forward_order_key):
        if kind_of(comp) in GLOBAL_KINDS:
            st = per_layer_stats[comp] or {}
            if any(is_number(st.get(e)) and abs(float(st[e])) == value for e in ("max", "min")):
                out.append(comp)
    return out


def residual_point_at(component: str | None, n_layers: int) -> str:
    """The residual-stream point at (or nearest after) ``component``: a layer's ``hidden`` for any point of that
    layer, ``final_layernorm`` for itself, layer 0's ``hidden`` for the embedding, the last layer's for None."""
    if component is None:
        return layer_point(n_layers - 1, "hidden")
    kind, layer = parse_component(component)
    if kind == "final_norm":
        return FINAL_NORM
    if layer is None:
        return layer_point(0, "hidden")
    return layer_point(layer, "hidden")

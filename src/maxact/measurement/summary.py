"""The host-side summary of a measurement: published-format ``per_layer_stats``, peaks with provenance,
top-k, expert routing, non-finite counts, and the per-sample extremes table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from maxact import points

if TYPE_CHECKING:
    from maxact.measurement.hooks import Measurement


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
    best = points.global_max(per_layer)
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
        peak.update(component=best[1], kind=points.kind_of(best[1]), layer=points.layer_of(best[1]), extreme=best[2])
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


def _point_order(meas: Measurement) -> list[str]:
    # Forward-pass order, so that exact ties resolve to the earliest point as in the published files.
    return sorted(meas.points, key=points.forward_order_key)


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

"""Seaborn figures, each saved as PNG and PDF (atomically), readable in print."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from maxact.io import atomic_save  # noqa: E402

ROLE_MARKERS = {"dense": "o", "moe": "D", "vlm": "s", "instruct": "^", "intermediate": "v", None: "o"}
SOURCE_FILL = {"measured": "full", "published": "none"}


def _save(fig, out_dir: Path, stem: str) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out_dir / f"{stem}.{ext}"
        atomic_save(p, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
        paths.append(str(p))
    plt.close(fig)
    return paths


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def global_max_by_family(gt: pd.DataFrame, out_dir: Path, measured_notes: dict[str, str] | None = None) -> list[str]:
    """Global |max| per checkpoint on a log axis, grouped and coloured by family; marker = role. A measured row's
    label says it was measured here and, from ``measured_notes``, what its weights were (e.g. GGUF Q4_1)."""
    _style()
    df = gt.copy()
    df["family"] = df["family"].fillna("unknown")
    df = df.sort_values(["family", "global_max_abs"])
    notes = df["name"].map(measured_notes or {}).fillna("")
    df["label"] = df["name"] + np.where(df["source"] == "measured", " (measured here" + np.where(notes != "", ", " + notes, "") + ")", "")
    fams = list(dict.fromkeys(df["family"]))
    pal = dict(zip(fams, sns.color_palette("tab10", len(fams))))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * len(df) + 1)))
    for y, (_, r) in enumerate(df.iterrows()):
        ax.hlines(y, 1e-1, r["global_max_abs"], color=pal[r["family"]], alpha=0.35, lw=2)
        ax.scatter(
            r["global_max_abs"], y, marker=ROLE_MARKERS.get(r.get("role"), "o"), s=55,
            facecolors=pal[r["family"]] if r["source"] == "measured" else "white", edgecolors=pal[r["family"]], linewidths=1.6, zorder=3,
        )
    ax.set_yticks(range(len(df)), df["label"])
    ax.set_xscale("log")
    ax.set_xlim(left=max(1e-1, df["global_max_abs"].min() / 3))
    ax.set_xlabel("global max |activation| (log scale)")
    ax.set_title("Largest activation magnitude per checkpoint")
    handles = [plt.Line2D([], [], color=pal[f], lw=3, label=f) for f in fams]
    handles += [plt.Line2D([], [], marker=m, ls="", color="grey", label=str(r)) for r, m in ROLE_MARKERS.items() if r and r in set(df.get("role", []))]
    handles += [plt.Line2D([], [], marker="o", ls="", markerfacecolor="grey", markeredgecolor="grey", label="measured here"),
                plt.Line2D([], [], marker="o", ls="", markerfacecolor="white", markeredgecolor="grey", label="published")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=True)
    return _save(fig, out_dir, "global_max_by_family")


def layerwise_max(lt: pd.DataFrame, out_dir: Path, kind: str = "hidden") -> list[str]:
    """Per-layer max |a| of the residual stream against relative depth, one panel per family."""
    _style()
    d = lt[(lt["kind"] == kind) & (lt["stat"].isin(["max", "min"]))].copy()
    d["abs"] = d["value"].abs()
    d = d.groupby(["name", "family", "source", "layer", "relative_depth"], dropna=False)["abs"].max().reset_index()
    d["family"] = d["family"].fillna("unknown")
    fams = sorted(d["family"].unique())
    ncol = min(3, len(fams)) or 1
    nrow = int(np.ceil(len(fams) / ncol)) or 1
    # Legends under each panel, at the figure's text size: readable in the report and in print.
    most = max((d[d["family"] == f]["name"].nunique() for f in fams), default=1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, (3.0 + 0.22 * most) * nrow), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, fam in zip(axes.flat, fams):
        sub = d[d["family"] == fam]
        for name, g in sub.groupby("name"):
            g = g.sort_values("relative_depth")
            measured = (g["source"] == "measured").all()
            ax.plot(g["relative_depth"], g["abs"], "-" if measured else "--", lw=1.6 if measured else 1.3,
                    label=f"{name} (measured here)" if measured else name)
        ax.set_yscale("log")
        ax.set_title(fam, fontsize=11)
        ax.legend(fontsize=9.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
        ax.tick_params(labelbottom=True)
    for ax in axes.flat[len(fams):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("relative depth (layer / last layer)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"max |{kind}| per layer (log)")
    fig.suptitle("Layerwise maxima of the residual stream (solid: measured here, dashed: published)")
    return _save(fig, out_dir, f"layerwise_max_{kind}")


def component_depth_heatmap(lt: pd.DataFrame, out_dir: Path, bins: int = 10) -> list[str]:
    """Median over checkpoints of log10 max|a| per component kind and relative-depth bin."""
    _style()
    d = lt[lt["stat"].isin(["max", "min"]) & lt["relative_depth"].notna()].copy()
    d["abs"] = d["value"].abs()
    d = d.groupby(["name", "kind", "layer", "relative_depth"])["abs"].max().reset_index()
    d["depth_bin"] = np.minimum((d["relative_depth"] * bins).astype(int), bins - 1)
    d["log10_max"] = np.log10(d["abs"].clip(lower=1e-8))
    piv = d.groupby(["kind", "depth_bin"])["log10_max"].median().unstack("depth_bin")
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(piv) + 1.5))
    # + 0.0 turns a rounded -0.0 into 0.0 (a cell just below |a| = 1 would read "-0.0").
    sns.heatmap(piv, ax=ax, cmap="magma", annot=piv.round(1) + 0.0, fmt=".1f", cbar_kws={"label": "median log10 max|a|"})
    ax.set_xlabel(f"relative depth bin (1/{bins} of the stack)")
    ax.set_ylabel("component")
    ax.set_title("Where peaks sit: component x depth")
    return _save(fig, out_dir, "component_depth_heatmap")


def int8_vs_peak(int8: pd.DataFrame, out_dir: Path) -> list[str]:
    """INT-8 SQNR (dB) against the checkpoint's peak (log axis): one panel per policy, every point labelled with its
    checkpoint (labels moved apart by adjustText), points that coincide drawn once with all their names."""
    from adjustText import adjust_text

    _style()
    d = int8.dropna(subset=["mean_sqnr_db", "reference_global_max_abs"]).copy()
    d = d[np.isfinite(d["mean_sqnr_db"].astype(float))]
    policies = list(dict.fromkeys(d["policy"])) or ["(none)"]
    ncol = min(2, len(policies))
    nrow = int(np.ceil(len(policies) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False)
    pal = {"measured": "#d62728", "published": "#1f77b4"}
    if len(d):
        d["x"], d["y"] = d["reference_global_max_abs"].astype(float), d["mean_sqnr_db"].astype(float)
    for ax, pol in zip(axes.flat, policies):
        g = d[d["policy"] == pol] if len(d) else d
        texts = []
        # One marker per (source, position): coincident points (e.g. a base and its instruct model with the same
        # peak and error) would hide each other; their names are listed together.
        for (src, x, y), h in g.groupby([g["source"], g["x"].round(9), g["y"].round(6)], sort=False) if len(g) else []:
            measured = src == "measured"
            ax.scatter(x, y, s=80 if measured else 50, marker="o" if measured else "X", color=pal.get(src, "grey"),
                       edgecolors="black" if measured else "none", linewidths=0.8, zorder=3)
            names = ", ".join(sorted(set(h["name"].astype(str))))
            texts.append(ax.text(x, y, names + (" (measured here)" if measured else ""), fontsize=9, zorder=4))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no crowded labels
        if len(g):
            ax.set_xlim(g["x"].min() / 2.5, g["x"].max() * 4)
            lo, hi = g["y"].min(), g["y"].max()
            ax.set_ylim(lo - 0.15 * (hi - lo + 1), hi + 0.25 * (hi - lo + 1))
        ax.set_title(f"policy {pol}")
        ax.set_xlabel("global max |activation| of the checkpoint (log scale)")
        ax.set_ylabel("INT-8 SQNR at the peak layer (dB)")
        ax._maxact_texts = texts
    for ax in axes.flat[len(policies):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", markerfacecolor=pal["measured"], markeredgecolor="black", label="measured here"),
               plt.Line2D([], [], marker="X", ls="", color=pal["published"], label="published (the paper)")]
    fig.suptitle("INT-8 SQNR at the peak layer against the peak, per threshold policy")
    fig.legend(handles=handles, loc="upper right", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    for ax in axes.flat[: len(policies)]:  # after the layout: labels kept inside their panel
        if getattr(ax, "_maxact_texts", None):
            adjust_text(ax._maxact_texts, ax=ax, expand=(1.1, 1.3), ensure_inside_axes=True,
                        arrowprops=dict(arrowstyle="-", color="#888", lw=0.6))
    return _save(fig, out_dir, "int8_sqnr_vs_peak")


def saturation_curves(sat: pd.DataFrame, out_dir: Path) -> list[str]:
    """Global max against corpus size (median of category-proportional subsets, 5-95% band)."""
    if "kind" in sat:
        sat = sat[sat["kind"] == "global"]
    _style()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, g in sat.groupby("checkpoint"):
        line, = ax.plot(g["n_samples"], g["median_max"], marker="o", ms=3, label=name)
        ax.fill_between(g["n_samples"], g["q05"], g["q95"], color=line.get_color(), alpha=0.2)
        ax.axhline(g["full_max"].iloc[-1], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples in the subset (log scale)")
    ax.set_ylabel("global max |activation| (log scale)")
    ax.set_title("Saturation: does the maximum plateau with corpus size?")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "saturation")


def saturation_by_kind(sat: pd.DataFrame, out_dir: Path) -> list[str]:
    """Per checkpoint, the saturation curve of each component kind relative to its own final value."""
    sat = sat[sat["kind"] != "global"] if "kind" in sat else sat.iloc[0:0]
    names = sorted(sat["checkpoint"].unique())
    if not names:
        return []
    _style()
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for kind, g in sat[sat["checkpoint"] == name].groupby("kind", sort=True):
            full = g["full_max"].iloc[-1]
            line, = ax.plot(g["n_samples"], g["median_max"] / full, marker="o", ms=3, label=kind)
            ax.fill_between(g["n_samples"], g["q05"] / full, g["q95"] / full, color=line.get_color(), alpha=0.15)
        ax.axhline(1.0, color="#444", ls=":", lw=1)
        ax.axhline(0.95, color="#999", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("samples in the subset (log scale)")
    axes.flat[0].set_ylabel("median max / final max")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Saturation per component kind (dashed: 95% of the final value)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, out_dir, "saturation_by_kind")


def extremes_curve(sat: pd.DataFrame, doc: dict, name: str, out_dir: Path) -> list[str]:
    """One checkpoint: the observed saturation curve of the global max and the extreme-value estimate of the median
    maximum over N samples, with its 90% interval, extended to the largest N asked."""
    _style()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    g = sat[(sat["checkpoint"] == name) & (sat["kind"] == "global")] if "kind" in sat else sat[sat["checkpoint"] == name]
    if len(g):
        line, = ax.plot(g["n_samples"], g["median_max"], marker="o", ms=3, label="observed (median over subsets)")
        ax.fill_between(g["n_samples"], g["q05"], g["q95"], color=line.get_color(), alpha=0.2, label="5-95% of subsets")
    curve = doc.get("curve") or doc.get("return_levels") or []
    if curve:
        n = [r["n_samples"] for r in curve]
        ax.plot(n, [r["estimate"] for r in curve], color="#c0392b", marker="s", ms=3, label="estimate: median max over N")
        lo = [r["lower"] if r["lower"] is not None else np.nan for r in curve]
        hi = [r["upper"] if r["upper"] is not None else np.nan for r in curve]
        ax.fill_between(n, lo, hi, color="#c0392b", alpha=0.15, label="90% interval")
    if doc.get("endpoint"):
        ax.axhline(doc["endpoint"]["estimate"], color="#7f8c8d", ls="--", lw=1, label="upper endpoint")
    ax.axhline(doc["observed_max"], color="#333", ls=":", lw=1, label="measured max")
    ax.set_xscale("log")
    ax.set_xlabel("samples (log scale)")
    ax.set_ylabel("max |activation|")
    ax.set_title(f"{name}: what a larger corpus would find")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, f"extremes_{name}")


def bootstrap_stability(boot: pd.DataFrame, out_dir: Path) -> list[str]:
    """The paper's experiment A: each repeat's maximum relative to the full corpus (dots) and their mean (bar), per
    checkpoint and subset size; measured here and published side by side."""
    _style()
    d = boot.copy()
    reps = sorted(c for c in d.columns if re.fullmatch(r"r\d+", str(c)))
    d["label"] = d["checkpoint"].astype(str) + np.where(d["source"] == "measured", " (measured here)", " (published)")
    labels = list(dict.fromkeys(d["label"]))
    sizes = sorted(d["size"].unique())
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) * len(sizes) + 1.8))
    y = 0
    ticks = []
    for lab in labels:
        for n in sizes:
            row = d[(d["label"] == lab) & (d["size"] == n)]
            if row.empty:
                continue
            r = row.iloc[0]
            rel = [r[c] / r["full_max"] for c in reps if pd.notna(r[c])]
            ax.scatter(rel, [y] * len(rel), color="#4477aa" if r["source"] == "measured" else "#999999", s=22, zorder=3)
            ax.plot([r["mean"] / r["full_max"]] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
            ticks.append((y, f"{lab}, n={int(n)}" + (f" (drew {int(r['drawn'])})" if r["drawn"] != n else "")))
            y += 1
    ax.axvline(1.0, color="grey", ls=":")
    ax.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("repeat max / full-corpus max (dots: repeats, bar: mean)")
    ax.set_title("Bootstrap experiment A: subsets of the corpus against the whole")
    return _save(fig, out_dir, "bootstrap")


def matched_pairs(claims: dict, out_dir: Path) -> list[str] | None:
    """Global max of each matched dense/MoE pair, with the dense/MoE ratio."""
    pairs = [p for p in claims.get("matched_pairs", []) if p.get("ratio")]
    if not pairs:
        return None
    _style()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    top = max(max(p["dense_max"], p["moe_max"]) for p in pairs)
    for i, p in enumerate(pairs):
        ax.bar(i - 0.18, p["dense_max"], width=0.34, color="#4477aa", label="dense" if i == 0 else None)
        ax.bar(i + 0.18, p["moe_max"], width=0.34, color="#ee6677", label="MoE" if i == 0 else None)
        ax.text(i, max(p["dense_max"], p["moe_max"]) * 1.5, f"dense / MoE = {p['ratio']:.1f}x", ha="center", fontsize=9)
    ax.set_xticks(range(len(pairs)), [f"{p['dense']}\nvs {p['moe']}" for p in pairs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=top * 12)  # room for the ratio labels below the title
    ax.set_ylabel("global max |activation| (log)")
    ax.set_title("Matched dense vs MoE checkpoints", pad=10)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out_dir, "matched_pairs")


def training_trajectory(claims: dict, out_dir: Path) -> list[str] | None:
    """Global max over training tokens for checkpoint series (e.g. Ling-mini 5T -> 20T)."""
    traj = claims.get("training_trajectory") or {}
    if not traj:
        return None
    _style()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for prefix, t in traj.items():
        xs = [s["tokens_t"] for s in t["stages"]]
        ys = [s["global_max_abs"] for s in t["stages"]]
        ax.plot(xs, ys, marker="o", label=f"{prefix} ({t['direction']})")
    ax.set_xlabel("training tokens (T)")
    ax.set_ylabel("global max |activation|")
    ax.set_title("Maximum activation over training")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "training_trajectory")


def quant_delta_vs_max(rows: pd.DataFrame, out_dir: Path) -> list[str]:
    """ΔNLL per token of each format against the checkpoint's global max |activation| (left) and against the largest
    calibrated linear-layer input max |x|, what a per-tensor static scale is made from (right); log x, one marker per
    checkpoint and format."""
    _style()
    panels = [("global_max", "global max |activation| (log scale)")]
    if "linear_input_max" in rows and rows["linear_input_max"].notna().any():
        panels.append(("linear_input_max", "largest linear-layer input max |x| (log scale)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    markers = {"INT8 static per-tensor": "o", "FP8 static": "s", "INT8 dynamic per-token": "^", "FP8 dynamic per-token": "v",
               "SmoothQuant + W8A8": "D"}
    for ax, (col, label) in zip(axes[0], panels):
        for fmt, g in rows.groupby("format", sort=False):
            ax.scatter(g[col], g["delta_nll"], marker=markers.get(fmt, "x"), s=36, label=fmt,
                       zorder=3 if fmt == "INT8 static per-tensor" else 2)
            if fmt == "INT8 static per-tensor":
                for _, r in g.iterrows():
                    ax.annotate(r["checkpoint"], (r[col], r["delta_nll"]), fontsize=7, xytext=(0, 6), textcoords="offset points",
                                ha="center")
        ax.axhline(0, color="#333", lw=0.8)
        ax.set_xscale("log")
        # a few plain labels whatever the span (log ticks crowd or vanish over less than a decade)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.3g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.margins(x=0.25, y=0.12)
        ax.set_xlabel(label)
        ax.set_ylabel("ΔNLL per token vs unquantized")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("What the maximum does to a quantized model")
    return _save(fig, out_dir, "quant_delta_nll_vs_max")

"""Seaborn figures, each saved as PNG and PDF (atomically), readable in print."""

from __future__ import annotations

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


def global_max_by_family(gt: pd.DataFrame, out_dir: Path) -> list[str]:
    """Global |max| per checkpoint on a log axis, grouped and coloured by family; marker = role."""
    _style()
    df = gt.copy()
    df["family"] = df["family"].fillna("unknown")
    df = df.sort_values(["family", "global_max_abs"])
    df["label"] = df["name"] + np.where(df["source"] == "measured", " (measured)", "")
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
    ncol = min(4, len(fams)) or 1
    nrow = int(np.ceil(len(fams) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False, sharex=True)
    for ax, fam in zip(axes.flat, fams):
        sub = d[d["family"] == fam]
        for name, g in sub.groupby("name"):
            g = g.sort_values("relative_depth")
            ls = "-" if (g["source"] == "measured").all() else "--"
            ax.plot(g["relative_depth"], g["abs"], ls, lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set_title(fam)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(fams):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("relative depth (layer / last layer)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"max |{kind}| per layer (log)")
    fig.suptitle("Layerwise maxima of the residual stream (solid: measured here, dashed: published)")
    fig.tight_layout()
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
    sns.heatmap(piv, ax=ax, cmap="magma", annot=True, fmt=".1f", cbar_kws={"label": "median log10 max|a|"})
    ax.set_xlabel(f"relative depth bin (1/{bins} of the stack)")
    ax.set_ylabel("component")
    ax.set_title("Where peaks sit: component x depth")
    return _save(fig, out_dir, "component_depth_heatmap")


def int8_vs_peak(int8: pd.DataFrame, out_dir: Path) -> list[str]:
    """INT-8 SQNR (dB) against log10 of the checkpoint's peak, per policy."""
    _style()
    d = int8.dropna(subset=["mean_sqnr_db", "reference_global_max_abs"]).copy()
    d = d[np.isfinite(d["mean_sqnr_db"])]
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(d):
        sns.scatterplot(data=d, x="reference_global_max_abs", y="mean_sqnr_db", hue="policy", style="source", s=60, ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("global max |activation| (log scale)")
    ax.set_ylabel("INT-8 SQNR at the peak layer (dB)")
    ax.set_title("INT-8 SQNR at the peak layer against the peak")
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, out_dir, "int8_sqnr_vs_peak")


def saturation_curves(sat: pd.DataFrame, out_dir: Path) -> list[str]:
    """Global max against corpus size (median of category-proportional subsets, 5-95% band)."""
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


def bootstrap_stability(boot: pd.DataFrame, out_dir: Path) -> list[str]:
    """Mean subset maximum relative to the full corpus, with the spread over seeds."""
    _style()
    d = boot.copy()
    d["rel_mean"] = d["mean_max"] / d["full_max"]
    d["rel_lo"] = d["min_max"] / d["full_max"]
    d["rel_hi"] = d["max_max"] / d["full_max"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for i, (name, g) in enumerate(d.groupby("checkpoint")):
        x = np.arange(len(g)) + i * 0.15
        ax.errorbar(x, g["rel_mean"], yerr=[g["rel_mean"] - g["rel_lo"], g["rel_hi"] - g["rel_mean"]], fmt="o", capsize=3, label=name)
        ax.set_xticks(np.arange(len(g)), [f"n={n}" for n in g["subset_size"]])
    ax.axhline(1.0, color="grey", ls=":")
    ax.set_ylabel("subset max / full-corpus max")
    ax.set_title("Bootstrap stability of the global max")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "bootstrap")


def matched_pairs(claims: dict, out_dir: Path) -> list[str] | None:
    """Global max of each matched dense/MoE pair, with the dense/MoE ratio."""
    pairs = [p for p in claims.get("matched_pairs", []) if p.get("ratio")]
    if not pairs:
        return None
    _style()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, p in enumerate(pairs):
        ax.bar(i - 0.18, p["dense_max"], width=0.34, color="#4477aa", label="dense" if i == 0 else None)
        ax.bar(i + 0.18, p["moe_max"], width=0.34, color="#ee6677", label="MoE" if i == 0 else None)
        ax.text(i, p["dense_max"] * 1.3, f"{p['ratio']:.1f}x", ha="center", fontsize=9)
    ax.set_xticks(range(len(pairs)), [f"{p['dense']}\nvs {p['moe']}" for p in pairs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("global max |activation| (log)")
    ax.set_title("Matched dense vs MoE checkpoints")
    ax.legend(fontsize=8)
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

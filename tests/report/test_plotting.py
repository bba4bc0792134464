"""Figures that a reader can read: no "-0.0" cell, labels clear of titles, every INT-8 point labelled (coincident
points drawn once with both names), legends at a readable size. The drawn figure is inspected before it is saved."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from maxact.report import plotting

matplotlib.use("Agg")


@pytest.fixture
def drawn(monkeypatch):
    """Figures as drawn (the save step keeps them instead of writing files)."""
    figs = []
    monkeypatch.setattr(plotting, "_save", lambda fig, out_dir, stem: figs.append(fig) or [f"{stem}.png", f"{stem}.pdf"])
    return figs


def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def test_heatmap_has_no_negative_zero(drawn, tmp_path):
    # log10 of 0.99 is -0.004: "-0.0" when rounded to one decimal without the fix
    lt = pd.DataFrame({"name": ["a", "a", "b"], "source": "measured", "family": "x", "component": ["layer_0_moe_gate"] * 3,
                       "kind": "moe_gate", "layer": [0, 0, 0], "relative_depth": [0.0, 0.0, 0.0], "stat": ["max", "min", "max"],
                       "value": [0.99, -0.5, 0.98]})
    plotting.component_depth_heatmap(lt, tmp_path)
    cells = [t.get_text() for t in _texts(drawn[0])]
    assert "0.0" in cells and "-0.0" not in cells


def test_matched_pair_ratio_labels_stay_below_the_title(drawn, tmp_path):
    claims = {"matched_pairs": [{"moe": "M1", "dense": "D1", "moe_max": 1512.0, "dense_max": 35328.0, "ratio": 35328 / 1512},
                                {"moe": "M2", "dense": "D2", "moe_max": 132.0, "dense_max": 1848.0, "ratio": 14.0}]}
    plotting.matched_pairs(claims, tmp_path)
    fig = drawn[0]
    r = fig.canvas.get_renderer()
    title = fig.axes[0].title.get_window_extent(r)
    ratios = [t for t in _texts(fig) if "dense / MoE" in t.get_text()]
    assert [t.get_text() for t in ratios] == ["dense / MoE = 23.4x", "dense / MoE = 14.0x"]
    ax_box = fig.axes[0].get_window_extent(r)
    for t in ratios:
        box = t.get_window_extent(r)
        assert not box.overlaps(title) and box.y1 <= ax_box.y1, t.get_text()


def test_every_int8_point_is_labelled_and_coincident_points_are_drawn_once(drawn, tmp_path):
    it = pd.DataFrame([
        {"name": "Base-7B", "source": "published", "policy": "max_abs", "reference_global_max_abs": 7968.0, "mean_sqnr_db": 12.0},
        {"name": "Base-7B-Instruct", "source": "published", "policy": "max_abs", "reference_global_max_abs": 7968.0, "mean_sqnr_db": 12.0},
        {"name": "Other-1B", "source": "published", "policy": "max_abs", "reference_global_max_abs": 120.0, "mean_sqnr_db": 29.0},
        {"name": "mine", "source": "measured", "policy": "max_abs", "reference_global_max_abs": 30000.0, "mean_sqnr_db": 17.8},
        {"name": "mine", "source": "measured", "policy": "clip_q0.999", "reference_global_max_abs": 30000.0, "mean_sqnr_db": 0.1},
    ])
    plotting.int8_vs_peak(it, tmp_path)
    fig = drawn[0]
    panel = next(a for a in fig.axes if a.get_title() == "policy max_abs")
    labels = [t.get_text() for t in panel.texts]
    assert sorted(labels) == ["Base-7B, Base-7B-Instruct", "Other-1B", "mine (measured here)"]
    points = sum(len(c.get_offsets()) for c in panel.collections)
    assert points == 3  # the two coincident checkpoints share one marker
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in panel.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_layerwise_legends_are_readable(drawn, tmp_path):
    rows = []
    for fam, names in (("f1", ["a", "b", "c"]), ("f2", ["d"])):
        for n in names:
            for layer in range(4):
                rows.append({"name": n, "source": "published", "family": fam, "component": f"layer_{layer}_hidden",
                             "kind": "hidden", "layer": layer, "relative_depth": layer / 3, "stat": "max", "value": 10.0 ** layer})
    plotting.layerwise_max(pd.DataFrame(rows), tmp_path)
    fig = drawn[0]
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 2
    assert all(t.get_fontsize() >= 9 for lg in legends for t in lg.get_texts())
    width_in = fig.get_size_inches()[0]
    # as shown in the report (at most 1240 px wide), a legend's text is at least 10 px tall
    assert min(t.get_fontsize() for lg in legends for t in lg.get_texts()) / 72 * 1240 / width_in >= 10

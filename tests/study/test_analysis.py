"""Bootstrap and saturation from per-sample extremes: exact subset maxima, known answers."""

import numpy as np
import pandas as pd

from maxact.study.analysis import (
    paper_bootstrap,
    paper_bootstrap_row,
    paper_subset,
    per_sample_global_max,
    plateau_verdict,
    proportional_indices,
    published_bootstrap,
    saturation,
)


def test_per_sample_global_max_uses_only_global_points():
    ps = pd.DataFrame({
        "sample_id": ["a", "b"],
        "layer_0_hidden:max": [1.0, 2.0], "layer_0_hidden:min": [-5.0, -1.0],
        "layer_0_mlp_gate:max": [100.0, 100.0], "layer_0_mlp_gate:min": [-100.0, -100.0],  # not in the global figure
        "final_layernorm:max": [3.0, np.inf], "final_layernorm:min": [-1.0, -np.inf],  # inf = sample absent here
    })
    m = per_sample_global_max(ps)
    assert m.to_dict() == {"a": 5.0, "b": 2.0}


def test_proportional_indices_keep_category_shares():
    cats = np.array(["code"] * 60 + ["math"] * 30 + ["prose"] * 10)
    idx = proportional_indices(cats, 20, np.random.default_rng(0))
    assert len(set(idx)) == 20
    vals, counts = np.unique(cats[idx], return_counts=True)
    assert dict(zip(vals, counts)) == {"code": 12, "math": 6, "prose": 2}


def test_paper_subset_draws_as_the_paper_draws():
    """Categories a (6), b (3), c (1) in corpus order, n = 5: quotas 3, 1.5, 0.5 -> floors 3, 1, 0 and the one left
    over to the largest fraction, a tie of b and c broken by first appearance (b). Then random.Random(seed).sample
    from a, then b (the paper's make_bootstrap_datasets.py order), positions sorted."""
    import random

    cats = ["a", "b", "a", "a", "c", "b", "a", "a", "b", "a"]
    got = paper_subset(cats, 5, seed=7)
    rng = random.Random(7)
    expected = sorted(rng.sample([0, 2, 3, 6, 7, 9], 3) + rng.sample([1, 5, 8], 2))
    assert got == expected


def test_paper_bootstrap_row_reproduces_the_published_table():
    """The paper's findings: Qwen3.5-0.8B at 1,000 samples, repeats 122, 114, 114, 114, 114.5 (its files), printed
    as mean 116, CV 6.9% and 5k reference 122: its CV% is the spread (max - min) / mean."""
    row = paper_bootstrap_row([122.0, 114.0, 114.0, 114.0, 114.5], 122.0)
    assert row["mean"] == 115.7 and round(row["cv_percent_paper"], 1) == 6.9
    assert round(row["cv_percent_std"], 2) == round(100 * float(np.std([122.0, 114, 114, 114, 114.5])) / 115.7, 2)
    assert row["diff_to_full_percent"] == (115.7 - 122.0) / 122.0 * 100


def test_paper_bootstrap_is_the_max_over_each_drawn_subset():
    corpus = pd.DataFrame({"sample_id": [f"s{i}" for i in range(10)], "category": ["a", "b"] * 5})
    m = pd.Series([float(i) for i in range(10)], index=[f"s{i}" for i in range(10)])
    table, drawn = paper_bootstrap(m, corpus, [4], repeats=3, seed=11)
    for r in range(3):
        idx = paper_subset(list(corpus["category"]), 4, 11 + 4 * 100 + r)
        assert table.loc[0, f"r{r}"] == max(m.iloc[i] for i in idx)
    assert table.loc[0, "full_max"] == 9.0 and drawn["note"] is None and table.loc[0, "drawn"] == 4
    # sizes beyond a corpus smaller than the paper's: the same fractions of it, said in the note
    table, drawn = paper_bootstrap(m, corpus, [1000, 2000])
    assert list(table["drawn"]) == [2, 4] and "not more than the size(s) asked" in drawn["note"]
    table, drawn = paper_bootstrap(m, corpus, [6, 1000])  # 6 is a subset of the 10: drawn as asked
    assert list(table["drawn"]) == [6, 2] and "1000 -> 2" in drawn["note"]


def test_published_experiment_a_is_recomputed_from_its_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "resources" / "published" / "max_act_llm"
    files = sorted((root / "supplementary" / "exp_A").glob("*.json.gz"))
    assert len(files) == 40
    t = published_bootstrap(files, {"Qwen3.5-0.8B": 122.0, "gemma-3-4b-it": 245760.0, "Qwen3-30B-A3B": 1512.0,
                                    "Qwen3-32B": 35328.0})
    assert len(t) == 8 and set(t["size"]) == {1000, 2000}
    q = t[(t["checkpoint"] == "Qwen3.5-0.8B") & (t["size"] == 1000)].iloc[0]
    # the paper's findings_and_conclusions.txt: r0..r4 122, 114, 114, 114, 114 (printed rounded), CV 6.9%
    assert [q[f"r{i}"] for i in range(5)] == [122.0, 114.0, 114.0, 114.0, 114.5] and round(q["cv_percent_paper"], 1) == 6.9
    g = t[(t["checkpoint"] == "gemma-3-4b-it") & (t["size"] == 2000)].iloc[0]
    assert round(g["mean"]) == 243712 and round(g["cv_percent_paper"], 1) == 1.7


def test_saturation_and_plateau():
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 1, size=400)
    m[:40] = 50.0  # the max is common: plateau early
    cats = np.array(["x"] * 400)
    s = saturation(m, cats, start=10, draws=50)
    assert s["n_samples"].iloc[-1] == 400 and s["median_max"].iloc[-1] == 50.0
    assert plateau_verdict(s)["plateaued"] is True
    m2 = rng.uniform(0, 1, size=400)
    m2[7] = 50.0  # a single rare peak: half the corpus misses it half of the time
    s2 = saturation(m2, cats, start=10, draws=200, seed=1)
    v = plateau_verdict(s2)
    assert s2["q05"].iloc[-2] < 50.0
    assert v["half_corpus_ratio"] <= 1.0


def test_saturation_per_kind_and_where_it_reached():
    import numpy as np
    import pandas as pd

    from maxact.study.analysis import SATURATION_KINDS, per_sample_kind_max, saturation, saturation_reach

    ps = pd.DataFrame({"sample_id": ["a", "b", "c", "d"],
                       "layer_0_hidden:max": [1.0, 4.0, 2.0, 3.0], "layer_0_hidden:min": [-5.0, 0.0, 0.0, 0.0],
                       "layer_0_attn_output:max": [0.5, 0.1, 7.0, 0.2], "layer_0_attn_output:min": [0.0] * 4,
                       "layer_0_mlp_gate:max": [9.0, 1.0, 1.0, 1.0], "layer_0_mlp_gate:min": [0.0] * 4})
    assert per_sample_kind_max(ps, SATURATION_KINDS["residual"]).tolist() == [5.0, 4.0, 2.0, 3.0]  # |min| counts
    assert per_sample_kind_max(ps, SATURATION_KINDS["attention"]).tolist() == [0.5, 0.1, 7.0, 0.2]
    assert per_sample_kind_max(ps, SATURATION_KINDS["gate"]).tolist() == [9.0, 1.0, 1.0, 1.0]
    assert per_sample_kind_max(ps, SATURATION_KINDS["global"]).tolist() == [5.0, 4.0, 7.0, 3.0]  # gates excluded
    assert np.isnan(per_sample_kind_max(ps, SATURATION_KINDS["final_norm"])).all()
    # a hand-made curve: 95% of 10 first reached at n=40, 99% at n=80, last rise at 80
    sat = pd.DataFrame({"n_samples": [10, 20, 40, 80, 100], "median_max": [5.0, 9.0, 9.6, 9.95, 9.95],
                        "q05": 0.0, "q95": 0.0, "full_max": 10.0})
    m = np.array([1.0, 3.0, 2.0, 10.0, 4.0, np.nan])
    r = saturation_reach(sat, m)
    assert (r["n_95"], r["n_99"], r["last_rise_n"], r["last_record_position"]) == (40, 80, 80, 4)
    # the exact curve's last point is the full maximum
    cats = np.array(["x", "y"] * 50)
    vals = np.arange(100, dtype=float)
    assert saturation(vals, cats, n_points=5, draws=20, start=10)["median_max"].iloc[-1] == 99.0

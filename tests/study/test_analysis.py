"""Bootstrap and saturation from per-sample extremes: exact subset maxima, known answers."""

import numpy as np
import pandas as pd

from maxact.study.analysis import bootstrap, per_sample_global_max, plateau_verdict, proportional_indices, saturation


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


def test_bootstrap_known_answer():
    # One sample holds the maximum; a subset of all samples always contains it.
    m = np.array([1.0, 2.0, 3.0, 10.0])
    cats = np.array(["a", "a", "b", "b"])
    b = bootstrap(m, cats, [4], seeds=3)
    assert b.loc[0, "mean_max"] == 10.0 and b.loc[0, "cv_percent"] == 0.0 and b.loc[0, "diff_to_full_percent"] == 0.0
    b2 = bootstrap(m, cats, [2], seeds=50)
    # With one sample per category, the subset holds sample 3 (max 10) half of the time on average.
    assert 3.0 <= b2.loc[0, "min_max"] and b2.loc[0, "max_max"] == 10.0


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

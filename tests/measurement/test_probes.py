"""Targeted probe sets and the probe-vs-corpus verdict."""

import pytest

from maxact.measurement.probes import make_probes, probe_summary
from maxact.models.checkpoints import byte_tokenizer


def test_probe_sets_shapes():
    tok = byte_tokenizer()
    sets = make_probes(tok, max_len=40, longest_len=100, seed=1)
    assert set(sets) == {"bos_and_short", "delimiters", "repeated_token", "random_ids", "longest", "random_unicode",
                         "delimiter_runs", "code_punctuation", "mixed_scripts"}
    assert sets["bos_and_short"][0] == [tok.bos_token_id]
    assert all(len(s) <= 8 for s in sets["bos_and_short"][3:])
    assert all(len(s) == 40 for s in sets["delimiters"] + sets["repeated_token"] + sets["random_ids"])
    assert all(len(set(s)) == 1 for s in sets["repeated_token"])
    assert len(sets["longest"][0]) == 100
    special = set(tok.all_special_ids)
    assert not any(t in special for s in sets["random_ids"] for t in s)
    assert make_probes(tok, 40, 100, seed=1) == sets and make_probes(tok, 40, 100, seed=2)["random_ids"] != sets["random_ids"]


def test_probe_summary_verdict():
    corpus = {"global_max_activation": -200.0, "global_max_location": "layer_3_hidden (min)"}
    per = {"random_ids": {"global_max_activation": 100.0, "global_max_location": "x", "peak": {"token": "a", "position": 0}},
           "bos_and_short": {"global_max_activation": -500.0, "global_max_location": "y", "peak": {"token": "<bos>", "position": 0}}}
    s = probe_summary(per, corpus)
    assert s["sets"]["random_ids"]["ratio_to_corpus"] == pytest.approx(0.5)
    assert s["sets"]["bos_and_short"]["ratio_to_corpus"] == pytest.approx(2.5)
    assert s["probes_exceed_corpus"] and s["exceeding_sets"] == ["bos_and_short"] and s["largest_set"] == "bos_and_short"
    s2 = probe_summary({"random_ids": per["random_ids"]}, corpus)
    assert not s2["probes_exceed_corpus"] and "no probe set" in s2["verdict"]


def test_outlier_literature_probes_and_peak_tokens():
    from maxact.measurement.probes import peak_tokens

    tok = byte_tokenizer()
    result = {"peak": {"token_id": 65},
              "top_activations": {"layer_0_hidden": [{"value": -9.0, "token_id": 66}, {"value": 3.0, "token_id": 65},
                                                      {"value": 5.0, "token_id": 67}]}}
    assert peak_tokens(result) == [65, 66, 67]  # the peak first, then by |value|, distinct
    sets = make_probes(tok, max_len=40, longest_len=100, seed=1, peak_token_ids=peak_tokens(result))
    assert sets["peak_tokens_repeated"] == [[65] * 40, [66] * 40, [67] * 40]
    assert all(len(s) == 100 for s in sets["delimiter_runs"])  # runs fill the longest length
    assert all(0 < len(s) <= 40 for k in ("random_unicode", "code_punctuation", "mixed_scripts") for s in sets[k])
    text = tok.decode(sets["random_unicode"][0])
    assert any(ord(c) > 0x2000 for c in text)  # high code points, not only ASCII
    assert make_probes(tok, 40, 100, seed=1)["random_unicode"] == make_probes(tok, 40, 100, seed=1)["random_unicode"]
    assert make_probes(tok, 40, 100, seed=2)["mixed_scripts"] != sets["mixed_scripts"]

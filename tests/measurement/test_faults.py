"""Faults: out-of-memory halving, interrupted jobs resuming exactly, determinism, empty corpus."""

import json

import pandas as pd
import pytest
import torch

from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
from maxact.measurement.hooks import Measurement
from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
from maxact.stages.measure import measure_checkpoint

ENTRY = {"name": "tiny", "source": "random", "model_type": "qwen3_moe", "seed": 0,
         "config_overrides": {"hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16, "num_experts": 4,
                              "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "head_dim": 8, "max_position_embeddings": 256}}
TEXTS = [{"id": f"s{i}", "text": ("sample %d " % i) * (3 + 5 * i)} for i in range(9)]
VOLATILE = {"timestamp", "durations", "resumed_from_batch", "oom_splits", "settings"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    prepared = prepare_checkpoint(ENTRY, cache)
    tok = load_tokenizer(prepared)
    df = tokenize_records(TEXTS, tok, 80)
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": "c", "max_seq_len": 80, "add_special_tokens": False}
    return prepared, df, meta


def _stable(result: dict) -> dict:
    r = json.loads(json.dumps(result))
    r["provenance"] = {k: v for k, v in r["provenance"].items() if k not in VOLATILE}
    return r


def _run(setup, out, **settings):
    prepared, df, meta = setup
    return measure_checkpoint(prepared, df, meta, out, settings={"device": "cpu", "batch_size": 4, **settings})


def inject_oom(monkeypatch, max_tokens: int, in_hook: str | None = None) -> None:
    """Fault injection (test-only, nothing of it in the measured path): batches above ``max_tokens`` padded
    tokens raise out-of-memory, before the forward or, with ``in_hook``, from that point's hook mid-forward
    (after earlier points, routers and experts were recorded)."""
    forward, record = Measurement.forward, Measurement._record

    def too_big(meas) -> bool:
        b, t = meas._batch_shape
        return b * t > max_tokens

    def faulty_forward(self, batch):
        if in_hook is None and batch.input_ids.numel() > max_tokens:
            raise torch.OutOfMemoryError(f"injected out of memory: batch of {batch.input_ids.numel()} tokens "
                                         f"(Tried to allocate {batch.input_ids.numel()} tokens)")
        return forward(self, batch)

    def faulty_record(self, name, x, info=None):
        if name == in_hook and too_big(self):
            raise torch.OutOfMemoryError(f"injected out of memory in the hook of {name} (Tried to allocate 1 tokens)")
        return record(self, name, x, info)

    monkeypatch.setattr(Measurement, "forward", faulty_forward)
    if in_hook is not None:
        monkeypatch.setattr(Measurement, "_record", faulty_record)


@pytest.mark.parametrize("in_hook", [None, "layer_1_mlp_output", "final_layernorm"])
def test_oom_halves_the_batch_and_gives_identical_results(setup, tmp_path, monkeypatch, in_hook):
    """Out of memory before a forward, or deep inside one (in_hook: after earlier points, routers and
    experts were recorded): nothing of the failed batch may count, so the halved run equals the plain one."""
    ref = _run(setup, tmp_path / "ref")
    longest = max(setup[1]["n_tokens"])
    inject_oom(monkeypatch, 2 * longest, in_hook)
    got = _run(setup, tmp_path / "oom")
    assert got["provenance"]["oom_splits"], "the batch should have been split"
    # Smaller batches pad differently, so sums may differ in the last float bits; nothing is lost or double counted.
    for comp, st in ref["per_layer_stats"].items():
        for k, v in st.items():
            assert got["per_layer_stats"][comp][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (comp, k)
    assert got["global_max_location"] == ref["global_max_location"]
    assert got["expert_routing"] == ref["expert_routing"]
    a = pd.read_parquet(tmp_path / "ref" / "per_sample_extremes.parquet")
    b = pd.read_parquet(tmp_path / "oom" / "per_sample_extremes.parquet")
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)


def test_oom_at_batch_size_one_says_how_much_was_needed(setup, tmp_path, monkeypatch):
    inject_oom(monkeypatch, 3)
    with pytest.raises(RuntimeError, match=r"batch size 1.*tried to allocate"):
        _run(setup, tmp_path / "x")
    assert not (tmp_path / "x" / "activation_stats.json").exists()


def kill_during_batch(setup, out, monkeypatch, n: int, **settings) -> None:
    """Run with a saved state every batch and kill the job in its ``n``-th forward (as a scheduler would)."""
    real_forward = Measurement.forward
    calls = {"n": 0}

    def dying_forward(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real_forward(self, batch)

    monkeypatch.setattr(Measurement, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out, batch_size=2, checkpoint_every=1, **settings)
    assert (out / "partial_state.pt").exists()
    monkeypatch.setattr(Measurement, "forward", real_forward)


def test_interrupted_run_resumes_to_identical_results(setup, tmp_path, monkeypatch):
    ref = _run(setup, tmp_path / "ref", batch_size=2)
    out = tmp_path / "resumed"
    kill_during_batch(setup, out, monkeypatch, 4)
    assert not (out / "activation_stats.json").exists()
    got = _run(setup, out, batch_size=2, checkpoint_every=1)
    assert got["provenance"]["resumed_from_batch"] == 3
    assert _stable(got) == _stable(ref)
    assert not (out / "partial_state.pt").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "per_sample_extremes.parquet"),
                                  pd.read_parquet(tmp_path / "ref" / "per_sample_extremes.parquet"))


def _linear_inputs(folder):
    from maxact.stages.calibration import LINEAR_INPUTS, load_linear_inputs

    stats, experts, _, not_recorded = load_linear_inputs(folder / LINEAR_INPUTS)
    return {kind: {n: st.host() for n, st in table.items()} for kind, table in (("linear", stats), ("experts", experts))}, not_recorded


def _assert_same_linear_inputs(a, b):
    (ta, na), (tb, nb) = a, b
    assert na == nb and ta.keys() == tb.keys()
    for kind in ta:
        assert ta[kind].keys() == tb[kind].keys() and ta[kind], kind
        for n in ta[kind]:
            for k, v in ta[kind][n].items():
                assert torch.allclose(tb[kind][n][k].double(), v.double(), rtol=1e-5, atol=1e-6), (kind, n, k)


def test_interrupted_calibration_resumes_to_the_same_linear_inputs(setup, tmp_path, monkeypatch):
    """The linear layers' input statistics are part of the saved state: a resumed run counts every batch once."""
    _run(setup, tmp_path / "ref", batch_size=2, linear_inputs=True)
    out = tmp_path / "resumed"
    kill_during_batch(setup, out, monkeypatch, 4, linear_inputs=True)
    got = _run(setup, out, batch_size=2, checkpoint_every=1, linear_inputs=True)
    assert got["provenance"]["resumed_from_batch"] == 3
    _assert_same_linear_inputs(_linear_inputs(out), _linear_inputs(tmp_path / "ref"))


def test_oom_halving_counts_linear_inputs_once(setup, tmp_path, monkeypatch):
    _run(setup, tmp_path / "ref", linear_inputs=True)
    inject_oom(monkeypatch, 2 * max(setup[1]["n_tokens"]), "layer_1_mlp_output")
    got = _run(setup, tmp_path / "oom", linear_inputs=True)
    assert got["provenance"]["oom_splits"]
    _assert_same_linear_inputs(_linear_inputs(tmp_path / "oom"), _linear_inputs(tmp_path / "ref"))


@pytest.mark.parametrize("changed", [{"full_stats": "all"}, {"topk": 7}, {"dtype": "bfloat16"}])
def test_saved_state_of_other_settings_is_not_resumed(setup, tmp_path, monkeypatch, changed):
    """A partial state taken with settings that shape the statistics is ignored: the run starts afresh."""
    out = tmp_path / "r"
    kill_during_batch(setup, out, monkeypatch, 3)
    got = _run(setup, out, batch_size=2, checkpoint_every=1, **changed)
    assert got["provenance"]["resumed_from_batch"] == 0
    ref = _run(setup, tmp_path / "ref", batch_size=2, **changed)
    assert _stable(got) == _stable(ref)


def test_saved_state_of_other_token_ids_is_not_resumed(setup, tmp_path, monkeypatch):
    """Same sample lengths (so the same batches), other token ids (a tokenization setting changed, e.g. a special
    token added in place of the first one): the saved state is not used."""
    prepared, df, meta = setup
    out = tmp_path / "r"
    kill_during_batch(setup, out, monkeypatch, 3)
    other = df.copy()
    other["input_ids"] = [[1] + list(x)[1:] for x in df["input_ids"]]
    got = measure_checkpoint(prepared, other, meta, out, settings={"device": "cpu", "batch_size": 2, "checkpoint_every": 1})
    assert got["provenance"]["resumed_from_batch"] == 0
    ref = measure_checkpoint(prepared, other, meta, tmp_path / "ref", settings={"device": "cpu", "batch_size": 2})
    assert _stable(got) == _stable(ref)


def test_two_runs_are_identical_apart_from_timestamps(setup, tmp_path):
    a = _run(setup, tmp_path / "a")
    b = _run(setup, tmp_path / "b")
    assert _stable(a) == _stable(b)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "per_sample_extremes.parquet"), pd.read_parquet(tmp_path / "b" / "per_sample_extremes.parquet"))


def test_empty_corpus_is_refused(setup, tmp_path):
    prepared, df, meta = setup
    with pytest.raises(ValueError, match="empty"):
        measure_checkpoint(prepared, df.iloc[:0], meta, tmp_path, settings={"device": "cpu"})


def test_max_seq_len_beyond_context_is_refused(setup, tmp_path):
    prepared, df, meta = setup
    long = df.copy()
    long.at[0, "input_ids"] = [3] * 5000
    long.at[0, "n_tokens"] = 5000
    with pytest.raises(ValueError, match="context"):
        measure_checkpoint(prepared, long, meta, tmp_path, settings={"device": "cpu"})


def test_nonfinite_activations_counted_and_run_continues(setup, tmp_path):
    prepared, df, meta = setup

    # A model whose layer-0 MLP emits inf: the run finishes and the counts are reported.
    import maxact.stages.loading as m

    real = m.load_model

    def poisoned(*a, **k):
        model, fam = real(*a, **k)
        model.model.layers[0].mlp.register_forward_hook(lambda mod, i, o: o * torch.tensor(float("inf")))
        return model, fam

    m.load_model = poisoned
    try:
        r = measure_checkpoint(prepared, df, meta, tmp_path, settings={"device": "cpu"})
    finally:
        m.load_model = real
    assert r["nonfinite"], "non-finite activations must be reported"
    st = r["per_layer_stats"]["layer_0_mlp_output"]
    assert st["inf_count"] + st["nan_count"] > 0
    assert r["global_max_activation"] is None or abs(r["global_max_activation"]) != float("inf")

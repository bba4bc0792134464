"""Calibration files read back with their consumers' own readers, values against the float64 reference of
tests/measurement/test_linear_inputs.py (plain hooks, one sample at a time)."""

import json

import pytest
import torch
from test_linear_inputs import measured, reference

from maxact.calibration import exports as X
from tiny_models import save_tiny_checkpoint


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe", "gpt_oss"])
def test_exports_read_back_by_their_consumers(tmp_path, model_type):
    import gguf
    from safetensors import safe_open

    folder = save_tiny_checkpoint(model_type, tmp_path / "model", seed=2)
    model, samples, stats, experts = measured(folder)
    modules, report = X.per_module(stats, experts)
    ref, ref_experts = reference(folder, samples)
    prov = {"model": model_type, "corpus_sha256": "test"}
    out = tmp_path / "cal"
    out.mkdir()

    X.write_act_scales(out / "act_scales.pt", modules, report, prov)
    scales = torch.load(out / "act_scales.pt", weights_only=True)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(scales) == set(ref) and set(scales) <= set(linears)
    for n, t in scales.items():
        assert t.dtype == torch.float32 and t.device.type == "cpu" and t.shape == (linears[n].in_features,)
        assert torch.allclose(t.double(), ref[n]["max_abs"], rtol=1e-5, atol=1e-6), n

    files = X.write_input_scales(out, modules, report, prov)
    with safe_open(str(out / "input_scales_int8.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["provenance"]) == prov
        for n in ref:
            s = f.get_tensor(f"{n}.input_scale")
            assert s.shape == (1,) and float(s) == pytest.approx(float(ref[n]["max_abs"].max()) / 127.5, rel=1e-5)
    with safe_open(str(out / "input_scales_fp8.safetensors"), "pt") as f:
        for n in ref:
            assert float(f.get_tensor(f"{n}.input_scale")) == pytest.approx(float(ref[n]["max_abs"].max()) / 448, rel=1e-5)
    assert len(files) == 3

    X.write_awq(out / "awq_stats.safetensors", modules, report, prov)
    with safe_open(str(out / "awq_stats.safetensors"), "pt") as f:
        for n, r in ref.items():
            assert torch.allclose(f.get_tensor(f"{n}.input_mean_abs").double(), r["sumabs"] / r["count"], rtol=1e-4), n

    fam = {"llama": "llama", "qwen3_moe": "qwen3_moe", "gpt_oss": "gpt_oss"}[model_type]
    held = X.write_imatrix(out / "imatrix.gguf", modules, report, prov, fam, model.config.num_hidden_layers,
                           ["test"], chunk_count=len(samples), chunk_size=max(map(len, samples)))
    rd = gguf.GGUFReader(str(out / "imatrix.gguf"))
    kv = {f.name: f for f in rd.fields.values()}
    assert bytes(kv["general.type"].parts[-1]).decode() == "imatrix"
    assert int(kv["imatrix.chunk_count"].parts[-1][0]) == len(samples)
    assert kv["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    tensors = {t.name: t for t in rd.tensors}
    for hf, gname in held["names"].items():
        s2, cnt = tensors[f"{gname}.in_sum2"], tensors[f"{gname}.counts"]
        assert s2.tensor_type == gguf.GGMLQuantizationType.F32 and cnt.tensor_type == gguf.GGMLQuantizationType.F32
        if hf in ref:
            assert list(s2.shape) == [ref[hf]["max_abs"].numel(), 1]  # GGUF dims (n_in, n_mat)
            assert torch.allclose(torch.from_numpy(s2.data.copy()).reshape(-1).double(), ref[hf]["sumsq"], rtol=1e-4)
            assert float(cnt.data.reshape(-1)[0]) == ref[hf]["count"]
        else:  # a fused expert weight (gate and up halves share one input; down its own): one row per expert
            module, weight = hf.rsplit(".", 1)
            base = f"{module}.{'down_proj' if weight == 'down_proj' else 'gate_up_proj'}"
            n_exp = s2.shape[1]
            data = torch.from_numpy(s2.data.copy()).reshape(n_exp, -1).double()
            for e in range(n_exp):
                r = ref_experts[(base, e)]
                assert float(cnt.data.reshape(-1)[e]) == r["count"]
                assert torch.allclose(data[e], torch.as_tensor(r["sumsq"], dtype=torch.float64), rtol=1e-4)
    assert held["names"], "no weight got a GGUF name"
    if ref_experts:  # every expert weight llama.cpp quantizes has its entry: gate, up and down
        assert {g.split(".")[2] for g in held["names"].values() if "_exps" in g} >= {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}


def test_uncovered_expert_is_listed_never_zero_unless_filled():
    from maxact.measurement.linear_inputs import ChannelStats

    st = ChannelStats.zeros((3, 4), "cpu")
    st.max_abs[:] = torch.tensor([[1.0, 2, 3, 4], [0, 0, 0, 0], [4.0, 3, 2, 1]])
    st.count[:] = torch.tensor([5, 0, 2])
    st.sumsq[:] = 1.0
    st.sumabs[:] = 1.0
    key = "model.layers.0.mlp.experts.gate_up_proj"
    modules, report = X.per_module({}, {key: st})
    assert report["uncovered"] == [f"{key}.1"] and f"{key}.1" not in modules
    assert modules[f"{key}.0"]["fused"] == key and modules[f"{key}.2"]["expert"] == 2
    modules, report = X.per_module({}, {key: st}, fill="max_over_layer")
    assert report["uncovered"] == [] and f"{key}.1" in report["filled"]
    assert modules[f"{key}.1"]["max_abs"].tolist() == [4.0, 3.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="fill policy"):
        X.per_module({}, {}, fill="zeros")


def test_cli_writes_the_four_files_with_provenance(tmp_path, capsys):
    import gguf
    from safetensors import safe_open

    from maxact.cli import main

    folder = save_tiny_checkpoint("qwen3_moe", tmp_path / "model", seed=1)
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(["hello world", "abc d", "x = 1"])))
    out = tmp_path / "out"
    rc = main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(out), "--device", "cpu",
               "--calibration", "--export", "smoothquant,imatrix,input_scales,awq"])
    assert rc == 0
    stats = json.loads((out / "activation_stats.json").read_text())
    sha = stats["provenance"]["corpus_sha256"]
    for f in ("act_scales.pt", "imatrix.gguf", "input_scales_int8.safetensors", "awq_stats.safetensors"):
        assert (out / f).exists()
    meta = json.loads((out / "act_scales.pt.json").read_text())
    assert json.loads(meta["provenance"])["corpus_sha256"] == sha and json.loads(meta["provenance"])["tokens"] == stats["num_tokens"]
    with safe_open(str(out / "awq_stats.safetensors"), "pt") as f:
        prov = json.loads(f.metadata()["provenance"])
        assert prov["corpus_sha256"] == sha and prov["fill_uncovered"] == "none" and prov["model_id"]
    rd = gguf.GGUFReader(str(out / "imatrix.gguf"))
    assert json.loads(bytes(rd.fields["maxact.provenance"].parts[-1]).decode())["corpus_sha256"] == sha
    cal = json.loads((out / "calibration.json").read_text())
    assert stats["calibration"]["uncovered"] == cal["uncovered"]  # listed in the result too
    assert main(["measure", "--model", str(folder), "--texts", str(texts), "--out", str(tmp_path / "bad"), "--device", "cpu",
                 "--export", "smoothquant,gptq"]) == 2
    assert "gptq" in capsys.readouterr().err


def test_dead_channel_gets_the_smallest_scale_not_zero_and_its_module_stays():
    from maxact.measurement.linear_inputs import ChannelStats

    st = ChannelStats.zeros((4,), "cpu")
    st.max_abs[:] = torch.tensor([2.0, 0.0, 0.5, 3.0])  # channel 1 zero on every token (a zero norm weight)
    st.sumabs[:] = torch.tensor([4.0, 0.0, 1.0, 6.0])
    st.count.fill_(2)
    modules, report = X.per_module({"model.layers.0.mlp.gate_proj": st}, {})
    m = modules["model.layers.0.mlp.gate_proj"]
    assert report["uncovered"] == [] and report["dead_channels"] == {"model.layers.0.mlp.gate_proj": 1}
    assert m["max_abs"].tolist() == [2.0, 0.5, 0.5, 3.0]
    assert m["mean_abs"].tolist() == [2.0, 0.5, 0.5, 3.0]

"""Measure one checkpoint end to end: load, batch, hook, summarise, write result files.

The Snakemake rule and ``maxact measure`` both call :func:`measure_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from . import provenance
from .checkpoints import load_model, load_tokenizer
from .engine import Measurement, assemble_result, check_dtype, kind_of, make_batches, per_sample_table, resolve_dtype, run_batches
from .io import atomic_save, write_json
from .kernels_used import cpu_incompatible, kernels_used
from .tokenization import tokenizer_fingerprint

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)

DEFAULT_SETTINGS = {
    "device": "auto",
    "dtype": "auto",
    "batch_size": 8,
    "max_batch_tokens": 65536,
    "max_samples": None,
    "attn_implementation": "auto",  # the family's fastest exact one (architectures.resolve_attention)
    "force_dtype": False,
    "checkpoint_every": 0,
    "device_map": None,
    "topk": 100,
    "full_stats": "paper",
    "simulate_oom_tokens": None,  # tests: pretend batches above this many tokens run out of memory
    "simulate_oom_in_hook": None,  # tests: ... and do so mid-forward, in this point's hook
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is visible; use device: cpu or auto")
    return torch.device(name)


PAPER_FULL_KINDS = ("embedding", "hidden", "attn", "mlp", "final_norm")


def statistics_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation computed the statistics (cuda / triton / torch), with any fallback reason."""
    from . import cuda_kernels, kernels
    from . import stats as stats_mod

    if not stats_mod._TRITON or device.type != "cuda":
        return "torch"
    used = kernels.backend_for(torch.empty(1, 8, dtype=dtype, device=device))
    failed = cuda_kernels._STATE["failed"]
    return f"{used} (CUDA kernel disabled: {failed})" if failed else used


def full_kinds(mode: str):
    """Points with quantiles and the Sun criterion: the published files' set, or every point (None)."""
    if mode == "all":
        return None
    if mode == "paper":
        return PAPER_FULL_KINDS
    raise ValueError(f"measure.full_stats must be 'paper' or 'all', not {mode!r}")


def _device_map(s: dict, device: torch.device):
    """One GPU holds the model unless the checkpoint asks for more (gpus: N): then split it over them."""
    if s.get("device_map"):
        return s["device_map"]
    if device.type == "cpu":
        return None
    if int(s.get("gpus") or 1) > 1 and torch.cuda.device_count() > 1:
        return "auto"
    return {"": device.index or 0}


def load_for_measurement(prepared: dict, dtype, s: dict, device: torch.device):
    """The model on ``device`` with the attention implementation settled for its family (one load path for
    measure, INT-8 and probes)."""
    model, fam = load_model(prepared, dtype, device_map=_device_map(s, device), attn_implementation=s.get("attn_implementation"),
                            device=device)
    if device.type == "cpu":
        bound = cpu_incompatible(model)
        if bound:
            pkgs = sorted({impl.split(".")[0] for impl in bound.values()})
            raise RuntimeError(
                f"checkpoint {prepared['name']!r} cannot be measured on the CPU here: transformers bound "
                f"{', '.join(f'{k} -> {v}' for k, v in sorted(bound.items()))} when it imported the model code (GPU kernels "
                f"of {', '.join(pkgs)}, whatever the device). Measure on CUDA, or run the CPU measurement in an "
                f"environment without {', '.join(pkgs)} (e.g. pip uninstall fla-core)."
            )
        model.to(device)
    return model, fam


def layer_table(name: str, per_layer: dict) -> pd.DataFrame:
    rows = []
    for comp, st in per_layer.items():
        layer = int(comp.split("_")[1]) if comp.startswith("layer_") else None
        for stat, v in st.items():
            if isinstance(v, (int, float)) and v is not None:
                rows.append({"checkpoint": name, "component": comp, "kind": kind_of(comp), "layer": layer, "stat": stat, "value": float(v)})
    return pd.DataFrame(rows, columns=["checkpoint", "component", "kind", "layer", "stat", "value"])


def measure_checkpoint(
    prepared: dict,
    tokens: pd.DataFrame,
    token_meta: dict,
    out_dir: str | Path,
    settings: dict | None = None,
    meta: dict | None = None,
    corpus_sha256: str | None = None,
) -> dict:
    s = {**DEFAULT_SETTINGS, **(settings or {})}
    out_dir = Path(out_dir)
    device = resolve_device(s["device"])
    dtype = resolve_dtype(s["dtype"], device)
    if s.get("max_samples"):
        tokens = tokens.iloc[: int(s["max_samples"])]
    if len(tokens) == 0:
        raise ValueError("the tokenized corpus is empty: nothing to measure. Check corpus.max_samples and the corpus source.")
    # Checked from the prepared manifest, before the model is loaded or any GPU work starts.
    ctx = prepared.get("max_position_embeddings")
    too_long = int(tokens["n_tokens"].max())
    if ctx and too_long > ctx:
        raise ValueError(
            f"checkpoint {prepared['name']!r}: a sample has {too_long} tokens but the model's context is {ctx}; "
            f"lower tokenization.max_seq_len to at most {ctx}."
        )
    t_load = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, fam = load_for_measurement(prepared, dtype, s, device)
    check_dtype(fam, dtype, force=bool(s.get("force_dtype")))
    tok = load_tokenizer(prepared)
    fp = tokenizer_fingerprint(tok)
    if token_meta.get("tokenizer_sha256") and token_meta["tokenizer_sha256"] != fp:
        raise ValueError(
            f"checkpoint {prepared['name']!r}: its tokenizer ({fp[:12]}) differs from the one that tokenized its group "
            f"({token_meta['tokenizer_sha256'][:12]}); give it its own tokenizer_group in the config."
        )
    load_seconds = time.perf_counter() - t_load

    samples = [list(map(int, x)) for x in tokens["input_ids"]]
    sample_ids = list(tokens["sample_id"])
    lengths = [len(x) for x in samples]
    batches = make_batches(lengths, int(s["batch_size"]), s.get("max_batch_tokens"))
    meas = Measurement(model, len(samples), device, topk=int(s.get("topk") or 100), full_kinds=full_kinds(s.get("full_stats", "paper")))
    meas.simulate_oom_tokens = s.get("simulate_oom_tokens")
    meas.simulate_oom_in_hook = s.get("simulate_oom_in_hook")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    state_path = out_dir / "partial_state.pt"
    start = 0
    every = int(s.get("checkpoint_every") or 0)
    if every and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        if saved.get("batches") == batches:
            meas.restore(saved["state"])
            start = int(saved["next_batch"])
            log.info("resuming %s from batch %d of %d", prepared["name"], start, len(batches))

    def save_state(bi: int) -> None:
        if every and (bi + 1) % every == 0 and bi + 1 < len(batches):
            state = {"batches": batches, "next_batch": bi + 1, "state": meas.state()}
            atomic_save(state_path, lambda tmp: torch.save(state, tmp))

    from tqdm.auto import tqdm

    total = sum(lengths[i] for b in batches[start:] for i in b)
    with tqdm(total=total, unit="tok", desc=prepared["name"], mininterval=5.0) as bar:
        run = run_batches(meas, samples, batches, pad_id, progress=bar.update, start_batch=start, on_batch_done=save_state)
    if device.type == "cuda":
        torch.cuda.synchronize()
    host = meas.host_state()  # every statistic to the host once, for both tables
    result_core = assemble_result(meas, sample_ids, decode=lambda i: tok.decode([i]), host=host)
    per_sample = per_sample_table(meas, sample_ids, host=host)
    meas.remove()

    text_cfg = getattr(model.config, "text_config", None) or model.config
    kernels = kernels_used(model)
    result = {
        "checkpoint": prepared["name"],
        "model_name": prepared.get("model_id") or prepared["name"],
        "model_type": model.config.model_type,
        "family": fam.name,
        "num_hidden_layers": text_cfg.num_hidden_layers,
        "hidden_size": text_cfg.hidden_size,
        "num_samples": len(samples),
        "num_tokens": int(sum(lengths)),
        "max_seq_len": token_meta.get("max_seq_len"),
        **result_core,
        "meta": meta or {},
        "provenance": {
            "model_id": prepared.get("model_id"),
            "revision": prepared.get("revision"),
            "resolved_revision": prepared.get("resolved_revision"),
            "source": prepared.get("source"),
            "gguf": prepared.get("gguf"),
            "weights_note": prepared.get("weights_note"),
            "trust_remote_code": prepared.get("trust_remote_code", False),
            "corpus_sha256": corpus_sha256 or token_meta.get("corpus_sha256"),
            "tokenizer_sha256": fp,
            "tokenization": {
                "add_special_tokens": token_meta.get("add_special_tokens"),
                "split_special_tokens": True,
                "max_seq_len": token_meta.get("max_seq_len"),
                "policy": "none added (paper)" if not token_meta.get("add_special_tokens") else "model's own convention",
            },
            "settings": {**{k: (str(v) if k == "device_map" else v) for k, v in s.items()}, "device": str(device), "dtype": str(dtype).replace("torch.", "")},
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "statistics_kernel": statistics_kernel(device, dtype),
            "attn_implementation": kernels["attention"],
            "kernels": kernels,
            "environment": provenance.environment(),
            "timestamp": provenance.timestamp(),
            "durations": {"load_seconds": round(load_seconds, 3), "measure_seconds": round(run["seconds"], 3)},
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
            "oom_splits": run["oom_splits"],
            "resumed_from_batch": start,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(out_dir / "layer_stats.parquet", lambda tmp: layer_table(prepared["name"], result["per_layer_stats"]).to_parquet(tmp, index=False))
    atomic_save(out_dir / "per_sample_extremes.parquet", lambda tmp: per_sample.to_parquet(tmp, index=False))
    write_json(out_dir / "activation_stats.json", result)
    if state_path.exists():
        os.unlink(state_path)
    return result


def int8_checkpoint(prepared: dict, tokens: pd.DataFrame, result: dict, settings: dict | None = None,
                    n_calib: int = 128, n_eval: int = 256, max_tokens: int = 4096, seed: int = 0) -> dict:
    """The paper's INT-8 check on the hidden state at the checkpoint's peak layer (see maxact.quant)."""
    from .architectures import layer_points, resolve_backbone
    from .quant import run_int8_check, split_samples

    s = {**DEFAULT_SETTINGS, **(settings or {})}
    device = resolve_device(s["device"])
    dtype = resolve_dtype(s["dtype"], device)
    model, fam = load_for_measurement(prepared, dtype, s, device)
    backbone = resolve_backbone(model, fam)
    layers = layer_points(backbone, fam)
    peak = result.get("peak") or {}
    comp = peak.get("component", f"layer_{len(layers) - 1}_hidden")
    layer = peak.get("layer")
    if comp == "final_layernorm":
        module, point = getattr(backbone, fam.final_norm), "final_layernorm"
    elif layer is None:  # embedding peak: the residual stream entering layer 0
        module, point = layers[0].layer, "layer_0_hidden"
    else:
        module, point = layers[layer].layer, f"layer_{layer}_hidden"
    samples = [list(map(int, x))[:max_tokens] for x in tokens["input_ids"]]
    calib, evals = split_samples(len(samples), n_calib, n_eval, seed)
    captured: list = []
    h = module.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, (tuple, list)) else o))
    in_dev = backbone.get_input_embeddings().weight.device

    @torch.no_grad()
    def capture(indices):
        for i in indices:  # one sample at a time: no padding to exclude
            captured.clear()
            ids = torch.tensor([samples[i]], device=in_dev)
            backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            yield captured[0][0].float()

    hidden = getattr(getattr(model.config, "text_config", None) or model.config, "hidden_size")
    total = sum(len(samples[i]) for i in calib) * hidden
    out = run_int8_check(capture, calib, evals, total)
    h.remove()
    out.update(
        checkpoint=prepared["name"],
        model_name=result.get("model_name"),
        point=point,
        reference_global_max_abs=abs(result["global_max_activation"]) if result.get("global_max_activation") is not None else None,
        max_tokens=max_tokens,
        seed=seed,
        provenance={
            "model_id": prepared.get("model_id"),
            "corpus_sha256": result.get("provenance", {}).get("corpus_sha256"),
            "settings": {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n_calib": n_calib, "n_eval": n_eval},
            "kernels": kernels_used(model),
            "environment": provenance.environment(),
            "timestamp": provenance.timestamp(),
        },
    )
    return out


def probe_checkpoint(prepared: dict, corpus_result: dict, settings: dict | None = None, max_len: int = 512,
                     longest_len: int | None = None, seed: int = 0) -> dict:
    """Measure the targeted probe sets (maxact.probes) with the same hooks, each set apart."""
    from .probes import make_probes, probe_summary

    s = {**DEFAULT_SETTINGS, **(settings or {})}
    device = resolve_device(s["device"])
    dtype = resolve_dtype(s["dtype"], device)
    ctx = prepared.get("max_position_embeddings") or max_len
    longest = min(int(longest_len or ctx), int(ctx))
    model, fam = load_for_measurement(prepared, dtype, s, device)
    check_dtype(fam, dtype, force=bool(s.get("force_dtype")))
    tok = load_tokenizer(prepared)
    sets = make_probes(tok, min(max_len, ctx), longest, seed=seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    per_set = {}
    for name, seqs in sets.items():
        meas = Measurement(model, len(seqs), device, topk=10)
        lengths = [len(x) for x in seqs]
        run_batches(meas, seqs, make_batches(lengths, int(s["batch_size"]), s.get("max_batch_tokens")), pad_id)
        r = assemble_result(meas, [f"{name}-{i}" for i in range(len(seqs))], decode=lambda i: tok.decode([i]))
        meas.remove()
        per_set[name] = {k: r[k] for k in ("global_max_activation", "global_max_location", "peak")}
        per_set[name].update(num_samples=len(seqs), num_tokens=sum(lengths))
    kernels = kernels_used(model)
    out = probe_summary(per_set, corpus_result)
    out.update(
        checkpoint=prepared["name"],
        settings={"max_len": max_len, "longest_len": longest, "seed": seed, "device": str(device), "dtype": str(dtype).replace("torch.", "")},
        provenance={"model_id": prepared.get("model_id"), "attn_implementation": kernels["attention"],
                    "kernels": kernels, "environment": provenance.environment(), "timestamp": provenance.timestamp()},
    )
    return out

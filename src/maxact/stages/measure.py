"""Stage ``measure``: one checkpoint end to end (load, batch, hook, summarise, write its result files).

The ``measure`` rule and ``maxact measure`` both call :func:`measure_checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from maxact import provenance
from maxact.corpus.tokenization import tokenizer_fingerprint, truncation_message, truncation_summary
from maxact.errors import InputError
from maxact.io import atomic_save, write_json
from maxact.measurement import kernels as statistics_kernels
from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.compiled import inductor_options, resolve_compile, use_cache_dir
from maxact.measurement.hooks import Measurement
from maxact.measurement.packing import resolve_packing
from maxact.measurement.resume import ResumeFile
from maxact.measurement.settings import MeasureSettings, resolve_device
from maxact.measurement.shards import Shard, plan_digest, save_state, shard_range
from maxact.measurement.summary import assemble_result, per_sample_table
from maxact.models import packed_attention
from maxact.models.checkpoints import load_tokenizer
from maxact.models.kernels_used import TRITON_DEFAULT, kernels_used
from maxact.stages.loading import load

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)


def _tokens_digest(sample_ids, samples) -> str:
    """sha256 of the measured samples' ids and token ids, in order."""
    h = hashlib.sha256()
    for sid, ids in zip(sample_ids, samples):
        h.update(str(sid).encode() + b"\0")
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return h.hexdigest()


def measure_checkpoint(
    prepared: dict,
    tokens: pd.DataFrame,
    token_meta: dict,
    out_dir: str | Path,
    settings: MeasureSettings | dict | None = None,
    meta: dict | None = None,
    corpus_sha256: str | None = None,
    write_exports: bool = False,
    resume_dir: str | Path | None = None,
    shard: Shard | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Measure one checkpoint into ``out_dir``. With linear inputs recorded (``measure.linear_inputs`` or
    ``exports``) their statistics go to ``linear_inputs.safetensors``; ``write_exports`` also writes the
    calibration files there (the CLI; the workflow's ``calibration`` rule writes them from the saved file).
    The partial state for resuming (``checkpoint_every``) is kept in ``resume_dir`` (default ``out_dir``).

    With ``shard`` (K of N) only that slice of the batch plan is measured (:mod:`maxact.measurement.shards`): the
    folder holds a valid result over that part of the corpus and the shard's mergeable state (``maxact merge``).
    ``cache_dir``: the study's cache folder, where compiled kernels are kept (``measure.compile``)."""
    s = MeasureSettings.of(settings)
    out_dir = Path(out_dir)
    corpus_sha256 = corpus_sha256 or token_meta.get("corpus_sha256")
    device = resolve_device(s.device)
    if s.max_samples:
        tokens = tokens.iloc[: int(s.max_samples)]
    if len(tokens) == 0:
        raise InputError("the tokenized corpus is empty: nothing to measure. Check corpus.max_samples and the corpus source.")
    # Samples cut to max_seq_len are counted and reported, never silent (the measured samples only).
    truncation = truncation_summary(tokens, token_meta.get("max_seq_len"))
    if msg := truncation_message(truncation, f"checkpoint {prepared['name']!r}"):
        log.warning(msg)
    # Checked from the prepared manifest, before the model is loaded or any GPU work starts.
    ctx = prepared.get("max_position_embeddings")
    too_long = int(tokens["n_tokens"].max())
    if ctx and too_long > ctx:
        raise InputError(
            f"checkpoint {prepared['name']!r}: a sample has {too_long} tokens but the model's context is {ctx}; "
            f"lower tokenization.max_seq_len (--max-seq-len on the CLI) to at most {ctx}."
        )
    if write_exports and "imatrix" in s.exports and prepared.get("model_type"):
        from maxact.calibration.exports import GGUF_ARCH
        from maxact.models.registry import family_for

        fam_name = family_for(SimpleNamespace(model_type=prepared["model_type"])).name
        if fam_name not in GGUF_ARCH:  # known before any work: not after a whole measurement
            raise InputError(f"checkpoint {prepared['name']!r}: llama.cpp has no GGUF architecture for family {fam_name!r} "
                             f"(imatrix knows {', '.join(sorted(GGUF_ARCH))}): leave imatrix out of measure.exports "
                             "(--export) for it")
    t_started = provenance.timestamp()
    t_load = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loaded = load(prepared, s, device=device)
    model, fam, dtype = loaded.model, loaded.family, loaded.dtype
    tok = load_tokenizer(prepared)
    fp = tokenizer_fingerprint(tok)
    if token_meta.get("tokenizer_sha256") and token_meta["tokenizer_sha256"] != fp:
        raise InputError(
            f"checkpoint {prepared['name']!r}: its tokenizer ({fp[:12]}) differs from the one that tokenized its group "
            f"({token_meta['tokenizer_sha256'][:12]}); give it its own tokenizer_group in the config."
        )
    load_seconds = time.perf_counter() - t_load

    samples = [list(map(int, x)) for x in tokens["input_ids"]]
    sample_ids = list(tokens["sample_id"])
    lengths = [len(x) for x in samples]
    packing, not_packed_why = resolve_packing(fam, s.packing, device.type, dtype, model, s.attn_implementation)
    if not_packed_why and s.packing == "auto":
        log.info("%s: padded batches (%s)", prepared["name"], not_packed_why)
    batches = make_batches(lengths, int(s.batch_size), s.max_batch_tokens, packed=packing != "padded")
    # A sample longer than the token cap still runs, alone in its batch: said, and recorded.
    over_cap = sum(1 for b in batches if s.max_batch_tokens and len(b) == 1 and lengths[b[0]] > s.max_batch_tokens)
    if over_cap:
        log.warning("%s: %d sample(s) are longer than max_batch_tokens %d and run alone in a batch over that cap",
                    prepared["name"], over_cap, s.max_batch_tokens)
    plan = batches
    first, last = shard_range(batches, lengths, shard) if shard else (0, len(batches))
    if shard and first == last:
        log.warning("shard %s has no batches: the batch plan of checkpoint %r has %d, fewer than the %d shards (a valid, "
                    "empty part; use at most %d shards)", shard.label, prepared.get("name"), len(batches), shard.count,
                    len(batches))
    batches = batches[first:last]
    split_over = len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    compiled, not_compiled_why = resolve_compile(fam, s.compile, device.type, split_over)
    if not_compiled_why and s.compile == "auto":
        log.info("%s: eager forward (%s)", prepared["name"], not_compiled_why)
    if compiled and cache_dir is not None:
        use_cache_dir(cache_dir)
    meas = Measurement(model, len(samples), device, topk=int(s.topk), full_kinds=s.full_kinds(), packing=packing,
                       linear_inputs=s.records_linear_inputs, compile=compiled)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    text_cfg = getattr(model.config, "text_config", None) or model.config
    # Everything that shapes the statistics: a saved state taken with another value is not resumed.
    identity = {"checkpoint": prepared["name"], "model_id": prepared.get("model_id"), "revision": prepared.get("revision"),
                "source": prepared.get("source"), "random_seed": prepared.get("random_seed"), "gguf": prepared.get("gguf"),
                "corpus_sha256": corpus_sha256, "tokenizer_sha256": fp,
                "dtype": dtype, "device_type": device.type, "attn_implementation": s.attn_implementation,
                "full_stats": s.full_stats, "topk": s.topk, "packing": packing,
                # compiled: how inductor rounds (a state saved by a compiled run that kept float32 between fused ops
                # is not resumed with eager-like rounding)
                "compiled": {"options": inductor_options(dtype)} if compiled else False,
                # the token ids themselves (a tokenization setting changes them, and with them every statistic)
                "tokens_sha256": _tokens_digest(sample_ids, samples), "max_seq_len": token_meta.get("max_seq_len"),
                "add_special_tokens": token_meta.get("add_special_tokens"),
                # v2: the state holds the linear inputs (older files lack them); the experts implementation decides
                # whether the fused experts' down projections are recorded
                "linear_inputs": f"v2:{getattr(text_cfg, '_experts_implementation', None)}" if s.records_linear_inputs else False,
                "plan_sha256": plan_digest(plan),
                # fla's kernels in IEEE float32 (kernels_used.float32_triton_dots): only where set, so that states
                # saved under Triton's default (every bf16 run, float32 before maxact set it) keep their identity
                **({"triton_float32_dot": loaded.triton_float32_dot}
                   if loaded.triton_float32_dot not in (None, TRITON_DEFAULT) else {})}
    resume = ResumeFile(resume_dir or out_dir, s.checkpoint_every, batches, {**identity, "shard": shard.label if shard else None})
    start = resume.restore(meas, device)

    from tqdm.auto import tqdm

    total = sum(lengths[i] for b in batches[start:] for i in b)
    try:
        with tqdm(total=total, unit="tok", desc=prepared["name"], mininterval=5.0) as bar:
            run = run_batches(meas, samples, batches, pad_id, progress=bar.update, start_batch=start,
                              on_batch_done=lambda bi: resume.after_batch(meas, bi))
        if device.type == "cuda":
            torch.cuda.synchronize()
        host = meas.host_state()  # every statistic to the host once, for both tables
        result_core = assemble_result(meas, sample_ids, decode=lambda i: tok.decode([i]), host=host)
        per_sample = per_sample_table(meas, sample_ids, host=host)
        kernels = kernels_used(model)  # while the hooks are on: the attention the batches ran with
        compile_facts = meas.compile_report()
        li = meas.linear_inputs
        linear = (li.stats, li.experts, li.not_recorded) if li is not None else None
        state = meas.state() if shard else None
    finally:
        meas.remove()  # hooks off, the model's own attention (and conv) back, also after an error
    measured = sorted(i for b in batches for i in b)  # the samples of this run (all of them unless sharded)
    if shard:
        per_sample = per_sample.iloc[measured].reset_index(drop=True)

    result = {
        "checkpoint": prepared["name"],
        "model_name": prepared.get("model_id") or prepared["name"],
        "model_type": model.config.model_type,
        "family": fam.name,
        "num_hidden_layers": text_cfg.num_hidden_layers,
        "hidden_size": text_cfg.hidden_size,
        "num_samples": len(measured),
        "num_tokens": int(sum(lengths[i] for i in measured)),
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
            "corpus_sha256": corpus_sha256,
            "tokenizer_sha256": fp,
            "tokenization": {
                "add_special_tokens": token_meta.get("add_special_tokens"),
                "split_special_tokens": True,
                "max_seq_len": token_meta.get("max_seq_len"),
                "truncate": token_meta.get("truncate", True),
                "truncation": {k: truncation[k] for k in ("samples", "tokens_dropped", "max_seq_len", "sample_ids")},
                "policy": "none added (paper)" if not token_meta.get("add_special_tokens") else "model's own convention",
            },
            # The settings in effect: linear inputs are recorded when a calibration file needs them.
            "settings": {**{k: (str(v) if k == "device_map" else v) for k, v in s.as_dict().items()}, "device": str(device),
                         "dtype": str(dtype).replace("torch.", ""), "linear_inputs": s.records_linear_inputs},
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "statistics_kernel": statistics_kernels.describe(device, dtype),
            "attn_implementation": kernels["attention"],
            "kernels": kernels,
            "packing": {"setting": s.packing, "method": packing, "why_padded": not_packed_why or None,
                        **({"attention": packed_attention.describe(fam.packing.kernel)} if packing == "varlen" else {}),
                        "batches": len(plan), "batches_over_token_cap": over_cap},
            "compile": {"setting": s.compile, "why_eager": not_compiled_why or None, **compile_facts,
                        "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR") if compiled else None},
            "environment": provenance.environment(),
            "timestamp": provenance.timestamp(),
            "durations": {"load_seconds": round(load_seconds, 3), "measure_seconds": round(run["seconds"], 3)},
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
            "oom_splits": run["oom_splits"],
            "resumed_from_batch": start,
        },
    }
    if shard:
        shard_facts = {"index": shard.index, "count": shard.count, "batches": [first, last], "n_batches": len(batches),
                       "samples": len(measured), "tokens": result["num_tokens"], "device_name": result["provenance"]["device_name"],
                       "started": t_started, "finished": provenance.timestamp(),
                       "durations": result["provenance"]["durations"], "plan_sha256": identity["plan_sha256"],
                       "resumed_from_batch": start}
        result["provenance"]["shard"] = shard_facts
        # What the merge needs: the state, and everything of the result that is not a statistic.
        save_state(out_dir, state, {"identity": {k: str(v) for k, v in sorted(identity.items())}, "shard": shard_facts,
                                    "n_samples": len(samples), "sample_ids": [str(x) for x in sample_ids], "topk": int(s.topk),
                                    "prepared": prepared, "not_recorded": linear[2] if linear is not None else {},
                                    "result": {k: v for k, v in result.items() if k not in result_core}})
    write_results(out_dir, result, per_sample, linear, s, write_exports)
    resume.remove()
    return result


def write_results(out_dir: Path, result: dict, per_sample: pd.DataFrame, linear, s: MeasureSettings,
                  write_exports: bool) -> None:
    """The result files of a measurement (or a merge of shards): linear inputs and calibration files where recorded,
    the per-sample extremes and ``activation_stats.json`` (last, so that it marks a complete folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if linear is not None:
        from maxact.calibration.exports import per_module
        from maxact.stages.calibration import LINEAR_INPUTS, save_linear_inputs, write_calibration

        stats, experts, not_recorded = linear
        save_linear_inputs(out_dir / LINEAR_INPUTS, stats, experts, result["provenance"], not_recorded)
        if write_exports and s.exports:  # the manifest holds the coverage report: per_module runs once
            report = write_calibration(out_dir, stats, experts, s.exports, s.fill_uncovered, result, not_recorded)
        else:
            report = per_module(stats, experts, fill=s.fill_uncovered, not_recorded=not_recorded)[1]
        result["calibration"] = {"linear_inputs": LINEAR_INPUTS, "modules": len(stats), "fused_expert_weights": len(experts),
                                 "uncovered": report["uncovered"], "nonfinite": report["nonfinite"],
                                 "not_recorded": report["not_recorded"],
                                 **({"files": report["files"], "filled": report["filled"]} if "files" in report else {})}
    atomic_save(out_dir / "per_sample_extremes.parquet", lambda tmp: per_sample.to_parquet(tmp, index=False))
    write_json(out_dir / "activation_stats.json", result)



"""Stage ``probes``: the targeted probe sets (maxact.measurement.probes) through the same hooks, each set apart."""

from __future__ import annotations

from maxact import provenance
from maxact.measurement.batching import make_batches, run_batches
from maxact.measurement.hooks import Measurement
from maxact.measurement.probes import make_probes, peak_tokens, probe_summary
from maxact.measurement.settings import MeasureSettings
from maxact.measurement.summary import assemble_result
from maxact.models.checkpoints import load_tokenizer
from maxact.models.kernels_used import kernels_used
from maxact.stages.loading import load


def probe_checkpoint(prepared: dict, corpus_result: dict, settings: MeasureSettings | dict | None = None, max_len: int = 512,
                     longest_len: int | None = None, seed: int = 0) -> dict:
    """Measure the targeted probe sets (maxact.measurement.probes) with the same hooks, each set apart."""
    s = MeasureSettings.of(settings)
    ctx = prepared.get("max_position_embeddings") or max_len
    longest = min(int(longest_len or ctx), int(ctx))
    loaded = load(prepared, s)
    model, device, dtype = loaded.model, loaded.device, loaded.dtype
    tok = load_tokenizer(prepared)
    sets = make_probes(tok, min(max_len, ctx), longest, seed=seed, peak_token_ids=peak_tokens(corpus_result))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    per_set = {}
    for name, seqs in sets.items():
        meas = Measurement(model, len(seqs), device, topk=10)
        lengths = [len(x) for x in seqs]
        run_batches(meas, seqs, make_batches(lengths, int(s.batch_size), s.max_batch_tokens), pad_id)
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

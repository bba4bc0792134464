"""Stage ``merge``: the result of one checkpoint from the folders of its shards (``maxact measure --shard K/N``).

``maxact merge`` and the workflow's ``measure`` rule (with ``runtime.shards`` above 1) both call
:func:`merge_shards`. It refuses shards that do not belong together, naming the shard and what differs: another
checkpoint, revision, corpus, tokenizer, token ids, dtype, statistic setting or batch plan; another N; a shard given
twice; a shard missing. The merged files are those of an unsharded run (:func:`maxact.stages.measure.write_results`),
with the shards in the provenance.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from maxact.errors import InputError
from maxact.measurement.settings import MeasureSettings
from maxact.measurement.shards import MergedMeasurement, load_info, load_state, merge_states
from maxact.measurement.summary import assemble_result, per_sample_table
from maxact.models.checkpoints import load_tokenizer
from maxact.stages.measure import write_results

log = logging.getLogger(__name__)

#: What each identity key is, in a refusal.
_WHAT = {"checkpoint": "checkpoint", "model_id": "model", "revision": "revision", "corpus_sha256": "corpus",
         "tokenizer_sha256": "tokenizer", "tokens_sha256": "token ids", "dtype": "dtype", "plan_sha256": "batch plan",
         "topk": "measure.topk", "full_stats": "measure.full_stats", "packing": "packing", "linear_inputs": "linear inputs"}


def _seconds(a: str, b: str) -> float | None:
    try:
        return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()
    except (TypeError, ValueError):
        return None


def check_shards(infos: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """The shards in order; InputError naming the shard and the field when they do not belong together."""
    if not infos:
        raise InputError("no shard folders given: maxact merge --out DIR SHARD_DIR [SHARD_DIR ...]")
    first_dir, first = infos[0]
    n = first["shard"]["count"]
    seen: dict[int, Path] = {}
    for folder, info in infos:
        if info["shard"]["count"] != n:
            raise InputError(f"{folder} is shard {info['shard']['index']} of {info['shard']['count']}, but {first_dir} is of {n}: "
                             "every shard must come from the same --shard K/N split")
        k = info["shard"]["index"]
        if k in seen:
            raise InputError(f"shard {k}/{n} is given twice: {seen[k]} and {folder}")
        seen[k] = folder
        for key in sorted(set(first["identity"]) | set(info["identity"])):
            if key == "shard":
                continue
            a, b = first["identity"].get(key), info["identity"].get(key)
            if a != b:
                raise InputError(f"{folder} (shard {k}/{n}) is not a shard of the same measurement as {first_dir}: its "
                                 f"{_WHAT.get(key, key)} differs ({key}: {b} vs {a})")
    missing = [k for k in range(1, n + 1) if k not in seen]
    if missing:
        raise InputError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing: give every shard's folder "
                         f"(found {', '.join(f'{k}/{n}' for k in sorted(seen))})")
    return sorted(infos, key=lambda t: t[1]["shard"]["index"])


def merge_shards(shard_dirs: list[str | Path], out_dir: str | Path, settings: MeasureSettings | dict | None = None,
                 write_exports: bool = False, prepared: dict | None = None) -> dict:
    """Merge the shard folders into ``out_dir`` (the files of an unsharded run); the merged result."""
    order = check_shards([(Path(d), load_info(Path(d))) for d in shard_dirs])
    infos = [info for _, info in order]
    first = infos[0]
    topk, n_samples, sample_ids = first["topk"], first["n_samples"], first["sample_ids"]
    merged = None
    for d, _ in order:  # one shard's state in memory at a time (with the merged one): each rule merges pairwise
        state = load_state(d)
        merged = state if merged is None else merge_states([merged, state], topk)
        del state
    mm = MergedMeasurement(merged, n_samples, topk)
    tok = load_tokenizer(prepared or first["prepared"])
    host = mm.host_state()
    core = assemble_result(mm, sample_ids, decode=lambda i: tok.decode([i]), host=host)
    per_sample = per_sample_table(mm, sample_ids, host=host)
    measured = sorted(i for i, v in enumerate(per_sample.drop(columns="sample_id").abs().min(axis=1)) if v != float("inf"))
    shards = [info["shard"] for info in infos]
    result = {**first["result"], **core}
    result["num_samples"] = sum(sh["samples"] for sh in shards)
    result["num_tokens"] = sum(sh["tokens"] for sh in shards)
    prov = dict(result["provenance"])
    prov.pop("shard", None)
    wall = _seconds(min(sh["started"] for sh in shards), max(sh["finished"] for sh in shards))
    prov["shards"] = {"count": len(shards), "parts": shards, "wall_seconds": wall,
                      "sum_of_shard_seconds": round(sum(sum((sh.get("durations") or {}).values()) for sh in shards), 3),
                      "merged_from": [str(d) for d, _ in order]}
    prov["oom_splits"] = [x for info in infos for x in (info["result"]["provenance"].get("oom_splits") or [])]
    prov["device_name"] = ", ".join(sorted({sh["device_name"] for sh in shards}))
    # The merge is exact for what the shards measured; it equals an unsharded run bit for bit only where each batch's
    # arithmetic was the unsharded run's: the same GPU model (kernels and their chunking follow it), whole batches.
    caveats = []
    if len({sh["device_name"] for sh in shards}) > 1:
        caveats.append(f"the shards ran on different devices ({prov['device_name']}): an unsharded run on any one of them "
                       "can differ in the last bits of sums and near-tied extremes")
    split = [info["shard"]["index"] for info in infos if info["result"]["provenance"].get("oom_splits")]
    if split:
        caveats.append(f"shard(s) {', '.join(map(str, split))} halved batches after running out of memory: those batches' "
                       "sums were added in another grouping than an unsharded run's without the split")
    prov["shards"]["caveats"] = caveats
    for c in caveats:
        log.warning("merge: %s", c)
    prov["durations"] = {k: round(sum((sh.get("durations") or {}).get(k, 0.0) for sh in shards), 3)
                         for k in ("load_seconds", "measure_seconds")}  # summed over the shards
    # 0 as in an unsharded run unless a shard resumed from a saved state (then each shard's, in order)
    resumed = [sh.get("resumed_from_batch") or 0 for sh in shards]
    prov["resumed_from_batch"] = resumed if any(resumed) else 0
    result["provenance"] = prov
    linear = None
    if "linear_inputs" in merged:
        not_recorded = {k: v for info in infos for k, v in (info.get("not_recorded") or {}).items()}
        linear = (mm.linear_stats, mm.linear_experts, not_recorded)
    if len(measured) != result["num_samples"]:
        log.warning("merge: %d samples with statistics, the shards say %d", len(measured), result["num_samples"])
    s = MeasureSettings.of(settings) if settings is not None else MeasureSettings.of(
        {k: v for k, v in prov["settings"].items() if k in ("exports", "fill_uncovered")})
    write_results(Path(out_dir), result, per_sample, linear, s, write_exports)
    return result

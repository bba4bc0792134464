"""Command line: ``maxact measure`` (one checkpoint, same code as the measure rule; ``--shard K/N`` for a slice of it),
``maxact merge`` (shards into the whole), ``maxact extremes`` (what a larger corpus would find), ``maxact quant-eval``
(each quantized format's end-to-end error), ``maxact aggregate``, ``maxact card``.

Exit codes (one rule, in the README): 0 success; 2 a usage, config or input error (the message names the option or
file and the fix; nothing was computed or changed); 1 the run started and failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from maxact.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, InputError

#: What a --model that is meant as a path looks like (a hub id is "org/name" or "name").
_PATH_LIKE = re.compile(r"^(\.{1,2}/|/|~)|\.gguf$|\\")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _entry_for(model: str, gguf_file: str | None, revision: str | None, trust_remote_code: bool) -> dict:
    """The checkpoint entry for ``--model``: a local folder, a .gguf file or a hub id, checked before any work."""
    p = Path(model).expanduser()
    local = p.resolve() if p.exists() else p
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", (local.stem if local.suffix == ".gguf" else local.name) if p.exists() else model.split("/")[-1])
    if p.exists():
        if revision:
            raise InputError(f"--revision applies to hub ids only; --model {model} is a local path (its files are measured as they are)")
        if p.is_file() and p.suffix != ".gguf":
            raise InputError(f"--model {model} is a file but not a .gguf file: give a checkpoint folder (config.json, weights, "
                             "tokenizer), a .gguf file or a hub id")
        if p.suffix == ".gguf" or gguf_file:
            if gguf_file and not (p / gguf_file).exists():
                raise InputError(f"--gguf-file {gguf_file} is not in the folder {p}")
            return {"name": name, "source": "gguf", "path": str(p.resolve()), "gguf_file": gguf_file}
        return {"name": name, "source": "local", "path": str(p.resolve()), "trust_remote_code": trust_remote_code}
    if gguf_file:
        raise InputError(f"--gguf-file needs --model to be a local folder holding it; {model!r} does not exist")
    if _PATH_LIKE.search(model) or not _HUB_ID.match(model):
        raise InputError(f"--model {model}: no such file or folder (and not a hub id of the form org/name). Check the path.")
    return {"name": name, "source": "hub", "model_id": model, "revision": revision or "main", "trust_remote_code": trust_remote_code}


def _identity(entry: dict) -> dict:
    """What the output folder's results belong to (a rerun of the same checkpoint may replace them)."""
    return {"checkpoint": entry["name"], "source": entry["source"], "model": entry.get("model_id") or entry.get("path"),
            "revision": entry.get("revision"), "gguf_file": entry.get("gguf_file")}


def read_texts(path) -> list[dict]:
    """One ``{"id": ..., "text": ...}`` a line; a clear error names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--texts {path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    recs, seen = [], set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"{path}:{n}: not a UTF-8 JSON line ({e}); expected {{\"id\": ..., \"text\": ...}}") from None
            if not isinstance(r, dict) or "text" not in r:
                raise InputError(f"{path}:{n}: a record needs a 'text' field; expected {{\"id\": ..., \"text\": ...}}")
            if not isinstance(r["text"], str) or not r["text"].strip():
                raise InputError(f"{path}:{n}: 'text' must be a non-empty string (got {type(r['text']).__name__} "
                                 f"{str(r['text'])[:40]!r})")
            if "id" in r and (isinstance(r["id"], bool) or not isinstance(r["id"], (str, int))):
                raise InputError(f"{path}:{n}: 'id' must be a string or an integer (got {r['id']!r})")
            rid = str(r.get("id", f"line{n}"))
            if rid in seen:
                raise InputError(f"{path}:{n}: duplicate id {rid!r}; every text needs its own id")
            seen.add(rid)
            recs.append({"id": rid, "text": r["text"], "category": r.get("category")})
    if not recs:
        raise InputError(f"{path}: no texts; the file is empty")
    return recs


def cmd_measure(a) -> int:
    # Everything the user gave is checked before any work: the texts, the model path, the settings, the folder
    # (the first two before the heavy imports, so that a typo is reported at once).
    records = read_texts(a.texts)
    entry = _entry_for(a.model, a.gguf_file, a.revision, a.trust_remote_code)

    from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
    from maxact.io import sha256_file, write_json
    from maxact.measurement.settings import MeasureSettings, resolve_device
    from maxact.measurement.shards import INFO, STATE, Shard
    from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
    from maxact.outdir import OwnedDir
    from maxact.stages.measure import measure_checkpoint
    from maxact.study.topk import top5_name, top5_stats

    settings = {"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size, "max_batch_tokens": a.max_batch_tokens,
                "attn_implementation": a.attn_implementation, "packing": a.packing, "compile": a.compile, "topk": a.topk,
                "full_stats": a.full_stats, "checkpoint_every": a.checkpoint_every,
                "linear_inputs": a.calibration, "exports": _exports(a.export), "fill_uncovered": a.fill_uncovered}
    s = MeasureSettings.of(settings)
    shard = Shard.parse(a.shard) if a.shard else None
    resolve_device(s.device)  # a device that is not there is refused before the checkpoint is prepared
    planned = _planned(entry["name"], s.records_linear_inputs, s.exports) + ([STATE, INFO] if shard else [])
    out = OwnedDir(a.out, overwrite=a.overwrite)
    out.claim({**_identity(entry), "shard": shard.label if shard else None}, planned)
    if a.max_samples:
        records = records[: a.max_samples]

    prepared = prepare_checkpoint(entry, a.cache_dir)
    tok = load_tokenizer(prepared)
    df = tokenize_records(records, tok, a.max_seq_len, a.add_special_tokens, truncate=a.truncate)  # cuts: warned by measure
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": sha256_file(a.texts),
            "max_seq_len": a.max_seq_len, "add_special_tokens": a.add_special_tokens, "truncate": a.truncate}
    with out.staging() as stage:  # the earlier results stay as they were unless this whole run succeeds
        write_json(stage / "prepared.json", prepared)
        r = measure_checkpoint(prepared, df, meta, stage, settings=settings, write_exports=True, resume_dir=out.resume_dir,
                               shard=shard, cache_dir=a.cache_dir)
        write_json(stage / top5_name(prepared["name"]), top5_stats(r))  # the top values in the paper's form
        files = out.commit()
    out.release()
    print(f"{prepared['name']}: global max {r['global_max_activation']} at {r['global_max_location']}")
    p = r.get("peak") or {}
    print(f"  peak: sample {p.get('sample_id')} position {p.get('position')} token {p.get('token')!r} channel {p.get('channel')}")
    print(f"  wrote {len(files)} file(s) to {out.path}: {', '.join(files)}")
    cal = r.get("calibration") or {}
    if cal.get("uncovered"):
        print(f"  no calibration token reached {len(cal['uncovered'])} module(s)/expert(s) (left out of every file): "
              f"{', '.join(cal['uncovered'][:5])}{' ...' if len(cal['uncovered']) > 5 else ''}")
    return EXIT_OK


def cmd_merge(a) -> int:
    from maxact.io import read_json, write_json
    from maxact.measurement.shards import INFO
    from maxact.outdir import OwnedDir
    from maxact.stages.merge import merge_shards
    from maxact.study.topk import top5_name, top5_stats

    for d in a.shard_dirs:
        if not (Path(d) / INFO).is_file():
            raise InputError(f"{d}: no {INFO}; give the --out folders of `maxact measure --shard K/N`")
    first = read_json(Path(a.shard_dirs[0]) / INFO)
    prepared = first["prepared"]
    settings = dict(first["result"]["provenance"]["settings"])
    exports = _exports(a.export) if a.export is not None else list(settings.get("exports") or [])
    if exports and not settings.get("linear_inputs"):
        raise InputError("--export needs the linear layers' inputs, which these shards did not record: measure them with "
                         "--calibration (or --export)")
    s = {"exports": exports, "fill_uncovered": a.fill_uncovered or settings.get("fill_uncovered", "none")}
    planned = _planned(prepared["name"], bool(settings.get("linear_inputs")), exports)
    out = OwnedDir(a.out, overwrite=a.overwrite)
    identity = {"checkpoint": prepared["name"], "source": prepared.get("source"),
                "model": prepared.get("model_id") or (prepared.get("gguf") or {}).get("path") or prepared.get("load_path"),
                "revision": prepared.get("revision"), "gguf_file": None, "shard": None}
    out.claim(identity, planned)
    with out.staging() as stage:
        write_json(stage / "prepared.json", prepared)
        r = merge_shards(a.shard_dirs, stage, settings=s, write_exports=True)
        write_json(stage / top5_name(prepared["name"]), top5_stats(r))
        files = out.commit()
    out.release()
    sh = r["provenance"]["shards"]
    print(f"{prepared['name']}: {sh['count']} shards merged: global max {r['global_max_activation']} at {r['global_max_location']}")
    print(f"  {r['num_samples']} samples, {r['num_tokens']:,} tokens; wall {sh['wall_seconds']} s, sum of shard times "
          f"{sh['sum_of_shard_seconds']} s")
    print(f"  wrote {len(files)} file(s) to {out.path}: {', '.join(files)}")
    return EXIT_OK


def _planned(name: str, linear_inputs: bool, exports) -> list[str]:
    """The files a measurement (or a merge) of checkpoint ``name`` writes into its --out folder."""
    from maxact.calibration.exports import files_for
    from maxact.study.topk import top5_name

    return ["activation_stats.json", "per_sample_extremes.parquet", "prepared.json", top5_name(name)] + \
        (["linear_inputs.safetensors"] if linear_inputs else []) + files_for(exports) + (["calibration.json"] if exports else [])


def _exports(value: str | None) -> list[str]:
    from maxact.calibration.exports import EXPORTS

    names = [v.strip() for v in (value or "").split(",") if v.strip()]
    unknown = [n for n in names if n not in EXPORTS]
    if unknown:
        raise InputError(f"unknown --export {', '.join(unknown)}: choose from {', '.join(EXPORTS)} (comma-separated)")
    return names


def cmd_extremes(a) -> int:
    from maxact.io import write_json
    from maxact.stages.extremes import extremes_of_table

    sizes = _sizes(a.sizes)
    doc = extremes_of_table(a.per_sample, sizes, a.method, kind=a.kind, first=a.first, tail_fraction=a.tail_fraction,
                            min_exceedances=a.min_exceedances, atom_share=a.atom_share)
    if a.json:
        write_json(a.json, doc)
    print(f"{doc['n_samples']} samples, observed max {doc['observed_max']:.6g}; structural peak "
          f"{doc['structural_peak'] if doc['structural_peak'] is not None else 'none'} "
          f"({100 * doc['structural_share']:.1f}% of samples)")
    sh = doc["shape"]
    print(f"shape xi {sh['estimate']:.3f} [{_fmt(sh['lower'])}, {_fmt(sh['upper'])}] (90%); endpoint "
          + (f"{doc['endpoint']['estimate']:.6g} [{_fmt(doc['endpoint']['lower'])}, {_fmt(doc['endpoint']['upper'])}]"
             if doc["endpoint"] else "none (xi >= 0: no finite upper bound)"))
    for r in doc["return_levels"]:
        print(f"  median max over {r['n_samples']:>12,} samples: {r['estimate']:.6g} "
              f"[{_fmt(r['lower'])}, {_fmt(r['upper'])}]")
    print(f"goodness of fit: KS D = {doc['gof']['ks_d']:.4f} (n = {doc['gof']['n']}); method: {doc['method']}")
    return EXIT_OK


def _fmt(v) -> str:
    return "open" if v is None else f"{v:.6g}"


def _sizes(text: str) -> list[int]:
    from maxact import schema

    out = []
    for part in str(text).split(","):
        part = part.strip().replace("_", "")
        try:
            v = int(float(part)) if part and float(part).is_integer() else None
        except ValueError:
            v = None
        if v is None:
            raise InputError(f"--sizes must be comma-separated whole numbers of samples, e.g. 20000,100000,1000000 "
                             f"(got {text!r})")
        lo, hi = schema.prop("extremes", "sizes")["items"]["minimum"], schema.prop("extremes", "sizes")["items"]["maximum"]
        if not lo <= v <= hi:
            raise InputError(f"--sizes: each size must be an integer from {lo} to {hi} (got {v})")
        out.append(v)
    return out


def cmd_quant_eval(a) -> int:
    import pandas as pd

    from maxact.io import read_json, write_json
    from maxact.quant.formats import FORMATS, LABELS
    from maxact.stages.quant_eval import quant_eval_checkpoint

    d = Path(a.result_dir)
    need = [n for n in ("prepared.json", "activation_stats.json", "per_sample_extremes.parquet") if not (d / n).is_file()]
    if not d.is_dir() or need:
        raise InputError(f"{d} is not a measured result folder (missing {', '.join(need) or 'the folder'}): give the --out folder "
                         "of `maxact measure --export input_scales,smoothquant`")
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"--formats: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(FORMATS)} (comma-separated)")
    measured = [str(x) for x in pd.read_parquet(d / "per_sample_extremes.parquet", columns=["sample_id"])["sample_id"]]
    heldout = read_texts(a.texts) if a.texts else None
    q = {"formats": formats, "n_samples": a.n_samples, "max_tokens": a.max_tokens, "seed": a.seed, "smoothquant_alpha": a.alpha,
         "safe_delta_nll": a.safe_delta_nll, "breaks_delta_nll": a.breaks_delta_nll}
    llama = {"enabled": {"auto": "auto", "on": True, "off": False}[a.llama_cpp], "tools": a.llama_cpp_tools or "auto",
             "cache_dir": a.cache_dir, **({"types": a.llama_cpp_types.split(",")} if a.llama_cpp_types else {"types": ["Q4_K_M", "IQ4_XS", "IQ3_XXS"]})}
    out = Path(a.json) if a.json else d / "quant_eval.json"
    result = read_json(d / "activation_stats.json")
    special = bool(((result.get("provenance") or {}).get("tokenization") or {}).get("add_special_tokens"))  # as measured
    doc = quant_eval_checkpoint(read_json(d / "prepared.json"), d, result, measured,
                                {"source": a.corpus_source}, Path(__file__).resolve().parents[2] / "resources", q,
                                settings={"device": a.device, "dtype": a.dtype}, llama_cpp=llama, heldout=heldout,
                                add_special_tokens=special)
    write_json(out, doc)
    if out.parent.resolve() == d.resolve():  # derived from these results: replaced results take it with them
        from maxact.outdir import register_derived

        register_derived(d, [out.name])
    h = doc["heldout"]
    print(f"{doc['checkpoint']}: {len(h['sample_ids'])} held-out samples, {h['tokens']:,} tokens (none measured); "
          f"reference NLL {doc['reference_nll_per_token']:.4f}/token")
    print(f"{'format':<26} {'dNLL/token':>11} {'logits relL2':>13} {'top-1':>7} {'clip rate':>10}")
    for f, e in doc["formats"].items():
        if e["status"] != "measured":
            print(f"{LABELS.get(f, f):<26} not covered: {e['reason']}")
            continue
        clip = f"{e['clip']['token_rate']:.2e}" if e.get("clip") else "-"
        print(f"{LABELS.get(f, f):<26} {e['delta_nll_per_token']:>+11.4f} {e['logits_rel_l2']:>13.4f} {e['top1_agreement']:>7.3f} "
              f"{clip:>10}")
    print(doc["verdict_line"])
    lc = doc.get("llama_cpp") or {}
    print(f"llama.cpp: {lc.get('status')}" + (f" ({lc.get('reason')})" if lc.get("reason") else ""))
    print(f"wrote {out}")
    return EXIT_OK


def cmd_card(a) -> int:
    from maxact.report.card import write_card

    for p in write_card(a.result_dir, a.out):
        print(p)
    return EXIT_OK


class _Help(argparse.HelpFormatter):
    """Every option's default at the end of its help line (none where it has none)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.dest == "help" or not action.option_strings or "%(default)" in h or "(default:" in h:
            return h
        if action.required:
            return h + " (required)"
        if action.nargs == 0:  # a flag: not given unless written
            return h + " (default: off)"
        if action.default is None or action.default == []:
            return h + " (default: none)"
        return h + " (default: %(default)s)"


def _number(section: str | None, key: str, option: str, schema_file=None):
    """An argparse type: an integer within the schema's range for ``section.key``, named as ``option`` when refused."""
    from maxact import schema

    def parse(text: str):
        try:
            value = int(text)
        except ValueError:
            lo, hi, excl = schema.bounds(section, key, schema_file or schema.CONFIG)
            raise argparse.ArgumentTypeError(f"must be {schema.describe_range(lo, hi, excl)} (got {text!r})") from None
        try:
            return schema.check_number(value, section, key, name=option, schema=schema_file or schema.CONFIG)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{option} ")) from None

    parse.__name__ = "integer"
    return parse


def _real(section: str, key: str, option: str):
    """An argparse type: a number within the schema's range for ``section.key``, named as ``option`` when refused."""
    from maxact import schema

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            lo, hi, excl = schema.bounds(section, key)
            raise argparse.ArgumentTypeError(f"must be {schema.describe_range(lo, hi, excl, integer=False)} "
                                             f"(got {text!r})") from None
        try:
            return schema.check_number(value, section, key, name=option)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{option} ")) from None

    parse.__name__ = "number"
    return parse


def _device(text: str) -> str:
    from maxact.measurement.settings import DEVICE_RE

    if not DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (got {text!r})")
    return text


def _verbose(parser: argparse.ArgumentParser) -> None:
    """-v after the command as well as before it (SUPPRESS: not given here keeps the top level's value)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress, and print the traceback of a failure")


def build_parser() -> argparse.ArgumentParser:
    from maxact import schema

    runtime, study, measure = schema.defaults("runtime"), schema.defaults(), schema.defaults("measure")
    tokenization = schema.defaults("tokenization")  # the schema's defaults, not restated here
    ap = argparse.ArgumentParser(prog="maxact", description="Measure maximum activations of LLM checkpoints.",
                                 epilog="Exit codes: 0 done; 2 usage, config or input error (nothing was run); 1 the run "
                                        "failed; 130 interrupted.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress, and print the traceback of a failure")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    m = sub.add_parser("measure", help="measure one checkpoint on a JSONL file of texts", formatter_class=_Help,
                       description="Measure one checkpoint on a JSONL file of texts into --out (the measure rule's code).")
    m.add_argument("--model", required=True, help="local checkpoint folder, .gguf file, or hub id (org/name)")
    m.add_argument("--gguf-file", help="GGUF file name inside a local --model folder")
    m.add_argument("--revision", help="hub revision (branch, tag or commit) of a hub id (default: main)")
    m.add_argument("--texts", required=True, help='JSONL file, one {"id": ..., "text": ...} a line')
    m.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the results; a folder holding another checkpoint's results is refused unless --overwrite")
    m.add_argument("--overwrite", action="store_true",
                   help="replace another checkpoint's results in --out (removed only once this run has succeeded)")
    m.add_argument("--max-seq-len", type=_number("tokenization", "max_seq_len", "--max-seq-len"), default=tokenization["max_seq_len"],
                   help="most tokens a text keeps; a longer text is cut, counted and reported")
    m.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="refuse texts longer than --max-seq-len, naming them, instead of cutting them")
    m.add_argument("--batch-size", type=_number("runtime", "batch_size", "--batch-size"), default=runtime["batch_size"],
                   help="most texts per forward batch")
    m.add_argument("--max-batch-tokens", type=_number("runtime", "max_batch_tokens", "--max-batch-tokens"),
                   default=runtime["max_batch_tokens"], help="most tokens per batch")
    m.add_argument("--max-samples", type=_number("measure", "max_samples", "--max-samples"),
                   help="measure only the first N texts of --texts")
    m.add_argument("--topk", type=_number("measure", "topk", "--topk"), default=measure["topk"],
                   help="largest |a| kept per point with their sample, position, token and channel")
    m.add_argument("--full-stats", default=measure["full_stats"], choices=["paper", "all"],
                   help="where quantiles and the massive-activation criterion are computed: the paper's points or all")
    m.add_argument("--checkpoint-every", type=_number("runtime", "checkpoint_every", "--checkpoint-every"),
                   default=runtime["checkpoint_every"],
                   help="save partial statistics every N batches; the same command run again resumes (0: never)")
    m.add_argument("--device", type=_device, default=runtime["device"], help="auto, cpu, cuda or cuda:N")
    m.add_argument("--dtype", default=runtime["dtype"], choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on CUDA, float32 on the CPU")
    m.add_argument("--attn-implementation", default=runtime["attn_implementation"],
                   choices=["auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"],
                   help="auto: the family's fastest exact one on this device (see the registry)")
    m.add_argument("--packing", default=measure["packing"], choices=["auto", "on", "off"],
                   help="auto: one packed row per batch where that is exact (CUDA), else padded; on: pack or stop; off: padded")
    m.add_argument("--compile", default=measure["compile"], choices=["auto", "on", "off"],
                   help="each decoder layer compiled (torch.compile, dynamic shapes; hooks between the compiled pieces): "
                        "auto: on CUDA where the family is checked; on: wherever it can; off: eager")
    m.add_argument("--calibration", action="store_true",
                   help="record every linear layer's input statistics (linear_inputs.safetensors), the data of --export")
    m.add_argument("--export", metavar="LIST", help="calibration files to write: smoothquant,imatrix,input_scales,awq (comma-separated)")
    m.add_argument("--fill-uncovered", default=measure["fill_uncovered"], choices=["none", "max_over_layer"],
                   help="scales for experts no token reached: none (left out, listed) or the max over the layer's others")
    m.add_argument("--add-special-tokens", action="store_true",
                   help="follow the tokenizer's own BOS/EOS convention (off: none added, as in the paper)")
    m.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    m.add_argument("--cache-dir", default=study["cache_dir"], help="folder for GGUF conversions (reused across runs)")
    m.add_argument("--shard", metavar="K/N",
                   help="measure only shard K of N: the K-th of N contiguous slices of the batch plan; merge the N folders "
                        "with `maxact merge`")
    m.set_defaults(func=cmd_measure)
    _verbose(m)

    from maxact.stages.aggregate import add_aggregate_arguments, aggregate_main

    g = sub.add_parser("aggregate", help="aggregate result files (measured and published) and derive the claims",
                       formatter_class=_Help)
    add_aggregate_arguments(g)
    g.set_defaults(func=aggregate_main)
    _verbose(g)

    mg = sub.add_parser("merge", help="merge the folders of `maxact measure --shard K/N` into the result of the whole",
                        formatter_class=_Help,
                        description="Merge shard folders into the files of an unsharded run (refuses shards that do not "
                                    "belong together, naming the shard and what differs).")
    mg.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR", help="the --out folders of every shard K/N, K = 1..N")
    mg.add_argument("--out", required=True, metavar="DIR", help="folder for the merged result")
    mg.add_argument("--overwrite", action="store_true", help="replace another checkpoint's results in --out")
    mg.add_argument("--export", metavar="LIST",
                    help="calibration files to write: smoothquant,imatrix,input_scales,awq (comma-separated; the shards' "
                         "own list when not given)")
    mg.add_argument("--fill-uncovered", choices=["none", "max_over_layer"],
                    help="scales for experts no token reached (the shards' own setting when not given)")
    mg.set_defaults(func=cmd_merge)
    _verbose(mg)

    ex_defaults = schema.defaults("extremes")
    e = sub.add_parser("extremes", help="extreme-value estimate of the maximum a larger corpus would find",
                       formatter_class=_Help,
                       description="Fit the per-sample maxima of a measured result (each sample a block; a structural "
                                   "peak shared by many samples taken out as a point mass) and print, for each corpus "
                                   "size N, the median of the maximum over N samples with its 90%% profile-likelihood "
                                   "interval, the shape, the upper endpoint and a goodness of fit.")
    e.add_argument("per_sample", metavar="PER_SAMPLE_EXTREMES.parquet",
                   help="the per_sample_extremes.parquet of a measured result folder")
    e.add_argument("--sizes", default=",".join(str(v) for v in ex_defaults["sizes"]),
                   help="corpus sizes N to predict (comma-separated)")
    e.add_argument("--json", metavar="OUT", help="write the whole result as JSON to OUT")
    e.add_argument("--method", default=ex_defaults["method"], choices=["auto", "gpd", "gev"],
                   help="gpd: peaks over a threshold (generalized Pareto, the tail only); gev: generalized extreme value "
                        "fitted to every per-sample maximum; auto: gpd where the tail holds min-exceedances samples, "
                        "else gev")
    e.add_argument("--kind", default="global", choices=["global", "residual", "attention", "mlp", "gate", "final_norm"],
                   help="which points' maxima: those of the global max, or one component kind")
    e.add_argument("--first", type=_number("extremes", "min_exceedances", "--first"),
                   help="fit only the first N rows of the table (to predict the rest; rows are in corpus order, which is "
                        "by sample id, so category by category)")
    e.add_argument("--tail-fraction", type=_real("extremes", "tail_fraction", "--tail-fraction"),
                   default=ex_defaults["tail_fraction"], help="gpd: the share of the per-sample maxima fitted as the tail")
    e.add_argument("--min-exceedances", type=_number("extremes", "min_exceedances", "--min-exceedances"),
                   default=ex_defaults["min_exceedances"], help="gpd: the fewest per-sample maxima fitted as the tail")
    e.add_argument("--atom-share", type=_real("extremes", "atom_share", "--atom-share"),
                   default=ex_defaults["atom_share"],
                   help="share of samples at one exact value from which it is a structural peak")
    e.set_defaults(func=cmd_extremes)
    _verbose(e)

    qd = schema.defaults("quant_eval")
    qe = sub.add_parser("quant-eval", help="what each quantized format does to a measured checkpoint, end to end",
                        formatter_class=_Help,
                        description="Apply maxact's calibration files with their consumers' own code (compressed-tensors "
                                    "FP8/INT8 static input scales, dynamic per-token INT8/FP8, llm-compressor's SmoothQuant "
                                    "then W8A8; llama.cpp's quantizer with and without the imatrix where its tools are "
                                    "built) and score each format against the unquantized model on held-out samples.")
    qe.add_argument("result_dir", metavar="RESULT_DIR", help="the --out folder of `maxact measure --export input_scales,smoothquant`")
    qe.add_argument("--formats", default=",".join(qd["formats"]), help="formats to score (comma-separated)")
    qe.add_argument("--n-samples", type=_number("quant_eval", "n_samples", "--n-samples"), default=qd["n_samples"],
                    help="held-out corpus samples (none of them measured)")
    qe.add_argument("--max-tokens", type=_number("quant_eval", "max_tokens", "--max-tokens"), default=qd["max_tokens"],
                    help="each held-out sample cut to this many tokens (counted)")
    qe.add_argument("--seed", type=_number("quant_eval", "seed", "--seed"), default=qd["seed"], help="seed of the held-out draw")
    qe.add_argument("--alpha", type=_real("quant_eval", "smoothquant_alpha", "--alpha"), default=qd["smoothquant_alpha"],
                    help="SmoothQuant migration strength")
    qe.add_argument("--safe-delta-nll", type=_real("quant_eval", "safe_delta_nll", "--safe-delta-nll"), default=qd["safe_delta_nll"],
                    help="verdict: safe at or below this ΔNLL per token")
    qe.add_argument("--breaks-delta-nll", type=_real("quant_eval", "breaks_delta_nll", "--breaks-delta-nll"),
                    default=qd["breaks_delta_nll"], help="verdict: breaks at or above this ΔNLL per token")
    qe.add_argument("--corpus-source", default="default", choices=["default", "extended", "stdlib"],
                    help="corpus the held-out samples are drawn from (samples of the measurement excluded by id)")
    qe.add_argument("--texts", metavar="JSONL", help="held-out texts instead ({\"id\", \"text\"} a line; none may be a measured id)")
    qe.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    qe.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="model dtype")
    qe.add_argument("--llama-cpp", default="auto", choices=["auto", "on", "off"],
                    help="llama.cpp's quantizer and perplexity with and without the imatrix (auto: where its tools are built)")
    qe.add_argument("--llama-cpp-tools", metavar="DIR", help="folder of llama-quantize and llama-perplexity (auto when not given)")
    qe.add_argument("--llama-cpp-types", metavar="LIST", help="llama-quantize types (comma-separated; Q4_K_M,IQ4_XS,IQ3_XXS when not given)")
    qe.add_argument("--cache-dir", default=".cache/maxact", help="cache folder (llama.cpp's built tools are looked for here)")
    qe.add_argument("--json", metavar="OUT", help="where to write the result (RESULT_DIR/quant_eval.json when not given)")
    qe.set_defaults(func=cmd_quant_eval)
    _verbose(qe)

    c = sub.add_parser("card", help="write an activation card (Markdown + JSON) for one measured result folder",
                       formatter_class=_Help)
    c.add_argument("result_dir", help="a measure output folder (holding activation_stats.json)")
    c.add_argument("--out", metavar="DIR", help="folder for the card; the result folder when not given")
    c.set_defaults(func=cmd_card)
    _verbose(c)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)  # a usage error exits 2 here, naming the option
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.func(a) or EXIT_OK)
    except InputError as e:
        print(f"maxact: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("maxact: interrupted; earlier results are unchanged (with --checkpoint-every the same command resumes)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the run failed: one line, the traceback with -v
        if a.verbose:
            logging.exception("run failed")
        print(f"maxact: error: the run failed: {type(e).__name__}: {e} (earlier results in the output folder are unchanged; "
              "-v shows the traceback)", file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())

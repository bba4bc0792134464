"""Command line: ``maxact measure`` (one checkpoint, same code as the measure rule), ``maxact aggregate``,
``maxact card``."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path


def _entry_for(model: str, gguf_file: str | None, revision: str | None, trust_remote_code: bool) -> dict:
    p = Path(model).expanduser()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", (p.stem if p.suffix == ".gguf" else p.name) if p.exists() else model.split("/")[-1])
    if p.exists() and (p.suffix == ".gguf" or gguf_file):
        return {"name": name, "source": "gguf", "path": str(p), "gguf_file": gguf_file}
    if p.is_dir():
        return {"name": name, "source": "local", "path": str(p), "trust_remote_code": trust_remote_code}
    if gguf_file:
        raise SystemExit(f"--gguf-file needs --model to be a local folder or .gguf file; {model!r} does not exist")
    return {"name": name, "source": "hub", "model_id": model, "revision": revision or "main", "trust_remote_code": trust_remote_code}


def read_texts(path) -> list[dict]:
    """One ``{"id": ..., "text": ...}`` a line; a clear error names the bad line."""
    recs, seen = [], set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SystemExit(f"{path}:{n}: not a UTF-8 JSON line ({e}); expected {{\"id\": ..., \"text\": ...}}")
            if not isinstance(r, dict) or "text" not in r:
                raise SystemExit(f"{path}:{n}: a record needs a 'text' field")
            rid = str(r.get("id", f"line{n}"))
            if rid in seen:
                raise SystemExit(f"{path}:{n}: duplicate id {rid!r}")
            seen.add(rid)
            recs.append({"id": rid, "text": r["text"], "category": r.get("category")})
    if not recs:
        raise SystemExit(f"{path}: no texts; the file is empty")
    return recs


def cmd_measure(a) -> int:
    from maxact.corpus.tokenization import tokenize_records, tokenizer_fingerprint
    from maxact.io import sha256_file, write_json
    from maxact.models.checkpoints import load_tokenizer, prepare_checkpoint
    from maxact.stages.measure import measure_checkpoint

    entry = _entry_for(a.model, a.gguf_file, a.revision, a.trust_remote_code)
    prepared = prepare_checkpoint(entry, a.cache_dir)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "prepared.json", prepared)
    tok = load_tokenizer(prepared)
    records = read_texts(a.texts)
    if a.max_samples:
        records = records[: a.max_samples]
    df = tokenize_records(records, tok, a.max_seq_len, a.add_special_tokens)
    meta = {"tokenizer_sha256": tokenizer_fingerprint(tok), "corpus_sha256": sha256_file(a.texts),
            "max_seq_len": a.max_seq_len, "add_special_tokens": a.add_special_tokens}
    settings = {"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size, "max_batch_tokens": a.max_batch_tokens,
                "attn_implementation": a.attn_implementation, "packing": a.packing,
                "linear_inputs": a.calibration, "exports": _exports(a.export), "fill_uncovered": a.fill_uncovered}
    r = measure_checkpoint(prepared, df, meta, out, settings=settings, write_exports=True)
    print(f"{prepared['name']}: global max {r['global_max_activation']} at {r['global_max_location']}")
    p = r.get("peak") or {}
    print(f"  peak: sample {p.get('sample_id')} position {p.get('position')} token {p.get('token')!r} channel {p.get('channel')}")
    print(f"  wrote {out / 'activation_stats.json'} and {out / 'per_sample_extremes.parquet'}")
    cal = r.get("calibration") or {}
    for f in cal.get("files", []):
        print(f"  wrote {out / f}")
    if cal.get("uncovered"):
        print(f"  no calibration token reached {len(cal['uncovered'])} module(s)/expert(s) (left out of every file): "
              f"{', '.join(cal['uncovered'][:5])}{' ...' if len(cal['uncovered']) > 5 else ''}")
    return 0


def _exports(value: str | None) -> list[str]:
    from maxact.calibration.exports import EXPORTS

    names = [v.strip() for v in (value or "").split(",") if v.strip()]
    unknown = [n for n in names if n not in EXPORTS]
    if unknown:
        raise ValueError(f"unknown --export {', '.join(unknown)}: choose from {', '.join(EXPORTS)} (comma-separated)")
    return names


def cmd_card(a) -> int:
    from maxact.report.card import write_card

    paths = write_card(a.result_dir, a.out)
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from maxact import schema

    runtime, study = schema.defaults("runtime"), schema.defaults()  # the schema's defaults, not restated here
    tokenization = schema.defaults("tokenization")
    ap = argparse.ArgumentParser(prog="maxact", description="Measure maximum activations of LLM checkpoints.")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("measure", help="measure one checkpoint on a JSONL file of texts")
    m.add_argument("--model", required=True, help="hub id, local folder, or .gguf file")
    m.add_argument("--gguf-file", help="GGUF file name inside a local --model folder")
    m.add_argument("--revision", help="hub revision (default main)")
    m.add_argument("--texts", required=True, help='JSONL, one {"id": ..., "text": ...} a line')
    m.add_argument("--out", required=True)
    m.add_argument("--max-seq-len", type=int, default=tokenization["max_seq_len"])
    m.add_argument("--batch-size", type=int, default=runtime["batch_size"])
    m.add_argument("--max-batch-tokens", type=int, default=runtime["max_batch_tokens"])
    m.add_argument("--max-samples", type=int)
    m.add_argument("--device", default=runtime["device"], help="auto, cpu, cuda or cuda:N")
    m.add_argument("--dtype", default=runtime["dtype"], choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--attn-implementation", default=runtime["attn_implementation"],
                   choices=["auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"],
                   help="auto: the family's fastest exact one on this device (see the registry)")
    m.add_argument("--packing", default=schema.defaults("measure")["packing"], choices=["auto", "on", "off"],
                   help="auto: one packed row per batch where that is exact (CUDA), else padded; on: pack or stop; off: padded")
    m.add_argument("--calibration", action="store_true",
                   help="record every linear layer's input statistics (linear_inputs.safetensors), the data of --export")
    m.add_argument("--export", help="calibration files to write: smoothquant,imatrix,input_scales,awq (comma-separated)")
    m.add_argument("--fill-uncovered", default=schema.defaults("measure")["fill_uncovered"], choices=["none", "max_over_layer"],
                   help="scales for experts no token reached: none (left out, listed) or the max over the layer's others")
    m.add_argument("--add-special-tokens", action="store_true",
                   help="follow the tokenizer's own BOS/EOS convention (default: none added, as in the paper)")
    m.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    m.add_argument("--cache-dir", default=study["cache_dir"])
    m.set_defaults(func=cmd_measure)

    try:
        from maxact.stages.aggregate import add_aggregate_arguments, aggregate_main

        g = sub.add_parser("aggregate", help="aggregate result files (measured and published) and derive the claims")
        add_aggregate_arguments(g)
        g.set_defaults(func=aggregate_main)
    except ImportError:  # pragma: no cover
        pass

    c = sub.add_parser("card", help="write an activation card (Markdown + JSON) for one measured result folder")
    c.add_argument("result_dir")
    c.add_argument("--out", help="output folder (default: the result folder)")
    c.set_defaults(func=cmd_card)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.func(a) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"maxact: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

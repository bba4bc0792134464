"""Provenance attached to every result file: who, what, with which libraries and settings."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import platform
import sys

_LIBS = ("maxact", "torch", "transformers", "accelerate", "safetensors", "tokenizers", "gguf", "numpy", "pandas", "snakemake", "datasets")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _LIBS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "libraries": library_versions()}


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

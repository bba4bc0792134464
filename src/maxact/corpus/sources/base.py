"""Shared types and helpers for the source modules."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from maxact.corpus.sources.text import rng_for


@dataclass
class Doc:
    category: str
    language: str
    text: str
    package: str
    path: str
    licence: str
    group: str
    programming_language: str | None = None


@dataclass
class Source:
    name: str
    category: str
    packages: tuple  # (kind, name) pairs: ("deb", pkg) | ("wheel", name) | ("local", name)
    fn: Callable  # fn(fetcher, seed) -> Iterable[Doc]
    description: str = ""


REGISTRY: dict[str, Source] = {}


def source(name: str, category: str, packages, description: str = ""):
    def deco(fn):
        REGISTRY[name] = Source(name, category, tuple(packages), fn, description)
        return fn
    return deco


def read_maybe_gz(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return data


def pick(items: Iterable, k: int | None, *seed_parts) -> list:
    """Seeded sample of at most ``k`` items from ``items`` (sorted first); returned sorted."""
    items = sorted(items)
    if k is None or len(items) <= k:
        return items
    return sorted(rng_for(*seed_parts).sample(items, k))


def rel(path: Path, root: Path) -> str:
    return "/" + str(Path(path).relative_to(root))

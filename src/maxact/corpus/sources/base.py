"""Shared types and helpers for the source modules."""
from __future__ import annotations

import contextvars
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
    # corpus editions that draw on this source: the shipped 5,000 ("default") keep their sources so that a
    # rebuild stays byte-identical; sources added later serve only the 15,000 samples of "extended"
    editions: tuple = ("default", "extended")


EDITIONS = ("default", "extended")

# How many more files a source reads when building the extended edition (three times the samples to find
# among files the default 5,000 already drew on). 1 for the default edition, whose bytes must not change.
_SCALE = contextvars.ContextVar("maxact_corpus_scale", default=1)


def scaled(k: int) -> int:
    """A source's per-package file budget ``k`` for the edition being built."""
    return int(k) * _SCALE.get()


def set_scale(factor: int):
    """Set the budget factor for the current build; returns the token for ``reset_scale``."""
    return _SCALE.set(int(factor))


def reset_scale(token) -> None:
    _SCALE.reset(token)


REGISTRY: dict[str, Source] = {}


def source(name: str, category: str, packages, description: str = "", editions=EDITIONS):
    def deco(fn):
        REGISTRY[name] = Source(name, category, tuple(packages), fn, description, tuple(editions))
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

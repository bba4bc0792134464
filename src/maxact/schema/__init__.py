"""The config schemas (``config.schema.yaml``, ``corpus.schema.yaml``): the one place every study key and
its default are written. Snakemake validates a study config against them; the library and the CLI take
their defaults from here instead of restating them."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

DIR = Path(__file__).resolve().parent
CONFIG = DIR / "config.schema.yaml"
CORPUS = DIR / "corpus.schema.yaml"


@functools.cache
def load(path: Path) -> dict:
    """A schema file, parsed once per process (treat it as read-only)."""
    return yaml.safe_load(Path(path).read_text())


def defaults(section: str | None = None, schema: Path = CONFIG) -> dict:
    """Key -> default of the schema's properties (of its top-level ``section`` when given), as fresh copies."""
    props = load(schema)["properties"]
    if section is not None:
        props = props[section]["properties"]
    return {k: copy.deepcopy(v.get("default")) for k, v in props.items()}

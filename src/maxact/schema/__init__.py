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


def prop(section: str | None, key: str, schema: Path = CONFIG) -> dict:
    """The schema of one key (of its top-level ``section`` when given)."""
    props = load(schema)["properties"]
    if section is not None:
        props = props[section]["properties"]
    return props[key]


def bounds(section: str | None, key: str, schema: Path = CONFIG) -> tuple[float | None, float | None, bool]:
    """(lowest, highest, lowest excluded) allowed for a numeric key, as the schema declares them."""
    p = prop(section, key, schema)
    if "exclusiveMinimum" in p:
        return p["exclusiveMinimum"], p.get("maximum"), True
    return p.get("minimum"), p.get("maximum"), False


def describe_range(lo, hi, lo_excluded: bool = False, integer: bool = True) -> str:
    """``an integer from 1 to 65536``, ``a number above 0``: the allowed range in words."""
    what = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        return f"{what} from {lo} to {hi}" if not lo_excluded else f"{what} above {lo} and at most {hi}"
    if lo is not None:
        return f"{what} {'above' if lo_excluded else 'of at least'} {lo}"
    if hi is not None:
        return f"{what} of at most {hi}"
    return what


def check_number(value, section: str | None, key: str, name: str | None = None, schema: Path = CONFIG):
    """``value`` if it lies in the schema's range for ``section.key``; otherwise an InputError naming ``name`` (the
    option or config key the user wrote) and the allowed range. None passes where the key may be null."""
    from maxact.errors import InputError

    p = prop(section, key, schema)
    types = p.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    name = name or (f"{section}.{key}" if section else key)
    if value is None and "null" in types:
        return value
    integer = "integer" in types
    lo, hi, lo_excluded = bounds(section, key, schema)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or float(value).is_integer())
    if ok:
        ok = (lo is None or (value > lo if lo_excluded else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        raise InputError(f"{name} must be {describe_range(lo, hi, lo_excluded, integer)} (got {value!r})")
    return int(value) if integer else value

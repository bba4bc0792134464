"""Config validation and target lists for the Snakemake workflow (imported by rules/common.smk)."""

from __future__ import annotations

from pathlib import Path

from maxact import schema as schemas
from maxact.errors import InputError


class ConfigError(InputError):
    pass


def _load_schema(schema_path) -> tuple[dict, object]:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schema_path = Path(schema_path).resolve()

    def retrieve(uri: str):
        p = schema_path.parent / uri.split("#")[0].replace("file://", "")
        return Resource.from_contents(schemas.load(p.resolve()), default_specification=DRAFT202012)

    return schemas.load(schema_path), Registry(retrieve=retrieve)


def _path(err) -> str:
    parts = [str(p) for p in err.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def schema_errors(config: dict, schema_path) -> list[str]:
    import jsonschema

    schema, registry = _load_schema(schema_path)
    v = jsonschema.Draft202012Validator(schema, registry=registry)
    msgs = []
    for err in sorted(v.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            known = ", ".join(sorted(err.schema.get("properties", {})))
            for k in extra:
                key = f"{where}.{k}" if where != "(top level)" else k
                msgs.append(f"unknown config key '{key}' (known here: {known}); check its spelling")
        elif err.validator == "type":
            msgs.append(f"config key '{where}' has the wrong type: {err.instance!r} is not of type {err.validator_value}")
        else:
            msgs.append(f"config key '{where}': {err.message}")
    return msgs


def _coerce(value, schema: dict, registry_schema: dict):
    """Strings from `--config key={...}` (Snakemake parses nested values as strings) to the schema's type."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if isinstance(value, str):
        if "integer" in types and value.lstrip("-").isdigit():
            return int(value)
        if "number" in types:
            try:
                return float(value)
            except ValueError:
                pass
        if "boolean" in types and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if "null" in types and value.lower() in ("null", "none", "~"):
            return None
        return value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                value[k] = _coerce(v, props[k], registry_schema)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"], registry_schema) for v in value]
    return value


def validate_config(config: dict, schema_path) -> None:
    """Validate once against the schema, filling every default it declares (Snakemake's ``validate``), then
    check what a schema cannot say. Stops before any job with messages that name the offending key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema, _ = _load_schema(schema_path)
    _coerce(config, schema, schema)
    try:
        validate(config, str(schema_path), set_default=True)
    except WorkflowError:
        # Only on failure: the path-aware messages (every error, with the key's full path and the fix).
        msgs = schema_errors(config, schema_path) or ["see the schema error above"]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(msgs)) from None
    _check_semantics(config)


#: The measure.exports each quant_eval format reads a file of (None: no file).
QUANT_FORMAT_EXPORTS = {"fp8_static": "input_scales", "int8_static": "input_scales", "int8_dynamic": None, "fp8_dynamic": None,
                        "smoothquant_w8a8": "smoothquant"}


def quant_eval_runs(config: dict) -> bool:
    """Whether the study runs the quant_eval stage: enabled true, or auto with the input scales exported."""
    q = config.get("quant_eval") or {}
    exports = (config.get("measure") or {}).get("exports") or []
    return q.get("enabled") is True or (q.get("enabled", "auto") == "auto" and "input_scales" in exports)


def _check_semantics(config: dict) -> None:
    names = [c["name"] for c in config.get("checkpoints", [])]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"checkpoint names must be unique; repeated: {', '.join(dup)}")
    for c in config.get("checkpoints", []):
        need = {"hub": ["model_id"], "local": ["path"], "gguf": ["path"], "pip_gguf": ["pip_package"], "random": ["model_type"]}[c["source"]]
        missing = [k for k in need if not c.get(k)]
        if missing:
            raise ConfigError(
                f"checkpoint '{c['name']}' (source {c['source']}) needs config key(s) {', '.join(missing)}"
            )
    q = config.get("quant_eval") or {}
    if q.get("enabled") is True:
        exports = set((config.get("measure") or {}).get("exports") or [])
        need = {f: QUANT_FORMAT_EXPORTS[f] for f in q.get("formats", []) if QUANT_FORMAT_EXPORTS.get(f)}
        need_any = "input_scales"  # the list of calibrated modules that every format quantizes
        lacking = sorted({e for e in [*need.values(), need_any] if e not in exports})
        if lacking:
            raise ConfigError(
                f"quant_eval reads maxact's calibration files, and measure.exports lacks {', '.join(lacking)} "
                f"(formats needing them: {', '.join(f for f, e in need.items() if e in lacking) or 'all, for the list of calibrated layers'}): "
                f"add {', '.join(lacking)} to measure.exports, or set quant_eval.enabled: auto (runs what the exports allow) or false")
    if q:
        if float(q.get("safe_delta_nll", 0.05)) >= float(q.get("breaks_delta_nll", 0.5)):
            raise ConfigError(f"quant_eval.safe_delta_nll ({q.get('safe_delta_nll')}) must be below quant_eval.breaks_delta_nll "
                              f"({q.get('breaks_delta_nll')})")
    for p in config.get("matched_pairs", []):
        for role in ("moe", "dense"):
            if p[role] not in names and not config.get("published", {}).get("include", True):
                raise ConfigError(f"matched_pairs names unknown checkpoint '{p[role]}' as {role}")


def checkpoint_names(config: dict) -> list[str]:
    return [c["name"] for c in config.get("checkpoints", [])]


def checkpoint_entry(config: dict, name: str) -> dict:
    for c in config.get("checkpoints", []):
        if c["name"] == name:
            return c
    raise ConfigError(f"no checkpoint named '{name}' in the config (known: {', '.join(checkpoint_names(config))})")


META_KEYS = ("family", "generation", "role", "params_b", "active_params_b", "main_analysis", "published_name")


def checkpoint_meta(config: dict, name: str) -> dict:
    c = checkpoint_entry(config, name)
    return {k: c.get(k) for k in META_KEYS}


def tokenizer_group(config: dict, name: str) -> str:
    return checkpoint_entry(config, name).get("tokenizer_group") or name


def tokenizer_groups(config: dict) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for n in checkpoint_names(config):
        groups.setdefault(tokenizer_group(config, n), []).append(n)
    return groups


def report_targets(config: dict) -> list[str]:
    reports = config["reports_dir"]
    return [f"{reports}/report.html"]

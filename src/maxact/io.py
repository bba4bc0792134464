"""Atomic file output and hashing: a result file is either complete or absent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Run ``writer(tmp_path)`` on a temp file beside ``path`` then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike):
    """Yield a temp folder beside ``out``; when the block completes it replaces ``out``, else it is removed
    (a cached checkpoint folder is either complete or absent)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(path, w)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Strict JSON: non-finite floats become strings so no reader sees NaN/Infinity tokens."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save(path, save: Callable[[str], None]) -> Path:
    """Atomic wrapper for library writers that take a path (``df.to_parquet``, ``fig.savefig``)."""
    return _atomic(path, save)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def link_or_copy(src, dst) -> Path:
    """``dst`` with ``src``'s bytes: a hard link where the filesystem allows one (no second copy of a large
    calibration file), else a copy. Replaces ``dst`` atomically."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return dst


def mirror_tree(src, dst) -> list[Path]:
    """Every file below ``src`` at the same place below ``dst`` (:func:`link_or_copy`)."""
    src, dst = Path(src), Path(dst)
    return [link_or_copy(p, dst / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]

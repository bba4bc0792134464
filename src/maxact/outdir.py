"""A run owns its output folder: results are written aside and moved into place only when the run succeeded.

``maxact measure --out DIR`` (and ``maxact card``) keep a manifest, ``DIR/maxact_run.json``, of the files they
wrote and of the checkpoint they belong to. A run

- takes the folder's lock (``DIR/.maxact-lock``, released by the system when the process ends, also when killed):
  a second run into the same folder is refused while the first is going on;
- refuses, before any work, a folder that holds another checkpoint's results, or files that no maxact run wrote
  where this run would write its own, unless it is told to overwrite them (``--overwrite``);
- writes every file into a staging folder of its own (``DIR/.maxact-staging-<pid>/``) and moves them into place
  (one ``os.replace`` each) after the whole run succeeded, then removes the files that the folder's manifest says
  an earlier run wrote and this one did not (a stale calibration file of another ``--export`` list, a card of the
  earlier results);
- leaves the earlier results exactly as they were when it fails or is killed (the staging folder is discarded, or
  cleared by the next run);
- keeps its partial state for resuming (``--checkpoint-every``) in ``DIR/.maxact-resume/``, which survives a
  failure and is removed after success.

Files that no manifest lists are never removed, and never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from maxact.errors import InputError
from maxact.io import read_json, write_json

MANIFEST = "maxact_run.json"
STAGING = ".maxact-staging"
RESUME = ".maxact-resume"
LOCK = ".maxact-lock"
#: Files a measure run writes: recognised as maxact's in a folder of results written before manifests existed.
KNOWN = ("activation_stats.json", "per_sample_extremes.parquet", "linear_inputs.safetensors", "prepared.json",
         "calibration.json", "act_scales.pt", "act_scales.pt.json", "imatrix.gguf", "input_scales_int8.safetensors",
         "input_scales_fp8.safetensors", "amax_per_channel.safetensors", "awq_stats.safetensors", "partial_state.pt")
#: What identifies the checkpoint a folder's results belong to (compared before a run overwrites them).
IDENTITY_KEYS = ("checkpoint", "source", "model", "revision", "gguf_file", "shard")


class OutputDirError(InputError):
    pass


def _describe(identity: dict) -> str:
    parts = [f"checkpoint {identity.get('checkpoint')!r}"]
    if identity.get("model") and identity.get("model") != identity.get("checkpoint"):
        parts.append(f"model {identity['model']}")
    for k in ("revision", "gguf_file", "shard"):
        if identity.get(k):
            parts.append(f"{k.replace('_', ' ')} {identity[k]}")
    return ", ".join(parts)


def _legacy_identity(folder: Path) -> dict | None:
    """The identity of maxact results written before manifests existed: only from a readable maxact result."""
    for name in ("activation_stats.json", "prepared.json"):
        try:
            d = read_json(folder / name)
        except (OSError, ValueError):
            continue
        if name == "activation_stats.json" and isinstance(d, dict) and "provenance" in d and "per_layer_stats" in d:
            prov = d["provenance"] or {}
            return {"checkpoint": d.get("checkpoint"), "source": prov.get("source"), "model": prov.get("model_id"),
                    "revision": prov.get("revision")}
        if name == "prepared.json" and isinstance(d, dict) and "load_path" in d and "name" in d:
            return {"checkpoint": d["name"], "source": d.get("source"), "model": d.get("model_id"), "revision": d.get("revision")}
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OwnedDir:
    def __init__(self, path: str | os.PathLike, overwrite: bool = False, option: str = "--out"):
        self.path = Path(path).expanduser()
        self.overwrite = overwrite
        self.option = option
        self.identity: dict = {}
        self._lock = None
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"{option} {self.path} is a file, not a folder: give a folder for the results")

    @property
    def staging_dir(self) -> Path:
        return self.path / f"{STAGING}-{os.getpid()}"

    @property
    def resume_dir(self) -> Path:
        return self.path / RESUME

    def manifest(self) -> dict | None:
        """The folder's manifest; one reconstructed from maxact results written before manifests existed; or None
        (no maxact results here)."""
        m = self.path / MANIFEST
        if m.exists():
            try:
                d = read_json(m)
                if isinstance(d, dict) and isinstance(d.get("files"), list):
                    return d
            except (OSError, ValueError):
                pass
            return {"identity": {}, "files": [], "derived": [], "unreadable": True}
        ident = _legacy_identity(self.path)
        if ident is None:
            return None
        return {"identity": ident, "files": [f for f in KNOWN if (self.path / f).exists()],
                "derived": sorted(p.name for p in self.path.glob("*.activation_card.*")), "reconstructed": True}

    def _take_lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise OutputDirError(f"{self.option} {self.path}: another maxact run (process {holder}) is writing to this "
                                 "folder; wait for it, or give another folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def claim(self, identity: dict, planned: list[str] = ()) -> None:
        """Before any work: take the folder, and refuse another checkpoint's results or files of someone else's that
        this run would write over (``planned``: the names it will write), unless overwriting."""
        self.identity = {k: identity.get(k) for k in IDENTITY_KEYS}
        self._take_lock()
        for p in self.path.glob(f"{STAGING}-*"):  # what killed runs left
            pid = p.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
        old = self.manifest()
        owned = set(old.get("files", [])) | set(old.get("derived", [])) if old else set()
        foreign = sorted(f for f in planned if (self.path / f).exists() and f not in owned)
        if foreign and not self.overwrite:
            raise OutputDirError(f"{self.option} {self.path} holds file(s) that no maxact run wrote and that this run would "
                                 f"write over: {', '.join(foreign)}. Give another folder, or pass --overwrite to replace "
                                 "them (only once this run has succeeded).")
        if old is None:
            return
        theirs = {k: (old.get("identity") or {}).get(k) for k in IDENTITY_KEYS}
        # A folder written before manifests existed tells only some keys: those are compared.
        keys = [k for k in IDENTITY_KEYS if not old.get("reconstructed") or theirs.get(k) is not None]
        if all(theirs.get(k) == self.identity.get(k) for k in keys) and not old.get("unreadable"):
            return
        if self.overwrite:
            shutil.rmtree(self.resume_dir, ignore_errors=True)  # another checkpoint's partial state
            return
        differ = [k for k in keys if theirs.get(k) != self.identity.get(k)] or ["its manifest is unreadable"]
        raise OutputDirError(
            f"{self.option} {self.path} holds the results of another run ({_describe(theirs)}; this run: "
            f"{_describe(self.identity)}; {', '.join(differ)} differ). Give another folder, or pass --overwrite to "
            "replace those results (they are removed only after this run succeeds)."
        )

    @contextlib.contextmanager
    def staging(self):
        """A fresh staging folder of this run; removed when the block ends (the earlier results stay as they were
        unless :meth:`commit` ran)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True)
        try:
            yield self.staging_dir
        finally:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def commit(self) -> list[str]:
        """Move every staged file into place, remove what the manifest says an earlier run wrote and this one did not,
        write the manifest and drop the resume state; the files now owned."""
        old = self.manifest() or {}
        files = sorted(str(p.relative_to(self.staging_dir)) for p in self.staging_dir.rglob("*") if p.is_file())
        previous = set(old.get("files", [])) | set(old.get("derived", []))
        # First a manifest naming both runs' files: a kill while files move leaves a folder the next run can clean.
        write_json(self.path / MANIFEST, {"identity": self.identity, "files": sorted(previous | set(files)), "derived": [],
                                          "committing": True})
        for f in files:
            dest = self.path / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging_dir / f, dest)
        for f in sorted(previous - set(files)):
            if Path(f).name != f or f.startswith("."):  # a manifest names files of this folder only
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (self.path / f).unlink()
        write_json(self.path / MANIFEST, {"identity": self.identity, "files": files, "derived": []})
        shutil.rmtree(self.resume_dir, ignore_errors=True)
        return files

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def register_derived(folder: str | os.PathLike, names: list[str]) -> None:
    """Record files derived from a folder's results (an activation card): the next run that replaces the
    results removes them unless it writes them again."""
    folder = Path(folder)
    m = folder / MANIFEST
    if not m.exists():
        return
    d = json.loads(m.read_text())
    d["derived"] = sorted(set(d.get("derived", [])) | set(names))
    write_json(m, d)

"""A run owns its output folder: results are written aside and moved into place only when the run succeeded.

``maxact measure --out DIR`` (and ``maxact card``) keep a manifest, ``DIR/maxact_run.json``, of the files they
wrote and of the checkpoint they belong to. A run

- refuses, before any work, a folder that holds another checkpoint's results unless it is told to overwrite them;
- writes every file into ``DIR/.maxact-staging/`` and moves them into place (one ``os.replace`` each) after the
  whole run succeeded, then removes the files that an earlier run wrote and this one did not (a stale
  calibration file of another ``--export`` list, a card of the earlier results);
- leaves the earlier results exactly as they were when it fails or is killed (the staging folder is discarded,
  and cleared at the start of the next run);
- keeps its partial state for resuming (``--checkpoint-every``) in ``DIR/.maxact-resume/``, which survives a
  failure and is removed after success.

Files in the folder that no maxact run wrote are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from maxact.errors import InputError
from maxact.io import read_json, write_json

MANIFEST = "maxact_run.json"
STAGING = ".maxact-staging"
RESUME = ".maxact-resume"
#: Files a measure run writes: recognised as maxact's in a folder without a manifest (written before it existed).
KNOWN = ("activation_stats.json", "per_sample_extremes.parquet", "linear_inputs.safetensors", "prepared.json",
         "calibration.json", "act_scales.pt", "act_scales.pt.json", "imatrix.gguf", "input_scales_int8.safetensors",
         "input_scales_fp8.safetensors", "amax_per_channel.safetensors", "awq_stats.safetensors", "partial_state.pt")
#: What identifies the checkpoint a folder's results belong to (compared before a run overwrites them).
IDENTITY_KEYS = ("checkpoint", "source", "model", "gguf_file")


class OutputDirError(InputError):
    pass


def _describe(identity: dict) -> str:
    parts = [f"checkpoint {identity.get('checkpoint')!r}"]
    if identity.get("model") and identity.get("model") != identity.get("checkpoint"):
        parts.append(f"model {identity['model']}")
    if identity.get("gguf_file"):
        parts.append(f"GGUF file {identity['gguf_file']}")
    return ", ".join(parts)


class OwnedDir:
    def __init__(self, path: str | os.PathLike, overwrite: bool = False, option: str = "--out"):
        self.path = Path(path).expanduser()
        self.overwrite = overwrite
        self.option = option
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"{option} {self.path} is a file, not a folder: give a folder for the results")

    @property
    def staging_dir(self) -> Path:
        return self.path / STAGING

    @property
    def resume_dir(self) -> Path:
        return self.path / RESUME

    def manifest(self) -> dict | None:
        """The folder's manifest, or one reconstructed from results written before manifests existed, or None."""
        m = self.path / MANIFEST
        if m.exists():
            try:
                return read_json(m)
            except (OSError, ValueError):
                return {"identity": {}, "files": [], "unreadable": True}
        present = [f for f in KNOWN if (self.path / f).exists()]
        if not present:
            return None
        ident: dict = {}
        for name in ("activation_stats.json", "prepared.json"):
            try:
                d = read_json(self.path / name)
            except (OSError, ValueError):
                continue
            prov = d.get("provenance") or {}
            ident = {"checkpoint": d.get("checkpoint") or d.get("name"), "source": prov.get("source") or d.get("source"),
                     "model": prov.get("model_id") or d.get("model_id")}
            break
        return {"identity": ident, "files": present, "derived": sorted(p.name for p in self.path.glob("*.activation_card.*")),
                "reconstructed": True}

    def claim(self, identity: dict) -> None:
        """Before any work: refuse a folder that holds another checkpoint's results (unless overwriting)."""
        self.identity = {k: identity.get(k) for k in IDENTITY_KEYS}
        old = self.manifest()
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
        """A fresh staging folder; removed when the block fails (the earlier results stay as they were)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)  # what a killed run left
        self.staging_dir.mkdir(parents=True)
        try:
            yield self.staging_dir
        finally:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def commit(self) -> list[str]:
        """Move every staged file into place, remove what an earlier run wrote and this one did not, write the
        manifest and drop the resume state; the files now owned."""
        old = self.manifest() or {}
        files = sorted(str(p.relative_to(self.staging_dir)) for p in self.staging_dir.rglob("*") if p.is_file())
        for f in files:
            dest = self.path / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging_dir / f, dest)
        stale = set(old.get("files", [])) | set(old.get("derived", []))
        for f in sorted(stale - set(files)):
            with contextlib.suppress(FileNotFoundError):
                (self.path / f).unlink()
        write_json(self.path / MANIFEST, {"identity": self.identity, "files": files, "derived": []})
        shutil.rmtree(self.resume_dir, ignore_errors=True)
        return files


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

"""Fetch Debian packages (``apt-get download`` + ``dpkg-deb -x``) and wheels (``pip download --no-deps``)
into a cache folder. Nothing is installed system-wide."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


class FetchError(RuntimeError):
    pass


class Fetcher:
    def __init__(self, cache_dir, pins: dict | None = None, log=None):
        self.cache = Path(cache_dir)
        self.debs = self.cache / "debs"
        self.xdir = self.cache / "x"
        self.wheels = self.cache / "wheels"
        for d in (self.debs, self.xdir, self.wheels):
            d.mkdir(parents=True, exist_ok=True)
        self.pins = dict(pins or {})
        self.versions: dict[str, str] = {}  # package -> version actually used
        self.kinds: dict[str, str] = {}  # package -> "deb" | "wheel" | "local"
        self.pin_mismatch: dict[str, str] = {}  # package -> pinned version that could not be fetched
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    # ------------------------------------------------------------ debian
    def _deb_file(self, pkg: str) -> Path | None:
        files = sorted(self.debs.glob(f"{pkg}_*.deb"))
        pin = self.pins.get(pkg)
        if pin:
            files = [f for f in files if self._deb_version(f) == pin]
        return files[-1] if files else None

    @staticmethod
    def _deb_version(f: Path) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(f), "Version"], check=True, capture_output=True,
                              text=True).stdout.strip()

    def deb(self, pkg: str) -> Path:
        """Root folder of the extracted package ``pkg`` (downloaded on first use)."""
        f = self._deb_file(pkg)
        if f is None:
            if not shutil.which("apt-get"):
                raise FetchError(f"apt-get is not available to download Debian package {pkg!r}")
            spec = f"{pkg}={self.pins[pkg]}" if pkg in self.pins else pkg
            self.log(f"[corpus_build] apt-get download {spec}")
            p = subprocess.run(["apt-get", "download", "-q", spec], cwd=self.debs, capture_output=True, text=True)
            if p.returncode != 0 and pkg in self.pins:
                # mirrors serve only current versions: fall back, and record the mismatch
                self.log(f"[corpus_build] WARNING: {spec} is not available ({p.stderr.strip()[-200:]}); "
                         f"using the mirror's current version")
                self.pin_mismatch[pkg] = self.pins.pop(pkg)
                spec = pkg
                p = subprocess.run(["apt-get", "download", "-q", spec], cwd=self.debs, capture_output=True, text=True)
            if p.returncode != 0:
                raise FetchError(f"apt-get download {spec} failed (run 'apt-get update' first?): {p.stderr.strip()[-500:]}")
            f = self._deb_file(pkg)
            if f is None:
                raise FetchError(f"apt-get download {spec} produced no .deb in {self.debs}")
        version = self._deb_version(f)
        root = self.xdir / pkg
        marker = root / ".extracted-version"
        if not (marker.exists() and marker.read_text() == version):
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(f), str(root)], check=True)
            marker.write_text(version)
        self.versions[pkg] = version
        self.kinds[pkg] = "deb"
        return root

    def deb_copyright(self, pkg: str) -> str | None:
        """The package's Debian copyright file; follows a /usr/share/doc/<pkg> symlink to its sibling package."""
        root = self.deb(pkg)
        for cand in sorted(glob.glob(str(root / "usr/share/doc/*/copyright"))):
            return Path(cand).read_text("utf-8", "replace")
        link = root / "usr/share/doc" / pkg
        if link.is_symlink():
            target = os.readlink(link).rstrip("/").rsplit("/", 1)[-1]
            if target and target != pkg:
                try:
                    return self.deb_copyright(target)
                except FetchError:
                    return None
        return None

    # ------------------------------------------------------------ wheels
    def _cached(self, name: str, version_of) -> tuple[str, Path] | None:
        """The last (by file name) downloaded file of ``name`` at its pinned version, if any.

        ``version_of(path)`` gives the version a file holds, or None when it is not that kind of file.
        """
        norm = re.sub(r"[-_.]+", "_", name).lower()
        pin = self.pins.get(name)
        out = []
        for f in sorted(self.wheels.iterdir()):
            if not re.sub(r"[-_.]+", "_", f.name).lower().startswith(norm + "_"):
                continue
            ver = version_of(f)
            if ver is not None and (pin is None or ver == pin):
                out.append((ver, f))
        return out[-1] if out else None

    def wheel(self, name: str) -> Path:
        def find():
            return self._cached(name, lambda f: f.name.split("-")[1] if f.suffix == ".whl" else None)

        hit = find()
        if hit is None:
            spec = f"{name}=={self.pins[name]}" if name in self.pins else name
            self.log(f"[corpus_build] pip download --no-deps {spec}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   "-d", str(self.wheels)]
            p = subprocess.run(cmd + [spec], capture_output=True, text=True)
            if p.returncode != 0 and name in self.pins:
                self.log(f"[corpus_build] WARNING: {spec} is not available; using the index's current version")
                self.pin_mismatch[name] = self.pins.pop(name)
                spec = name
                p = subprocess.run(cmd + [spec], capture_output=True, text=True)
            if p.returncode != 0:
                raise FetchError(f"pip download {spec} failed: {p.stderr.strip()[-500:]}")
            hit = find()
            if hit is None:
                raise FetchError(f"pip download {spec} produced no wheel in {self.wheels}")
        self.versions[name] = hit[0]
        self.kinds[name] = "wheel"
        return hit[1]

    def wheel_license(self, name: str) -> str | None:
        z = zipfile.ZipFile(self.wheel(name))
        for n in sorted(z.namelist()):
            base = n.rsplit("/", 1)[-1].upper()
            if ".dist-info/" in n and (base.startswith("LICENSE") or base.startswith("COPYING")):
                return z.read(n).decode("utf-8", "replace")
        return None

    def sdist(self, name: str) -> Path:
        """Folder of the unpacked source distribution of ``name`` (for pure-Python helpers like pysword,
        which are used from the cache and never installed)."""
        def find():
            return self._cached(name, lambda f: f.name[: -len(".tar.gz")].rsplit("-", 1)[-1] if f.name.endswith(".tar.gz") else None)

        hit = find()
        if hit is None:
            spec = f"{name}=={self.pins[name]}" if name in self.pins else name
            self.log(f"[corpus_build] pip download --no-deps --no-binary=:all: {spec}")
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-q",
                                "-d", str(self.wheels), spec], capture_output=True, text=True)
            if p.returncode != 0:
                raise FetchError(f"pip download {spec} failed: {p.stderr.strip()[-500:]}")
            hit = find()
            if hit is None:
                raise FetchError(f"pip download {spec} produced no sdist in {self.wheels}")
        ver, f = hit
        root = self.xdir / f"{name}-{ver}"
        if not (root / ".extracted").exists():
            import tarfile

            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            with tarfile.open(f) as tf:
                tf.extractall(root, filter="data")
            (root / ".extracted").write_text(ver)
        self.versions[name] = ver
        self.kinds[name] = "sdist"
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
        return subdirs[0] if len(subdirs) == 1 else root

    def local(self, name: str, version: str):
        self.versions[name] = version
        self.kinds[name] = "local"

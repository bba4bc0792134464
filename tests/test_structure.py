"""The package's shape: imports run one way (no cycle, no private name across modules, layers only
downward: tools/import_graph.py) and the linter is clean (ruff, configured in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_graph_has_no_cycle_private_import_or_upward_import():
    p = subprocess.run([sys.executable, str(REPO / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: ./install.sh --test installs it (the [test] extra)")
    p = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_import_graph_check_finds_a_cycle(tmp_path):
    """The checker itself: a two-module cycle and a private import in a throwaway package are reported."""
    pkg = tmp_path / "src" / "maxact"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from maxact.models.b import _hidden\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from maxact.models import a\n_hidden = 1\n")
    (tmp_path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "import_graph.py", tmp_path / "tools" / "import_graph.py")
    p = subprocess.run([sys.executable, str(tmp_path / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert p.returncode == 1
    assert "cycle: maxact.models.a -> maxact.models.b -> maxact.models.a" in p.stdout
    assert "private name: maxact.models.a imports maxact.models.b._hidden" in p.stdout

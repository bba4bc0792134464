"""Vendor more of the paper's published results from a checkout of its public repository (clx1415926/Max_act_llm):

- `results/<family>/json/<model>_top5_stats.json` (27 files): the top values per point and the global list, as
  `resources/published/max_act_llm/<family>/<model>_top5_stats.json.gz`;
- `results/supplementary/exp_A/<model>_s<size>_r<repeat>_activation_stats.json` (40 files): the paper's bootstrap
  experiment A, as `resources/published/max_act_llm/supplementary/exp_A/...json.gz`.

The bytes are the published ones (gzip -9, no name or time in the header: the same input gives the same file); the
manifest `resources/published/max_act_llm/VENDORED.json` names the repository commit and each original file's
sha256 and size, which `tests/study/test_topk.py` checks.

    python tools/vendor_published.py /path/to/Max_act_llm     # a git checkout or a bare mirror
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "resources" / "published" / "max_act_llm"


def git(repo: Path, *args) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def main(argv=None) -> int:
    repo = Path((argv or sys.argv[1:])[0])
    commit = git(repo, "rev-parse", "HEAD").decode().strip()
    names = git(repo, "ls-tree", "-r", "--name-only", "HEAD", "results").decode().splitlines()
    wanted = [n for n in names if n.endswith("_top5_stats.json") and "/json/" in n and "bootstrap" not in n]
    wanted += [n for n in names if n.startswith("results/supplementary/exp_A/") and n.endswith("_activation_stats.json")]
    files = []
    for name in sorted(wanted):
        data = git(repo, "show", f"HEAD:{name}")
        parts = Path(name).parts  # results/<family>/json/<file> or results/supplementary/exp_A/<file>
        rel = Path(parts[1], parts[-1]) if parts[2] == "json" else Path(*parts[1:])
        out = DEST / rel.with_name(rel.name + ".gz")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        files.append({"file": str(out.relative_to(DEST)), "source": name, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data)})
    manifest = {"repository": "https://github.com/clx1415926/Max_act_llm", "commit": commit,
                "note": "gzip of the published files, byte for byte (sha256 of the uncompressed original)", "files": files}
    (DEST / "VENDORED.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(files)} files from {commit[:12]} into {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Partial statistics on disk every N batches, so that an interrupted measurement continues where it stopped.

A saved state is used only when it was taken over the same batches and with everything that shapes the
statistics unchanged (checkpoint, corpus, dtype, device kind, attention, statistic settings); otherwise the
run starts afresh and says why. The file is written atomically and removed once the result is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from maxact.io import atomic_save

log = logging.getLogger(__name__)

FILE = "partial_state.pt"


class ResumeFile:
    def __init__(self, out_dir: str | Path, every: int, batches: list[list[int]], identity: dict):
        self.path = Path(out_dir) / FILE
        self.every = int(every or 0)
        self.batches = batches
        self.identity = {k: str(v) for k, v in sorted(identity.items())}  # plain strings: weights_only loading

    def restore(self, meas, device) -> int:
        """Load a matching saved state into ``meas``; the index of the first batch still to run (0: none)."""
        if not self.every or not self.path.exists():
            return 0
        saved = torch.load(self.path, map_location=device, weights_only=True)
        if saved.get("batches") != self.batches:
            log.warning("%s: saved state is for other batches; starting afresh", self.path)
            return 0
        if saved.get("identity") != self.identity:
            changed = sorted(k for k in set(self.identity) | set(saved.get("identity") or {})
                             if (saved.get("identity") or {}).get(k) != self.identity.get(k))
            log.warning("%s: saved state was taken with different %s; starting afresh", self.path, ", ".join(changed))
            return 0
        meas.restore(saved["state"])
        start = int(saved["next_batch"])
        log.info("resuming from batch %d of %d (%s)", start, len(self.batches), self.path)
        return start

    def after_batch(self, meas, bi: int) -> None:
        if self.every and (bi + 1) % self.every == 0 and bi + 1 < len(self.batches):
            state = {"batches": self.batches, "identity": self.identity, "next_batch": bi + 1, "state": meas.state()}
            atomic_save(self.path, lambda tmp: torch.save(state, tmp))

    def remove(self) -> None:
        if self.path.exists():
            os.unlink(self.path)

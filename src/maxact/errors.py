"""The two kinds of failure and their exit codes (one rule, written in the README):

- :class:`InputError` (exit 2): the command, the config or an input file is wrong, and the message names it
  and the fix. Raised before any work where that can be known; nothing computed is lost.
- anything else (exit 1): the run started and failed (a kernel error, the disk, an interruption).
"""

from __future__ import annotations

#: ``maxact`` exit codes.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(ValueError):
    """A usage, config or input error: the message names what is wrong and how to fix it."""

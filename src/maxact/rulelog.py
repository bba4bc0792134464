"""Route a rule script's logging, warnings and tracebacks to its Snakemake ``log:`` file."""

from __future__ import annotations

import logging
import sys
import traceback
from contextlib import contextmanager


@contextmanager
def rule_logging(snakemake):
    path = snakemake.log[0] if len(snakemake.log) else None
    stream = open(path, "w", buffering=1) if path else sys.stderr
    old_err = sys.stderr
    sys.stderr = stream  # tqdm and warnings write here
    logging.basicConfig(level=logging.INFO, stream=stream, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.captureWarnings(True)
    if path:  # maxact's own warnings (a truncated sample, a smaller INT-8 split) also on the console, not only in the log
        console = logging.StreamHandler(old_err)
        console.setLevel(logging.WARNING)
        console.addFilter(lambda r: r.name.startswith("maxact"))
        console.setFormatter(logging.Formatter(f"maxact ({snakemake.rule}) %(levelname)s: %(message)s"))
        logging.getLogger().addHandler(console)
    try:
        yield logging.getLogger(f"maxact.rule.{snakemake.rule}")
    except BaseException:
        traceback.print_exc(file=stream)
        stream.flush()
        # Also show the reason on the console, not only in the log file.
        print(f"rule {snakemake.rule} failed; see {path}:\n{traceback.format_exc().splitlines()[-1]}", file=old_err)
        raise
    finally:
        sys.stderr = old_err
        if path:
            stream.close()

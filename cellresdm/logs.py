"""Logging for pipeline steps: one log file per job under results/logs/, progress bars included."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from cellresdm.errors import CellResDMError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def step_logging(log_file: str | Path | None, name: str = "cellresdm") -> Iterator[logging.Logger]:
    """Send log records, warnings and stderr (tqdm progress bars) of one step to ``log_file``.

    Errors are logged before they propagate, so the log alone explains a failure: bad input as its one-line
    message, anything else with its traceback.
    Without a file, records go to stderr.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        stream = None
    else:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "w", buffering=1)  # noqa: SIM115 (closed below, after the redirect ends)
        handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    logger = logging.getLogger(name)
    try:
        with contextlib.redirect_stderr(stream) if stream else contextlib.nullcontext():
            try:
                yield logger
            except CellResDMError as exc:  # bad input or config: the message says it all
                logger.error("%s", exc)
                raise
            except Exception:
                logger.exception("step failed")
                raise
    finally:
        root.removeHandler(handler)
        if stream is not None:
            stream.close()

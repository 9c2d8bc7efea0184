"""Where the library's log messages go on the command line (``--verbose``)."""

from __future__ import annotations

import logging
import os
import sys

_LOG_HANDLER: logging.Handler | None = None


def setup_logging(verbose: bool) -> None:
    """Route the library's logging to stderr: with ``--verbose`` medprep's INFO messages and other libraries'
    warnings (dask's among them: the root handler is in place before dask starts, so its loggers propagate here);
    without it, errors only. Python warnings of third-party code go the same way."""
    global _LOG_HANDLER
    root = logging.getLogger()
    if _LOG_HANDLER is not None:
        root.removeHandler(_LOG_HANDLER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda r: r.levelno >= (logging.INFO if verbose and r.name.startswith("medprep")
                                              else logging.WARNING if verbose else logging.ERROR))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    _LOG_HANDLER = handler
    logging.captureWarnings(True)
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning" if verbose else "error"  # dask worker processes

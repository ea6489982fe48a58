"""Logging set-up for the command line: tidegate's own loggers only, never the root logger."""

from __future__ import annotations

import logging
import sys

__all__ = ["TRACE", "setup_logging"]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}


def setup_logging(level: str, access_log: bool) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    for name in ("tidegate", "tidegate.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "tidegate" else []
        logger.setLevel(LEVELS[level])
        logger.propagate = name != "tidegate"
    access = logging.getLogger("tidegate.access")
    access.handlers[:] = []
    access.setLevel(LEVELS[level] if access_log else logging.CRITICAL + 1)
    access.propagate = True

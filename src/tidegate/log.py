"""Logging set-up for the command line: tidegate's own loggers only, never the root logger."""

from __future__ import annotations

import json
import logging
import os
import sys

from .config import ConfigError, LoggingSettings

__all__ = ["TRACE", "configure_logging", "setup_logging"]

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


def configure_logging(settings: LoggingSettings) -> None:
    """tidegate's own set-up, JSON access lines if asked, then the user's ``--log-config`` over it.

    Raises :class:`~tidegate.config.ConfigError` naming ``log_config`` if that file cannot be applied."""
    setup_logging(settings.log_level, settings.access_log)
    if settings.access_log_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("tidegate.access")
        access.handlers[:] = [handler]
        access.propagate = False
    if settings.log_config is not None:
        apply_log_config(settings.log_config)


def apply_log_config(path: str) -> None:
    """Apply a logging configuration file: dictConfig from .json or .yaml/.yml, fileConfig from anything else."""
    import logging.config

    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(json.load(file))
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"log_config: {path!r} is YAML, which needs PyYAML installed") from None
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(yaml.safe_load(file))
        else:
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"log_config: {path!r} not found") from None
    except Exception as exc:
        raise ConfigError(f"log_config: cannot apply {path!r}: {type(exc).__name__}: {exc}") from None

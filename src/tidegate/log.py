"""Logging set-up for the command line: tidegate's own loggers only, never the root logger."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys

from .config import ConfigError, LoggingSettings

__all__ = ["TRACE", "configure_logging", "setup_logging"]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}


_COLORS = {"TRACE": "\x1b[34m", "DEBUG": "\x1b[36m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m",
           "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}


class _ColorFormatter(logging.Formatter):
    """The level name in colour (the padding kept outside the escape codes, so that columns still line up)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = record.levelname
        color = _COLORS.get(name)
        if color is None:
            return super().formatMessage(record)
        record.levelname = f"{color}{name}\x1b[0m{' ' * max(0, 7 - len(name))}"
        try:
            return super().formatMessage(record)
        finally:
            record.levelname = name


def _stream(path: str | None) -> logging.Handler:
    """A handler writing to ``path`` (appended; reopened when logrotate moves or removes it), or to stderr for None
    and '-'."""
    if path is None or path == "-":
        return logging.StreamHandler(sys.stderr)
    try:
        return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot open the log file {path!r}: {exc.strerror}") from None


def _colors_wanted(use_colors: bool | None, handler: logging.Handler) -> bool:
    if use_colors is not None:
        return use_colors
    stream = getattr(handler, "stream", None)
    return (not os.environ.get("NO_COLOR") and type(handler) is logging.StreamHandler and stream is not None
            and stream.isatty())


def _set_handlers(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Give ``logger`` these handlers; the ones it leaves are closed (a log file re-configured away, say on SIGHUP,
    is not left open)."""
    for old in logger.handlers:
        if old not in handlers:
            old.close()
    logger.handlers[:] = handlers


def setup_logging(level: str, access_log: bool, *, error_logfile: str | None = None,
                  use_colors: bool | None = None, worker: int | None = None) -> None:
    """tidegate's loggers; a worker process's server lines carry ``[worker N]`` (its access lines do not: their
    format is the user's).

    At ``debug`` the server logs each connection's open, protocol and close lines (``tidegate.error``); at
    ``trace`` also every ASGI message (``tidegate.asgi``, which takes its level from ``tidegate``)."""
    handler = _stream(error_logfile)
    who = "" if worker is None else f"[worker {worker}] "
    if _colors_wanted(use_colors, handler):
        formatter: logging.Formatter = _ColorFormatter(f"%(asctime)s %(levelname)s {who}%(message)s",
                                                       "%Y-%m-%d %H:%M:%S")
    else:
        formatter = logging.Formatter(f"%(asctime)s %(levelname)-7s {who}%(message)s", "%Y-%m-%d %H:%M:%S")
    handler.setFormatter(formatter)
    for name in ("tidegate", "tidegate.error"):
        logger = logging.getLogger(name)
        _set_handlers(logger, [handler] if name == "tidegate" else [])
        logger.setLevel(LEVELS[level])
        logger.propagate = name != "tidegate"
    asgi = logging.getLogger("tidegate.asgi")
    _set_handlers(asgi, [])
    asgi.setLevel(logging.NOTSET)
    asgi.propagate = True
    access = logging.getLogger("tidegate.access")
    _set_handlers(access, [])
    access.setLevel(LEVELS[level] if access_log else logging.CRITICAL + 1)
    access.propagate = True
    if who:
        plain = _stream(error_logfile)
        plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
        _set_handlers(access, [plain])
        access.propagate = False


def configure_logging(settings: LoggingSettings, worker: int | None = None) -> None:
    """tidegate's own set-up, JSON access lines if asked, then the user's ``--log-config`` over it.

    Raises :class:`~tidegate.config.ConfigError` naming ``log_config`` if that file cannot be applied."""
    setup_logging(settings.log_level, settings.access_log, error_logfile=settings.error_logfile,
                  use_colors=settings.use_colors, worker=worker)
    if settings.access_log_json or settings.access_logfile is not None:
        # access lines on their own: a file of their own, or JSON lines without the level and time
        handler = _stream(settings.access_logfile)
        if settings.access_log_json:
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
        access = logging.getLogger("tidegate.access")
        _set_handlers(access, [handler])
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

"""Run tidegate as its settings say: in this process, or under the supervisor (workers, reload, metrics)."""

from __future__ import annotations

from typing import Any

from .config import Config, ConfigError

__all__ = ["run", "run_config", "uses_supervisor"]


def uses_supervisor(config: Config) -> bool:
    """Worker processes (also for --max-requests alone), reload and the metrics endpoint are run by a
    supervising parent process."""
    return (config.workers.workers is not None or config.workers.max_requests > 0 or config.reload.reload
            or config.metrics.bind is not None)


def run_config(config: Config, app: Any = None) -> int:
    """Serve as ``config`` says; return the process exit code."""
    if uses_supervisor(config):
        if app is not None:
            raise ConfigError("workers, max_requests, reload and metrics_bind need the app as an import string "
                              "('module:attr'), since each worker process imports it")
        from .supervisor import supervise

        return supervise(config)
    from .runner import run_config as run_here

    return run_here(config, app)


def run(app: Any = None, *, config: Config | None = None, **settings: Any) -> None:
    """Serve an app until SIGINT/SIGTERM; raise ``SystemExit`` with a non-zero code on failure.

    ``app`` is an ASGI callable or a ``"module:attribute"`` string; ``settings`` are flat setting names as the
    CLI spells them (``port=8080``, ``timeout_keep_alive=10``, ``workers=4``).
    """
    code = run_config(Config.for_run(app, config, settings), app=None if isinstance(app, str) else app)
    if code:
        raise SystemExit(code)

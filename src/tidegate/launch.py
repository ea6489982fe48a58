"""Run tidegate as its settings say: in this process, or under the supervisor (workers, reload, metrics)."""

from __future__ import annotations

from typing import Any

from .config import Config, ConfigError

__all__ = ["run", "run_config", "uses_supervisor"]


def uses_supervisor(config: Config) -> bool:
    """Worker processes (also for --max-requests, --workers-max-rss or --workers-lifetime alone), reload and the
    metrics endpoint are run by a supervising parent process."""
    workers = config.workers
    return (workers.workers is not None or workers.max_requests > 0 or workers.workers_max_rss is not None
            or workers.workers_lifetime is not None or config.reload.reload or config.metrics.bind is not None)


def run_config(config: Config, app: Any = None) -> int:
    """Serve as ``config`` says; return the process exit code."""
    if uses_supervisor(config):
        if app is not None:
            raise ConfigError("workers, max_requests, workers_max_rss, workers_lifetime, reload and metrics_bind "
                              "need the app as an import string ('module:attr'), since each worker process "
                              "imports it")
        from .supervisor import supervise

        return supervise(config)
    from .runner import run_config as run_here

    return run_here(config, app)


def run(app: Any = None, *, config: Config | None = None, **settings: Any) -> None:
    """Serve an app as the ``tidegate`` command does, until SIGINT or SIGTERM stops it gracefully.

    It blocks, and returns once the server has shut down cleanly.  With ``workers``, ``max_requests``, ``reload`` or
    ``metrics_bind`` it runs the supervisor and its worker processes, each of which imports the app itself: ``app``
    must then be an import string.

    Args:
        app: The application: an ASGI 3 callable (an ASGI 2 class or a WSGI callable is recognised, as
            ``--interface auto`` does), or an import string ``"module:attribute"``.  With ``config``, an import
            string here is not read: the ``app`` setting of ``config`` names the app to import.
        config: The settings to start from, for instance a ``Config.from_flat(...)``; ``settings`` change some of
            them.  Without it, the defaults.
        **settings: Settings named as the command line flags, with ``_`` for ``-``: ``port=8080``,
            ``timeout_keep_alive=10``, ``workers=4``, ``proxy_headers=True``.

    Raises:
        SystemExit: The server could not start or stopped on an error; its ``code`` is the command line's exit
            code: ``1`` the app could not be imported, ``3`` its lifespan startup failed, ``4`` a listener's
            address is already in use, ``2`` another setting could not be applied (a TLS file that cannot be read).
        ConfigError: A setting is unknown or has a value it cannot take, or the app is a callable where the
            settings need an import string.

    Example:
        ```python
        import tidegate

        tidegate.run("myproject.asgi:application", port=8080, workers=4)
        ```
    """
    code = run_config(Config.for_run(app, config, settings), app=None if isinstance(app, str) else app)
    if code:
        raise SystemExit(code)

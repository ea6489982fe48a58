"""A gunicorn worker class, for deployments that keep gunicorn's arbiter: ``gunicorn -k tidegate.workers.Worker
myapp:app``.

The arbiter binds the listeners, forks the workers, replaces those that die or stop heart-beating, and takes the
signals; each worker serves the app gunicorn loaded (ASGI 3, ASGI 2 or WSGI, told apart as tidegate always does)
on the sockets it inherited, with tidegate's server.

Settings: the gunicorn settings tidegate has an equivalent of are mapped (:func:`gunicorn_settings`); tidegate's
other settings come from its usual sources, ``TIDEGATE_*`` variables and ``tidegate.toml`` (or ``[tool.tidegate]``
in ``pyproject.toml``), below the mapped ones.  Logging is gunicorn's: tidegate's lines go to gunicorn's error
log, its access lines to gunicorn's access log (on when gunicorn's is: ``--access-logfile``, a logging config,
syslog).

Signals, as gunicorn's own workers take them: SIGTERM stops gracefully (the listeners close, connections drain,
lifespan shutdown runs); SIGQUIT and SIGINT stop at once (connections are cut, lifespan shutdown still runs);
SIGUSR1 reopens the log files; SIGABRT, the arbiter's ``--timeout`` kill, exits at once, even from a blocked loop.
A lifespan startup failure exits with gunicorn's "worker failed to boot" code, which stops the arbiter rather
than have it start the worker again and again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.workers.base import Worker as GunicornWorker

from .config import Config, ConfigError
from .log import configure_logging
from .runner import add_signal_handlers, new_event_loop, set_gc_threshold
from .runtime.context import ConnectionRegistry, ServerContext
from .runtime.lifespan import LifespanFailure
from .runtime.server import serve
from .sources import resolve
from .supervisor.worker import request_counter

__all__ = ["WORKER_BOOT_ERROR", "Worker", "gunicorn_settings"]

#: the exit code gunicorn's arbiter takes for "worker failed to boot": it stops instead of starting another
WORKER_BOOT_ERROR = 3
#: the share of ``graceful_timeout`` spent draining connections: the arbiter kills a worker still running when
#: ``graceful_timeout`` is over, so the rest is left for lifespan shutdown
DRAIN_SHARE = 0.9
#: gunicorn's ceiling on the number of request header fields (``limit_request_fields`` 0 or above it)
MAX_HEADER_FIELDS = 32768
_CERT_REQS = {0: "none", 1: "optional", 2: "required"}
#: gunicorn settings (of its newer releases) that are tidegate settings under another name
_RENAMED = {
    "root_path": "root_path",
    "asgi_lifespan": "lifespan",
    "asgi_loop": "loop",
    "websocket_max_message_size": "ws_max_size",
    "http2_max_concurrent_streams": "h2_max_concurrent_streams",
    "http2_max_header_list_size": "h2_max_header_list_size",
}


def gunicorn_settings(cfg: Any, base: Config) -> dict[str, Any]:
    """tidegate's flat settings for the gunicorn settings ``cfg`` that tidegate has an equivalent of (``base``
    gives the limits a gunicorn "unlimited" 0 stands for)."""
    ips = cfg.forwarded_allow_ips
    trusted = [ip.strip() for ip in (ips.split(",") if isinstance(ips, str) else ips) if ip.strip()]
    fields = cfg.limit_request_fields
    settings: dict[str, Any] = {
        "backlog": cfg.backlog,
        "timeout_graceful_shutdown": cfg.graceful_timeout * DRAIN_SHARE,
        "limit_request_line": cfg.limit_request_line or base.limits.request_headers,
        "limit_request_header_count": fields if 0 < fields <= MAX_HEADER_FIELDS else MAX_HEADER_FIELDS,
        "limit_request_field_size": cfg.limit_request_field_size,
        "limit_connections": cfg.worker_connections,
        # gunicorn believes the scheme headers of these proxies, and of any peer on a UNIX socket
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join([*trusted, "unix"]),
    }
    if cfg.keepalive > 0:  # gunicorn's 0 turns keep-alive off, which tidegate does not do: its default stays
        settings["timeout_keep_alive"] = float(cfg.keepalive)
    if cfg.threads > 1:
        settings["threads"] = cfg.threads
    if cfg.certfile or cfg.keyfile:
        settings.update(ssl_certfile=cfg.certfile, ssl_keyfile=cfg.keyfile, ssl_ca_certs=cfg.ca_certs,
                        ssl_cert_reqs=_CERT_REQS.get(cfg.cert_reqs, "required"), ssl_ciphers=cfg.ciphers)
    for name, flat in _RENAMED.items():
        if name in cfg.settings:
            settings[flat] = cfg.settings[name].get()
    return settings


class _Forward(logging.Handler):
    """Hands tidegate's records to one of gunicorn's loggers, so that they go wherever gunicorn's own lines go."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class Worker(GunicornWorker):
    """A gunicorn worker that serves with tidegate (see the module's documentation)."""

    alive: bool  # gunicorn's: False once the worker is to stop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = Config()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._registry: ConnectionRegistry | None = None
        self._serving = False
        self._stopping = False
        self._quick = False
        self._heartbeat: asyncio.TimerHandle | None = None
        self._early: list[int] = []  # signals that came before the loop ran

    def init_process(self) -> None:
        try:
            resolved = resolve()
            self.config = resolved.config.replace(**gunicorn_settings(self.cfg, resolved.config))
            self._route_logging()
            for note in resolved.notes:
                self.log.warning("%s", note)
            self.loop = new_event_loop(self.config.app.loop)
        except ConfigError as exc:
            self.log.error("%s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        asyncio.set_event_loop(self.loop)
        if not self.cfg.preload_app:
            # before the app is imported, as tidegate's own workers do (a preloaded app was imported by the
            # arbiter, before any tidegate setting: its process keeps what it had)
            set_gc_threshold(self.config.app.gc_threshold)
        super().init_process()  # signals, the app, gunicorn's hooks, then run()

    def _route_logging(self) -> None:
        error_log = getattr(self.log, "error_log", None)
        access_log = getattr(self.log, "access_log", None)
        if not isinstance(error_log, logging.Logger) or not isinstance(access_log, logging.Logger):
            configure_logging(self.config.logging)  # a logger class of its own: tidegate logs as it does alone
            return
        cfg = self.cfg
        access_on = bool(cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or getattr(cfg, "logconfig_json", None)
                         or (cfg.syslog and not cfg.disable_redirect_access_to_syslog))
        for name, target, level in (
                ("tidegate", error_log, error_log.getEffectiveLevel()),
                ("tidegate.access", access_log,
                 logging.INFO if access_on and self.config.logging.access_log else logging.CRITICAL + 1)):
            logger = logging.getLogger(name)
            logger.handlers[:] = [_Forward(target)]
            logger.setLevel(level)
            logger.propagate = False
        error = logging.getLogger("tidegate.error")
        error.handlers[:] = []
        error.setLevel(logging.NOTSET)
        error.propagate = True

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # the app is imported before the loop runs: a signal meanwhile is noted, and handled once the loop runs
        # (uvloop dispatches the signals of its handlers only while it runs: one before would be lost)
        for sig in self._loop_signals():
            signal.signal(sig, self._early_signal)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        # not through the loop: the arbiter sends it when the loop has been blocked for --timeout
        signal.signal(signal.SIGABRT, self.handle_abort)

    def _loop_signals(self) -> dict[int, Callable[[], None]]:
        return {signal.SIGTERM: self._stop_gracefully, signal.SIGQUIT: self._stop_now, signal.SIGINT: self._stop_now,
                signal.SIGUSR1: self.log.reopen_files}

    def _early_signal(self, sig: int, frame: object) -> None:
        self._early.append(sig)

    def run(self) -> None:
        loop = self.loop
        assert loop is not None
        handlers = self._loop_signals()
        add_signal_handlers(loop, handlers)
        for sig in self._early:
            loop.call_soon(handlers[sig])
        self._early.clear()
        self._stop = asyncio.Event()
        self._main = main = loop.create_task(self._serve())
        code = 0
        try:
            loop.run_until_complete(main)
        except LifespanFailure as exc:
            self.log.error("Application startup failed: %s", exc)
            code = WORKER_BOOT_ERROR
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            if self._serving:
                raise
            if isinstance(exc, ConfigError):  # a setting the server could not use (a TLS file, say)
                self.log.error("%s", exc)
            else:
                self.log.exception("The worker could not start serving")
            code = WORKER_BOOT_ERROR
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # stopped already: a late stop signal must not kill (or core dump)
        if code:
            sys.exit(code)

    async def _serve(self) -> None:
        assert self._stop is not None
        self._beat()
        sockets = [getattr(listener, "sock", listener) for listener in self.sockets]
        for sock in sockets:
            sock.setblocking(False)
        on_request = request_counter(self.max_requests, self._retire) if self.cfg.max_requests > 0 else None
        await serve(self.wsgi, self.config, sockets=sockets, shutdown_trigger=self._stop.wait,
                    on_started=self._started, on_request=on_request, prepare=self._prepare)

    def _prepare(self, ctx: ServerContext) -> None:
        self._registry = ctx.registry

    def _started(self, sockets: list[Any]) -> None:
        self._serving = True

    def _beat(self) -> None:
        """The heartbeat the arbiter's ``--timeout`` watches, from the loop: a loop blocked that long is killed."""
        assert self.loop is not None
        self.notify()
        if self.alive and self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
        if not self.alive:  # a signal, gunicorn's reloader or a hook said stop
            self._stop_gracefully()
        interval = min(1.0, self.timeout / 2) if self.timeout > 0 else 1.0
        self._heartbeat = self.loop.call_later(interval, self._beat)

    def _retire(self) -> None:
        if self.alive:
            self.log.info("Autorestarting worker after current request.")
            self._stop_gracefully()

    def _stop_gracefully(self) -> None:
        self.alive = False
        if self._stopping:
            return
        self._stopping = True
        if self._serving:
            assert self._stop is not None
            self._stop.set()
        elif self._main is not None:
            self._main.cancel()  # still in lifespan startup, which may never end: nothing to drain yet

    def _stop_now(self) -> None:
        """Stop without draining: the listeners close and every connection is cut; lifespan shutdown still runs."""
        self.alive = False
        if self._quick:
            return
        self._quick = True
        self.cfg.worker_int(self)
        if not self._serving:
            self._stopping = True
            if self._main is not None:
                self._main.cancel()
            return
        assert self.loop is not None and self._registry is not None
        self._stop_gracefully()
        # after the server has begun to stop (it closes its listeners before it drains)
        self.loop.call_soon(self._registry.abort_all)

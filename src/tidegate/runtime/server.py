"""The server: listeners, lifespan, graceful drain and the Date header clock around one :class:`ServerContext`."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

from ..asgi.http import ASGIApp
from ..config import Config
from ..middleware.wsgi import WSGIMiddleware, is_wsgi_app
from ..protocol.http1 import ResponseDefaults
from . import negotiate
from .context import ConnectionRegistry, ServerContext
from .lifespan import Lifespan
from .listeners import bind_all
from .sockets import describe, ssl_context
from .watchdog import Watchdog

__all__ = ["DateClock", "Listeners", "serve"]

logger = logging.getLogger("tidegate.error")


class Listeners:
    """The listening sockets, and accepting paused and resumed under --limit-connections (the registry's gate)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self.loop = loop
        self.config = config
        limits = config.limits
        self.registry = ConnectionRegistry(loop, limits.connections, limits.concurrency, gate=self)
        # [socket, its asyncio server or None while accepting is paused]
        self._listening: list[list[Any]] = []
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._tls: ssl.SSLContext | None = None
        self.accepting = False

    async def listen(self, sockets: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                     tls: ssl.SSLContext | None) -> None:
        """Accept connections on ``sockets``.  Under --limit-connections each is served through a duplicate of
        its file descriptor, so that accepting can stop (the duplicate closes) while the socket stays open and the
        kernel's backlog holds the connections that come meanwhile."""
        self._factory = factory
        self._tls = tls
        self.accepting = True
        for sock in sockets:
            self._listening.append([sock, await self._serve_socket(sock)])

    async def _serve_socket(self, sock: socket.socket) -> asyncio.base_events.Server:
        options: dict[str, Any] = {}
        if self._tls is not None:
            options["ssl"] = self._tls
            options["ssl_handshake_timeout"] = self.config.timeouts.tls_handshake
        backlog = self.config.bind.backlog
        if self.registry.connection_limit is None:
            assert self._factory is not None
            return await self.loop.create_server(self._factory, sock=sock, backlog=backlog, **options)
        return await self.loop.create_server(self._accept, sock=sock.dup(), backlog=backlog, **options)

    def close(self) -> None:
        """Stop accepting for good (and close the sockets, as an asyncio server closes its own)."""
        self.accepting = False
        for entry in self._listening:
            if entry[1] is not None:
                entry[1].close()
                entry[1] = None
            if self.registry.connection_limit is not None:
                entry[0].close()  # served through duplicates: the socket itself is still open
        self._listening.clear()

    def _accept(self) -> asyncio.Protocol:
        # the protocol factory under --limit-connections: the connection that reaches the limit stops accepting
        assert self._factory is not None
        if self.accepting and self.registry.would_fill():
            self.pause_accepting()
        return self._factory()

    def pause_accepting(self) -> None:
        # The servers close at the next turn of the loop: the connections a listener accepted together with this
        # one are still being set up, and closing their server under them would drop them.
        self.accepting = False
        self.loop.call_soon(self._close_servers)

    def _close_servers(self) -> None:
        if self.accepting:
            return  # a connection closed meanwhile: accepting goes on
        logger.debug("%d connections open (--limit-connections): not accepting more for now",
                     len(self.registry.connections))
        for entry in self._listening:
            if entry[1] is not None:
                entry[1].close()
                entry[1] = None

    def resume_accepting(self) -> None:
        if self._listening:
            self.accepting = True
            self.loop.create_task(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        for entry in list(self._listening):
            if entry[1] is None:
                server = await self._serve_socket(entry[0])
                if entry[1] is None and entry in self._listening:
                    entry[1] = server
                    if not self.accepting:  # paused again meanwhile
                        self.loop.call_soon(self._close_servers)
                else:
                    server.close()


class DateClock:
    """The Date header changes once a second; every response reuses the same bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, defaults: ResponseDefaults) -> None:
        self.loop = loop
        self.defaults = defaults
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        now = time.time()
        self.defaults.set_date(b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n")
        self._handle = self.loop.call_later(1.0 - (now % 1.0) + 0.001, self.start)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def serve(app: ASGIApp, config: Config, *, sockets: list[socket.socket] | None = None,
                shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
                on_started: Callable[[list[socket.socket]], None] | None = None,
                on_request: Callable[[], bool] | None = None,
                prepare: Callable[[ServerContext], None] | None = None) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` completes (or forever), then shut down gracefully.

    ``on_request`` is called once per request, whatever the protocol; when it returns True that request is the last
    its connection carries (``--max-requests``).  ``prepare`` sees the server's context once it is built.

    Lifespan startup runs before the first connection is accepted; a failure raises
    :class:`~tidegate.runtime.lifespan.LifespanFailure` and nothing is served.  Lifespan shutdown runs on every
    exit path once startup succeeded.
    """
    loop = asyncio.get_running_loop()
    sync = config.sync
    wsgi = None
    if sync.interface == "wsgi" or (sync.interface == "auto" and is_wsgi_app(app)):
        app = wsgi = WSGIMiddleware(cast(Any, app), sync.threads)
    if config.proxy.proxy_headers:
        from ..middleware.proxy_headers import ProxyHeadersMiddleware

        app = ProxyHeadersMiddleware(app, config.proxy.forwarded_allow_ips)
    listeners = Listeners(loop, config)
    upgrades, prior_knowledge = negotiate.handlers(config)
    ctx = ServerContext(app, config, loop, registry=listeners.registry, upgrades=upgrades,
                        prior_knowledge=prior_knowledge, on_request=on_request)
    if prepare is not None:
        prepare(ctx)
    tls = ssl_context(config.tls, negotiate.alpn_protocols(config.protocols.http))
    factory = negotiate.connection_factory(ctx, tls is not None)
    lifespan = Lifespan(app, config.app.lifespan, ctx.state)
    await lifespan.startup()
    watchdog = Watchdog(loop, sync.warn_blocking) if sync.warn_blocking else None
    clock = DateClock(loop, ctx.defaults) if config.http.date_header else None
    try:
        if watchdog is not None:
            watchdog.start()
        if sockets is None:
            sockets = bind_all(config.bind)
        if clock is not None:
            clock.start()
        await listeners.listen(sockets, factory, tls)
        for sock in sockets:
            logger.info("tidegate serving on %s (press CTRL+C to quit)", describe(sock, "https" if tls else "http"))
        if on_started is not None:
            on_started(sockets)
        if shutdown_trigger is None:
            await loop.create_future()
        else:
            await shutdown_trigger()
    finally:
        logger.info("shutting down")
        listeners.close()
        cancelled = False
        try:
            await ctx.registry.drain(config.timeouts.graceful_shutdown)
        except asyncio.CancelledError:
            # asked to stop at once: cut every connection, but still run lifespan shutdown
            cancelled = True
            ctx.registry.abort_all()
        if clock is not None:
            clock.stop()
        if watchdog is not None:
            watchdog.stop()
        await lifespan.shutdown()
        if wsgi is not None:
            wsgi.close()
        logger.info("stopped")
        if cancelled:
            raise asyncio.CancelledError

"""Listeners, the connection registry, lifespan, graceful drain and the Date header clock."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

from ..accesslog import renderer
from ..asgi.http import ASGIApp
from ..config import Config
from ..middleware.wsgi import WSGIMiddleware, is_wsgi_app
from ..protocol.events import Request
from ..protocol.http1 import RequestLimits, ResponseDefaults
from .h1 import H1Driver
from .h2 import alpn_protocols, connection_factory, install
from .lifespan import Lifespan
from .listeners import bind_all
from .sockets import describe, ssl_context
from .watchdog import Watchdog
from .ws import upgrade_websocket

__all__ = ["ServerState", "serve"]

logger = logging.getLogger("tidegate.error")


class ServerState:
    """What every connection of one server shares.  Built once; read on the hot path."""

    def __init__(self, app: ASGIApp, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        #: every open connection's driver; each has ``shutdown()`` (graceful) and ``force_close()`` (which may
        #: return the tasks it cancelled, for the drain to wait on)
        self.connections: set[Any] = set()
        #: ``Upgrade`` tokens we speak → handler(h1 driver, request, bytes after the head)
        self.upgrades: dict[bytes, Callable[[H1Driver, Request, bytes], None]] = {b"websocket": upgrade_websocket}
        #: HTTP/2 with prior knowledge on a cleartext HTTP/1.1 connection: handler(h1 driver, bytes from the preface)
        self.h2_prior_knowledge: Callable[[H1Driver, bytes], None] | None = None
        #: whether HTTP/2 extended CONNECT (RFC 8441, SETTINGS_ENABLE_CONNECT_PROTOCOL) is offered
        self.h2_connect_protocol = False
        self.state: dict[str, Any] = {}
        self.extensions: dict[str, Any] = {}
        self.root_path = config.app.root_path
        self.access_log = config.logging.access_log
        #: renders an access line from (scope, status, bytes, milliseconds) for --access-log-format/-json
        self.access_line = renderer(config.logging.access_log_format, config.logging.access_log_json)
        timeouts = config.timeouts
        limits = config.limits
        self.keep_alive_timeout = timeouts.keep_alive
        self.header_timeout = timeouts.request_header
        self.body_timeout = timeouts.request_body
        self.write_timeout = timeouts.write
        #: the longest a connection's deadline timer sleeps while one of its deadlines is watched
        self.idle_check = min(timeouts.keep_alive, timeouts.request_header)
        self.request_buffer = limits.request_buffer
        self.pipeline_depth = limits.pipeline_depth
        self.request_limits = RequestLimits(limits.request_line, limits.request_headers, limits.request_header_count,
                                            limits.request_body, limits.pipeline_depth)
        #: --limit-request-body for the exchanges (0: none)
        self.body_limit = limits.request_body
        #: --limit-concurrency (None: none) and the requests being handled under it (see :meth:`admit_request`)
        self.concurrency_limit = limits.concurrency
        self.in_flight = 0
        self._refusing = False
        #: --limit-connections (None: none); connections accepted past it wait, not read, in _parked
        self.connection_limit = limits.connections
        self._parked: deque[Any] = deque()
        # [socket, its asyncio server or None while accepting is paused]
        self._listening: list[list[Any]] = []
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._tls: ssl.SSLContext | None = None
        self._accepting = False
        http = config.http
        extra = b"".join(b"%s: %s\r\n" % pair for pair in http.header_pairs())
        self.defaults = ResponseDefaults(server=b"server: tidegate\r\n" if http.server_header else b"",
                                         extra=extra)
        #: the HTTP/1.1 driver class (a worker with --max-requests uses one that counts requests)
        self.h1_driver: type[H1Driver] = H1Driver
        #: called once per HTTP/2 request when set (``--max-requests`` counts them; HTTP/1.1 uses h1_driver)
        self.request_hook: Callable[[], object] | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    # The Date header changes once a second; every response reuses the same bytes.
    def start_clock(self) -> None:
        if not self.config.http.date_header:
            return
        now = time.time()
        self.defaults.set_date(b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n")
        self._clock = self.loop.call_later(1.0 - (now % 1.0) + 0.001, self.start_clock)

    def stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    # ------------------------------------------------------------------ listeners and --limit-connections

    async def listen(self, sockets: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                     tls: ssl.SSLContext | None) -> None:
        """Accept connections on ``sockets``.  Under --limit-connections each is served through a duplicate of
        its file descriptor, so that accepting can stop (the duplicate closes) while the socket stays open and the
        kernel's backlog holds the connections that come meanwhile."""
        self._factory = factory
        self._tls = tls
        self._accepting = True
        for sock in sockets:
            self._listening.append([sock, await self._serve_socket(sock)])

    async def _serve_socket(self, sock: socket.socket) -> asyncio.base_events.Server:
        options: dict[str, Any] = {}
        if self._tls is not None:
            options["ssl"] = self._tls
            options["ssl_handshake_timeout"] = self.config.timeouts.tls_handshake
        if self.connection_limit is None:
            assert self._factory is not None
            return await self.loop.create_server(self._factory, sock=sock, backlog=self.config.bind.backlog,
                                                 **options)
        return await self.loop.create_server(self._accept, sock=sock.dup(), backlog=self.config.bind.backlog,
                                             **options)

    def close_listeners(self) -> None:
        """Stop accepting for good (and close the sockets, as an asyncio server closes its own)."""
        self._accepting = False
        for entry in self._listening:
            if entry[1] is not None:
                entry[1].close()
                entry[1] = None
            if self.connection_limit is not None:
                entry[0].close()  # served through duplicates: the socket itself is still open
        self._listening.clear()

    def _accept(self) -> asyncio.Protocol:
        # the protocol factory under --limit-connections: the connection that reaches the limit stops accepting
        assert self._factory is not None and self.connection_limit is not None
        if self._accepting and len(self.connections) + 1 >= self.connection_limit:
            self._pause_accepting()
        return self._factory()

    def _pause_accepting(self) -> None:
        # The servers close at the next turn of the loop: the connections a listener accepted together with this
        # one are still being set up, and closing their server under them would drop them.
        self._accepting = False
        self.loop.call_soon(self._close_servers)

    def _close_servers(self) -> None:
        if self._accepting:
            return  # a connection closed meanwhile: accepting goes on
        logger.debug("%d connections open (--limit-connections): not accepting more for now", len(self.connections))
        for entry in self._listening:
            if entry[1] is not None:
                entry[1].close()
                entry[1] = None

    async def _resume_accepting(self) -> None:
        for entry in list(self._listening):
            if entry[1] is None:
                server = await self._serve_socket(entry[0])
                if entry[1] is None and entry in self._listening:
                    entry[1] = server
                    if not self._accepting:  # paused again meanwhile
                        self.loop.call_soon(self._close_servers)
                else:
                    server.close()

    def admit_connection(self, driver: Any) -> bool:
        """Under --limit-connections, as ``driver``'s connection opens (it is in :attr:`connections` already):
        True to serve it, False to hold it unread until a connection closes and ``driver.unpark()`` is called (a
        listener accepts a batch of connections at once, so a few may come past the limit)."""
        assert self.connection_limit is not None
        if len(self.connections) - len(self._parked) > self.connection_limit:
            self._parked.append(driver)
            if self._accepting:
                self._pause_accepting()
            return False
        return True

    def _make_room(self) -> None:
        assert self.connection_limit is not None
        parked = self._parked
        if parked:
            self._parked = parked = deque(d for d in parked if d in self.connections)
            while parked and len(self.connections) - len(parked) < self.connection_limit:
                parked.popleft().unpark()
        if not self._accepting and self._listening and not parked and len(self.connections) < self.connection_limit:
            self._accepting = True
            self.loop.create_task(self._resume_accepting())

    # ------------------------------------------------------------------ --limit-concurrency

    def admit_request(self) -> bool:
        """Under --limit-concurrency: whether one more request may be handled now (then :meth:`release_request`
        once its app returns); else it is answered 503."""
        assert self.concurrency_limit is not None
        if self.in_flight >= self.concurrency_limit:
            if not self._refusing:
                self._refusing = True
                logger.warning("%d requests in progress (--limit-concurrency): answering 503 to more until one "
                               "finishes", self.in_flight)
            return False
        self.in_flight += 1
        return True

    def release_request(self) -> None:
        self.in_flight -= 1
        self._refusing = False

    def connection_closed(self) -> None:
        if self.connection_limit is not None:
            self._make_room()
        if self._drained is not None and not self.connections and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, let the others finish for up to ``timeout`` s, then cut them."""
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._drained = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except asyncio.TimeoutError:
                logger.warning("graceful shutdown timed out after %.1fs: cancelling %d connection(s)",
                               timeout, len(self.connections))
        cancelled = self.abort_all()
        if cancelled:
            # let the cancelled apps unwind (for up to ``timeout`` again) before lifespan shutdown closes what
            # their cleanup may still use
            await asyncio.wait(cancelled, timeout=timeout)

    def abort_all(self) -> list[asyncio.Task[Any]]:
        """Cut every connection; return the app tasks this cancelled."""
        cancelled: list[asyncio.Task[Any]] = []
        for conn in list(self.connections):
            tasks = conn.force_close()
            if tasks:
                cancelled.extend(tasks)
        return cancelled


async def serve(app: ASGIApp, config: Config, *, sockets: list[socket.socket] | None = None,
                shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
                on_started: Callable[[list[socket.socket]], None] | None = None,
                prepare: Callable[[ServerState], None] | None = None) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` completes (or forever), then shut down gracefully.

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
    state = ServerState(app, config, loop)
    if prepare is not None:
        prepare(state)
    tls = ssl_context(config.tls, alpn_protocols(config.protocols.http))
    install(state)
    factory = connection_factory(state, tls is not None)
    lifespan = Lifespan(app, config.app.lifespan, state.state)
    await lifespan.startup()
    watchdog = Watchdog(loop, sync.warn_blocking) if sync.warn_blocking else None
    try:
        if watchdog is not None:
            watchdog.start()
        if sockets is None:
            sockets = bind_all(config.bind)
        state.start_clock()
        await state.listen(sockets, factory, tls)
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
        state.close_listeners()
        cancelled = False
        try:
            await state.drain(config.timeouts.graceful_shutdown)
        except asyncio.CancelledError:
            # asked to stop at once: cut every connection, but still run lifespan shutdown
            cancelled = True
            state.abort_all()
        state.stop_clock()
        if watchdog is not None:
            watchdog.stop()
        await lifespan.shutdown()
        if wsgi is not None:
            wsgi.close()
        logger.info("stopped")
        if cancelled:
            raise asyncio.CancelledError

"""The server: listeners, lifespan, graceful drain and the Date header clock around one :class:`ServerContext`."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

from ..asgi.http import ASGIApp
from ..config import Config
from ..metrics import Metrics
from ..middleware.asgi2 import ASGI2Middleware, is_asgi2_app
from ..middleware.trace import TraceMiddleware, tracing
from ..middleware.wsgi import WSGIMiddleware, is_wsgi_app
from ..protocol.http1 import ResponseDefaults
from . import negotiate
from .context import ConnectionRegistry, ServerContext
from .lifespan import Lifespan
from .listeners import bind_all
from .proxied import ProxyProtocol
from .sockets import describe, ssl_context
from .udp import QuicListeners, bind_udp, quic_addresses
from .watchdog import Watchdog

__all__ = ["DateClock", "Listeners", "serve"]

logger = logging.getLogger("tidegate.error")


class Listeners:
    """The listening sockets, and accepting paused and resumed under --limit-connections (the registry's gate).

    The listeners accept themselves: each time a socket is readable, every connection in its backlog is taken at
    once.  (uvloop's own servers take about one connection per loop iteration once the loop is busy, so under load
    a burst of new connections waited seconds in the backlog, their requests with them: the multi-second p99 at a
    thousand connections.)  Under a limit, never more than the limit are open (the connections being set up, TLS
    handshakes included, count): pausing only stops watching the socket, so nothing is torn down under a
    connection being set up, and the kernel's backlog holds the connections that come meanwhile.  Under
    --proxy-protocol each connection's PROXY header is read off its socket before its transport is made."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self.loop = loop
        self.config = config
        limits = config.limits
        self.registry = ConnectionRegistry(loop, limits.connections, limits.concurrency, gate=self)
        self._sockets: list[socket.socket] = []
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._options: dict[str, Any] = {}
        self._opening = 0  # accepted, not yet open (TLS handshake, transport set-up)
        self._proxy: ProxyProtocol | None = None  # --proxy-protocol: each connection's header read first
        self._reading: set[asyncio.Task[Any]] = set()  # the connections whose PROXY header is being read
        self._setting_up: set[asyncio.Task[Any]] = set()  # accepted, transport (and TLS handshake) being made
        self._retry: asyncio.TimerHandle | None = None
        self.accepting = False

    async def listen(self, sockets: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                     tls: ssl.SSLContext | None, proxy: ProxyProtocol | None = None) -> None:
        self._factory = factory
        self._proxy = proxy
        if tls is not None:
            self._options = {"ssl": tls, "ssl_handshake_timeout": self.config.timeouts.tls_handshake}
        backlog = self.config.bind.backlog
        self.accepting = True
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(backlog)
            self._sockets.append(sock)
            self.loop.add_reader(sock, self._accept, sock)

    def close(self) -> None:
        """Stop accepting for good (and close the sockets, as an asyncio server closes its own)."""
        self._stop_accepting()
        if self._retry is not None:
            self._retry.cancel()
        for sock in self._sockets:
            sock.close()
        if self._proxy is not None:
            self._proxy.close()
        for task in self._reading:
            task.cancel()
        self._sockets.clear()

    def _accept(self, sock: socket.socket) -> None:
        limit = self.registry.connection_limit
        assert self._factory is not None
        while self.accepting:
            if limit is not None and len(self.registry.connections) + self._opening >= limit:
                self.pause_accepting()
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors or memory: the backlog keeps the connection, try again in a second
                    logger.error("cannot accept a connection (%s): trying again in 1 s", exc)
                    self._stop_accepting()
                    self._retry = self.loop.call_later(1.0, self._retry_accepting)
                    return
                continue  # that connection was reset before it was accepted
            conn.setblocking(False)
            self._opening += 1
            opening: asyncio.Task[Any]
            if self._proxy is None:
                opening = self.loop.create_task(self.loop.connect_accepted_socket(self._factory, conn,
                                                                                  **self._options))
            else:
                opening = self.loop.create_task(self._proxy.open(conn, self._factory, self._options))
                self._reading.add(opening)
                opening.add_done_callback(self._reading.discard)
            self._setting_up.add(opening)
            opening.add_done_callback(self._setting_up.discard)
            opening.add_done_callback(functools.partial(self._opened, conn))

    async def settle(self, timeout: float) -> None:
        """At shutdown, once closed: let the connections accepted before (whose transports, TLS handshakes
        included, are still being made) open, for up to ``timeout`` s, so that the shutdown that follows finds
        them and answers their requests; those still not open then are dropped."""
        if self._setting_up:
            await asyncio.wait(list(self._setting_up), timeout=timeout)
        self.abandon()

    def abandon(self) -> None:
        """Drop the connections still being set up (their sockets are closed as their set-up ends)."""
        for task in list(self._setting_up):
            task.cancel()

    def _opened(self, conn: socket.socket, opening: asyncio.Task[Any]) -> None:
        self._opening -= 1
        failure = None if opening.cancelled() else opening.exception()
        if opening.cancelled() or failure is not None:
            conn.close()
            logger.debug("a connection could not be opened: %r", failure)
        limit = self.registry.connection_limit
        if limit is not None and not self.accepting and len(self.registry.connections) < limit:
            self.resume_accepting()

    def _retry_accepting(self) -> None:
        self._retry = None
        self.resume_accepting()

    def pause_accepting(self) -> None:
        if self.accepting:
            logger.debug("%d connections open (--limit-connections): not accepting more for now",
                         len(self.registry.connections))
            self._stop_accepting()

    def _stop_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            for sock in self._sockets:
                self.loop.remove_reader(sock)

    def resume_accepting(self) -> None:
        if self._sockets and not self.accepting and self._retry is None:
            self.accepting = True
            for sock in self._sockets:
                self.loop.add_reader(sock, self._accept, sock)


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


async def _shutdown_delay(ctx: ServerContext, delay: float) -> bool:
    """--shutdown-delay: go on serving for ``delay`` seconds, the health path answering 503, so that a load balancer
    stops sending before the listeners close; True if cancelled meanwhile (then stop at once)."""
    logger.info("shutting down in %gs (--shutdown-delay); serving meanwhile%s", delay,
                ", the health path answering 503" if ctx.health is not None else "")
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        return True
    return False


async def _start_quic(ctx: ServerContext, server: negotiate.QuicServing, sockets: list[socket.socket],
                      quic: QuicListeners | None) -> None:
    """HTTP/3: bind the UDP sockets (unless given), serve QUIC on them, and advertise them with Alt-Svc on the
    HTTP/1.1 and HTTP/2 responses."""
    if quic is None:
        quic = QuicListeners()
        try:
            for host, port in quic_addresses(ctx.config, sockets):
                quic.sockets.append(bind_udp(host, port))
        except BaseException:
            for sock in quic.sockets:
                sock.close()
            raise
    await server.start(quic)
    ports = sorted({sock.getsockname()[1] for sock in quic.sockets})
    ctx.defaults.set_alt_svc(b"alt-svc: " + b", ".join(b'h3=":%d"; ma=86400' % port for port in ports) + b"\r\n")
    for sock in quic.sockets:
        logger.info("tidegate serving HTTP/3 at %s (QUIC, UDP)", describe(sock, "https"))


async def serve(app: ASGIApp, config: Config, *, sockets: list[socket.socket] | None = None,
                shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
                on_started: Callable[[list[socket.socket]], None] | None = None,
                on_request: Callable[[], bool] | None = None,
                prepare: Callable[[ServerContext], None] | None = None, metrics: Metrics | None = None,
                announce_shutdown: Callable[[], bool] | None = None, quic: QuicListeners | None = None) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` completes (or forever), then shut down gracefully.

    A coroutine for an event loop you run yourself; it installs no signal handlers and starts no worker processes
    (``tidegate.run`` does both).  Lifespan startup runs before the first connection is accepted; lifespan shutdown
    runs on every exit path once startup succeeded.  Shutting down closes the listeners and idle connections, lets
    requests in flight finish for up to ``config.timeouts.graceful_shutdown`` seconds, then cancels them.
    Cancelling the task that awaits ``serve`` stops at once (lifespan shutdown still runs).  With
    ``config.health.shutdown_delay``, once ``shutdown_trigger()`` completes the server first goes on serving that
    long, its health path (``config.health.health_path``) answering 503, then shuts down as above.

    Args:
        app: The ASGI application (an ASGI 2 class or a WSGI callable is served through an adapter, as
            ``config.sync.interface`` says).
        config: The settings; ``config.app.app`` is not used, since the app is given.
        sockets: Listening sockets to serve instead of binding the addresses ``config`` names.
        shutdown_trigger: Awaited once serving has begun; when it completes, the server shuts down gracefully.
        on_started: Called with the listening sockets once they accept connections (with ``port=0``, the port is
            ``sockets[0].getsockname()[1]``).
        on_request: Called once per request, whatever the protocol; when it returns True that request is the last
            its connection carries (``--max-requests``).
        prepare: Called with the server's context once it is built (used by the worker processes).
        metrics: Counts every response, the server's own answers and those cut short included
            (``--metrics-bind``).
        announce_shutdown: Called when ``shutdown_trigger()`` completes: whether the load balancer is to hear of
            this stop (default: yes): the health path answers 503 from then on, and ``shutdown_delay`` applies.  A
            worker process that retires or is replaced while the others serve on says no.
        quic: With ``config.h3.http3``: the UDP sockets to serve HTTP/3 on (and a worker's connection-ID slot)
            instead of binding them.

    Raises:
        tidegate.runtime.lifespan.LifespanFailure: The app's lifespan startup failed; nothing was served.
        ConfigError: A setting cannot be applied: a TLS certificate or key that cannot be loaded, an address
            that cannot be bound.

    Example:
        ```python
        import asyncio
        import tidegate

        async def main() -> None:
            stop = asyncio.Event()  # set it to stop the server
            config = tidegate.Config.from_flat(port=8080)
            await tidegate.serve(app, config, shutdown_trigger=stop.wait)

        asyncio.run(main())
        ```
    """
    loop = asyncio.get_running_loop()
    sync = config.sync
    wsgi = None
    if sync.interface == "wsgi" or (sync.interface == "auto" and is_wsgi_app(app)):
        app = wsgi = WSGIMiddleware(cast(Any, app), sync.threads)
    elif sync.interface == "asgi2" or (sync.interface == "auto" and is_asgi2_app(app)):
        logger.info("the app is an ASGI 2 one (called with the scope alone): served through an adapter")
        app = ASGI2Middleware(app)
    if config.proxy.proxy_headers:
        from ..middleware.proxy_headers import ProxyHeadersMiddleware

        app = ProxyHeadersMiddleware(app, config.proxy.forwarded_allow_ips)
    if tracing():
        app = TraceMiddleware(app)  # outermost: the messages as the server sends and receives them
    listeners = Listeners(loop, config)
    upgrades, prior_knowledge = negotiate.handlers(config)
    ctx = ServerContext(app, config, loop, registry=listeners.registry, upgrades=upgrades,
                        prior_knowledge=prior_knowledge, on_request=on_request, metrics=metrics)
    if prepare is not None:
        prepare(ctx)
    tls = ssl_context(config.tls, negotiate.alpn_protocols(config.protocols.http))
    factory = negotiate.connection_factory(ctx, tls is not None)
    quic_server = negotiate.quic_server(ctx) if config.h3.http3 else None
    lifespan = Lifespan(app, config.app.lifespan, ctx.state)
    await lifespan.startup()
    watchdog = Watchdog(loop, sync.warn_blocking) if sync.warn_blocking else None
    clock = DateClock(loop, ctx.defaults) if config.http.date_header else None
    hurry = False
    try:
        if watchdog is not None:
            watchdog.start()
        if sockets is None:
            sockets = bind_all(config.bind)
        if clock is not None:
            clock.start()
        await listeners.listen(sockets, factory, tls,
                               ProxyProtocol(ctx) if config.proxy.proxy_protocol else None)
        if quic_server is not None:
            await _start_quic(ctx, quic_server, sockets, quic)
        for sock in sockets:
            logger.info("tidegate serving on %s (press CTRL+C to quit)", describe(sock, "https" if tls else "http"))
        if on_started is not None:
            on_started(sockets)
        if shutdown_trigger is None:
            await loop.create_future()
        else:
            await shutdown_trigger()
        if announce_shutdown is None or announce_shutdown():
            if ctx.health is not None:
                ctx.health.draining()
            if config.health.shutdown_delay:
                hurry = await _shutdown_delay(ctx, config.health.shutdown_delay)
    finally:
        logger.info("shutting down")
        listeners.close()
        if quic_server is not None:
            quic_server.stop_accepting()
        cancelled = hurry
        try:
            if hurry:
                raise asyncio.CancelledError  # cancelled during the delay: stop at once
            await listeners.settle(config.timeouts.graceful_shutdown)
            await ctx.registry.drain(config.timeouts.graceful_shutdown)
        except asyncio.CancelledError:
            # asked to stop at once: cut every connection, but still run lifespan shutdown
            cancelled = True
            listeners.abandon()
            ctx.registry.abort_all()
        if quic_server is not None:
            quic_server.close()
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

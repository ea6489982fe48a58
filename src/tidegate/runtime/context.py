"""What every connection of one server shares: the :class:`ServerContext` and its :class:`ConnectionRegistry`.

The context is built once by :func:`~tidegate.runtime.server.serve` and read on the hot path.  It hands each
driver the settings groups of the :class:`~tidegate.config.Config` by reference (``ctx.timeouts.write``,
``ctx.limits.pipeline_depth``, ``ctx.websocket.ping_interval`` ...), never renamed copies, plus what is derived
from them once (the response defaults, the parser's limits, the access-line renderer) and what negotiation decided
(the ``Upgrade`` tokens spoken, HTTP/2 with prior knowledge, extended CONNECT).

This module imports no driver: every driver imports it, and only :mod:`~tidegate.runtime.negotiate` knows them all.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from time import perf_counter
from typing import Any, Final, Protocol

from ..accesslog import renderer
from ..asgi.awaiting import awaiting
from ..asgi.http import ASGIApp, HTTPExchange, escape_log
from ..asgi.scope import ConnectionInfo
from ..config import Config
from ..metrics import Metrics
from ..protocol.events import Request
from ..protocol.http1 import H1Connection, RequestLimits, ResponseDefaults
from .health import HealthCheck
from .tls import with_tls
from .writes import PassFlush

__all__ = [
    "UNRECORDED",
    "ConnectionLog",
    "ConnectionRegistry",
    "Driver",
    "Handover",
    "ServerContext",
    "address",
    "body_waiter",
    "client_text",
    "connection_info",
    "cut",
    "log_access",
    "log_cut",
    "log_refused",
]

logger: Final = logging.getLogger("tidegate.error")
access_logger: Final = logging.getLogger("tidegate.access")


class Driver(Protocol):
    """What the registry asks of every connection's driver."""

    def shutdown(self) -> None:
        """Graceful shutdown: finish what is in progress, take nothing new."""

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cut the connection; the app tasks this cancelled."""


class Handover(Protocol):
    """An HTTP/1.1 connection as an upgrade handler sees it (see :mod:`~tidegate.runtime.negotiate`)."""

    ctx: ServerContext
    info: ConnectionInfo
    conn: H1Connection

    def hand_over(self, protocol: asyncio.Protocol, data: bytes = b"", head: bytes = b"") -> None:
        """Write ``head`` (a 101 response) through this connection's write path, then give its transport to
        ``protocol`` with the bytes already read."""

    def decline_upgrade(self, request: Request, trailing: bytes) -> None:
        """Answer the upgrade request as a plain one and parse what follows."""

    def refuse(self, status: int, detail: str, request: Request | None = None) -> None:
        """Answer (``request``) with an error response and close."""


#: ``Upgrade`` token → handler(the HTTP/1.1 connection, the request, the bytes after its head)
UpgradeHandler = Callable[[Handover, Request, bytes], None]
#: HTTP/2 with prior knowledge on a cleartext port: handler(the HTTP/1.1 connection, the bytes from the preface)
PrefaceHandler = Callable[[Handover, bytes], None]


class Gate(Protocol):
    """The listeners, as the registry sees them under --limit-connections."""

    @property
    def accepting(self) -> bool: ...
    def pause_accepting(self) -> None: ...
    def resume_accepting(self) -> None: ...


class _NoGate:
    accepting = True

    def pause_accepting(self) -> None:
        pass

    def resume_accepting(self) -> None:
        pass


class ConnectionRegistry:
    """Every open connection's driver, the apps still running after their connection closed, --limit-connections
    (parking) and --limit-concurrency (admission), and the graceful drain."""

    __slots__ = ("_drained", "_gate", "_loop", "_parked", "_refusing", "concurrency_limit", "connection_limit",
                 "connections", "in_flight", "outliving")

    def __init__(self, loop: Any, connections: int | None = None, concurrency: int | None = None,
                 gate: Gate | None = None) -> None:
        self._loop = loop
        self.connections: set[Driver] = set()
        #: app tasks whose connection closed before they finished (see outlive)
        self.outliving: set[asyncio.Task[Any]] = set()
        #: --limit-connections (None: none); connections accepted past it wait, not read, in _parked
        self.connection_limit = connections
        #: --limit-concurrency (None: none) and the requests being handled under it
        self.concurrency_limit = concurrency
        self.in_flight = 0
        self._refusing = False
        self._parked: deque[Any] = deque()
        self._gate: Gate = gate or _NoGate()
        self._drained: asyncio.Future[None] | None = None

    def add(self, driver: Driver, admit: bool = True) -> bool:
        """A connection opened: True to serve it, False to hold it unread (accepted past --limit-connections in
        the batch of the last one allowed) until a connection closes and ``driver.unpark()`` is called.  With
        ``admit`` False (a connection handed over from another driver, or one that cannot be held) it is only
        counted."""
        self.connections.add(driver)
        limit = self.connection_limit
        if limit is None or not admit:
            return True
        if len(self.connections) - len(self._parked) > limit:
            self._parked.append(driver)
            if self._gate.accepting:
                self._gate.pause_accepting()
            return False
        return True

    def hand_over(self, driver: Driver) -> None:
        """``driver``'s connection goes on under another driver (which adds itself): no room is made."""
        self.connections.discard(driver)

    def discard(self, driver: Driver) -> None:
        """A connection closed (or was handed to another driver, which adds itself)."""
        if driver in self.connections:
            self.connections.discard(driver)
            self._closed()

    def outlive(self, task: asyncio.Task[Any] | None) -> None:
        """A connection closed while its app ``task`` still runs (the app has been told the client is gone): the
        task is kept here until it ends, so that a graceful shutdown waits for it as for a connection, then cancels
        it, and the loop is not closed under it."""
        if task is not None and not task.done():
            self.outliving.add(task)
            task.add_done_callback(self._outlived)

    def _outlived(self, task: asyncio.Task[Any]) -> None:
        self.outliving.discard(task)
        self._maybe_drained()

    def _closed(self) -> None:
        if self.connection_limit is not None:
            self._make_room()
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        drained = self._drained
        if drained is not None and not self.connections and not self.outliving and not drained.done():
            drained.set_result(None)

    def _make_room(self) -> None:
        limit = self.connection_limit
        assert limit is not None
        parked = self._parked
        if parked:
            self._parked = parked = deque(d for d in parked if d in self.connections)
            while parked and len(self.connections) - len(parked) < limit:
                parked.popleft().unpark()
        if not self._gate.accepting and not parked and len(self.connections) < limit:
            self._gate.resume_accepting()

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

    # ------------------------------------------------------------------ shutdown

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, let the others (and the apps outliving theirs) finish for up to ``timeout``
        s, then cut them."""
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections or self.outliving:
            logger.info("waiting for %d connection(s) and %d app(s) whose client had left (up to %gs)",
                        len(self.connections), len(self.outliving), timeout)
            self._drained = self._loop.create_future()
            try:
                await awaiting(asyncio.wait_for(asyncio.shield(self._drained), timeout))
            except asyncio.TimeoutError:
                logger.warning("graceful shutdown timed out after %.1fs: cancelling %d connection(s) and %d app(s) "
                               "whose client had left", timeout, len(self.connections), len(self.outliving))
        cancelled = self.abort_all()
        if cancelled:
            # let the cancelled apps unwind (for up to ``timeout`` again) before lifespan shutdown closes what
            # their cleanup may still use
            await awaiting(asyncio.wait(cancelled, timeout=timeout))

    def abort_all(self) -> list[asyncio.Task[Any]]:
        """Cut every connection; return the app tasks this cancelled."""
        cancelled: list[asyncio.Task[Any]] = [task for task in self.outliving if task.cancel()]
        for conn in list(self.connections):
            cancelled.extend(conn.force_close())
        return cancelled


class ConnectionLog:
    """``--log-level debug``: a line when a connection opens (its addresses, TLS or not), one for each protocol it
    comes to speak, and one when it closes (how long it lived, and why).  Each starts with the client's address, as
    the access lines do.  Made only while the server logs at debug level (``ctx.debug``)."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        #: each open connection's transport → (when it opened, its client's address as text)
        self._open: dict[asyncio.BaseTransport, tuple[float, str]] = {}

    def opened(self, transport: asyncio.BaseTransport) -> str:
        """A connection opened: its line; returns its client's address as text (for :meth:`protocol`)."""
        peer = address(transport.get_extra_info("peername"))
        client = f"{peer[0]}:{peer[1]}" if peer else "-"
        self._open[transport] = (perf_counter(), client)
        sock = transport.get_extra_info("sockname")
        local = address(sock)
        if local is not None:
            where = f"{local[0]}:{local[1]}"
        else:
            where = f"unix:{sock.decode() if isinstance(sock, bytes) else sock}"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            security = "cleartext"
        else:
            alpn = ssl_object.selected_alpn_protocol()
            security = f"{ssl_object.version()}, " + (f"ALPN {alpn}" if alpn else "no ALPN")
        logger.debug("%s - connection opened on %s (%s)", client, where, security)
        return client

    @staticmethod
    def protocol(client: str, name: str) -> None:
        """The protocol a connection (or an HTTP/2 stream) speaks from now on."""
        logger.debug("%s - protocol: %s", client, name)

    def closed(self, transport: asyncio.BaseTransport, exc: Exception | None, why: str, streams: int = -1) -> None:
        """A connection closed: how long it lived, the streams it carried (HTTP/2) and why (``exc``, else
        ``why``)."""
        opened = self._open.pop(transport, None)
        if opened is None:
            return
        started, client = opened
        count = "" if streams < 0 else f", {streams} stream{'' if streams == 1 else 's'}"
        if exc is not None:
            why = f"{type(exc).__name__}: {exc}"
        logger.debug("%s - connection closed after %.3fs%s: %s", client, perf_counter() - started, count, why)


#: the name of every app task a server makes (``asyncio.Task.get_name()``)
APP_TASK_NAME: Final = "tidegate app"
_Task: Final = asyncio.Task

# Which Python this is, decided once here: a compiled build would test sys.version_info on every call.
if sys.version_info >= (3, 11):
    def _new_task(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                  context: contextvars.Context) -> asyncio.Task[None]:
        """An app task made as the loop would make it, given its name and its context: a task left to name
        itself formats "Task-N" (on 3.11, as it is made), and the loop's own ``create_task`` is a call more."""
        return _Task(coro, loop=loop, name=APP_TASK_NAME, context=context)
else:
    def _new_task(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                  context: contextvars.Context) -> asyncio.Task[None]:
        """A task is given its context from 3.11 on: before, it copies the one it is made in."""
        return context.run(loop.create_task, coro, name=APP_TASK_NAME)


class ServerContext:
    """What every connection of one server shares.  Built once; its attributes are not reassigned."""

    __slots__ = ("_copy_app_context", "_create_task", "_in_app_context", "_own_tasks", "access_line", "app", "config",
                 "connect_protocol", "debug", "defaults", "extensions", "flushes", "h2", "health", "limits", "logging",
                 "loop", "metrics", "on_request", "prior_knowledge", "proxied", "recording", "registry",
                 "request_limits", "state", "timeouts", "upgrades", "websocket")

    def __init__(self, app: ASGIApp, config: Config, loop: asyncio.AbstractEventLoop, *,
                 registry: ConnectionRegistry | None = None,
                 upgrades: Mapping[bytes, UpgradeHandler] | None = None, prior_knowledge: PrefaceHandler | None = None,
                 on_request: Callable[[], bool] | None = None, metrics: Metrics | None = None) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        #: the server's context, taken here: each app task runs in a copy of it
        app_context = contextvars.copy_context()
        self._copy_app_context = app_context.copy
        #: start_app's way through the loop (a task factory, a loop of a test's own): run in a copy of the
        #: server's context, make a task there
        self._in_app_context: Callable[..., asyncio.Task[None]] = app_context.run
        self._create_task: Callable[..., asyncio.Task[None]] = loop.create_task
        #: whether start_app may make the task itself on a loop with no task factory (an asyncio event loop)
        self._own_tasks = isinstance(loop, asyncio.AbstractEventLoop)
        #: the connections' write buffers with bytes for the end of this loop pass, flushed together
        self.flushes = PassFlush(loop)
        # the settings groups, by reference
        self.timeouts = config.timeouts
        self.limits = limits = config.limits
        self.websocket = config.websocket
        self.h2 = config.h2
        self.logging = config.logging
        self.registry = registry if registry is not None else ConnectionRegistry(loop, limits.connections,
                                                                                 limits.concurrency)
        #: ``Upgrade`` tokens spoken over HTTP/1.1, and HTTP/2 with prior knowledge (see negotiate.py)
        self.upgrades: Mapping[bytes, UpgradeHandler] = upgrades or {}
        self.prior_knowledge = prior_knowledge
        #: whether HTTP/2 extended CONNECT (RFC 8441) is offered: where WebSocket is spoken over HTTP/1.1
        self.connect_protocol = b"websocket" in self.upgrades
        #: called once per request, any protocol; True: this is the last one this server takes (--max-requests)
        self.on_request = on_request
        #: lifespan state (copied into each scope) and the server's scope extensions
        self.state: dict[str, Any] = {}
        self.extensions: dict[str, Any] = {}
        http = config.http
        extra = b"".join(b"%s: %s\r\n" % pair for pair in http.header_pairs())
        self.defaults = ResponseDefaults(server=b"server: tidegate\r\n" if http.server_header else b"", extra=extra)
        self.request_limits = RequestLimits(limits.request_line, limits.request_headers, limits.request_header_count,
                                            limits.request_body, limits.pipeline_depth, limits.request_field_size)
        #: renders an access line from (scope, status, bytes, milliseconds) for --access-log-format/-json
        self.access_line = renderer(config.logging.access_log_format, config.logging.access_log_json)
        #: the Prometheus counters (--metrics-bind), and whether each response is recorded (access line, metrics)
        self.metrics = metrics
        self.recording = config.logging.access_log or metrics is not None
        #: --health-path, answered by the server itself (None: off, and a request costs one test of this)
        self.health = HealthCheck(config.health) if config.health.health_path is not None else None
        #: the connections' open, protocol and close lines, while the server logs at debug level as it starts
        #: (None otherwise: a connection then costs one test of this)
        self.debug = ConnectionLog() if logger.isEnabledFor(logging.DEBUG) else None
        #: --proxy-protocol: socket descriptor → the client its connection's PROXY header named (None: the
        #: header named none).  Each connection sets its descriptor's entry before its transport is made, so an
        #: entry left by a closed connection is replaced before a new one on the same descriptor reads it.
        self.proxied: dict[int, tuple[str, int] | None] | None = {} if config.proxy.proxy_protocol else None

    @property
    def connections(self) -> set[Driver]:
        return self.registry.connections

    def start_app(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """An app's task, in a copy of the server's context: never in one an app has changed.  A task copies the
        context it is made in, and a driver makes some from inside an app's task (the next pipelined request, at
        the end of a response) or from a read that asyncio's own loop may run in one (reading was resumed there).

        Where the loop has no task factory, the task is made here (see _new_task).  A task factory, set when the
        server started or later, is used."""
        loop = self.loop
        if self._own_tasks and loop.get_task_factory() is None:
            return _new_task(coro, loop, self._copy_app_context())
        return self._in_app_context(self._create_task, coro)


def address(value: Any) -> tuple[str, int] | None:
    """A socket address as a scope's ``client``/``server`` pair."""
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def connection_info(ctx: ServerContext, transport: asyncio.BaseTransport) -> ConnectionInfo:
    """What every request on ``transport`` shares: addresses, scheme, mount point, lifespan state, extensions."""
    sock = transport.get_extra_info("sockname")
    scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
    if isinstance(sock, (str, bytes)):
        local: tuple[str, int | None] | None = (sock if isinstance(sock, str) else sock.decode(), None)
    else:
        local = address(sock)
    extensions = ctx.extensions if scheme == "http" else with_tls(ctx.extensions, transport,
                                                                   ctx.config.tls.certfile)
    client = None
    if ctx.proxied is not None:
        raw = transport.get_extra_info("socket")
        client = ctx.proxied.get(raw.fileno()) if raw is not None else None
    if client is None:
        client = address(transport.get_extra_info("peername"))
    return ConnectionInfo(client, local, scheme, ctx.config.app.root_path, ctx.state, extensions)


def body_waiter(ctx: ServerContext, exchange: HTTPExchange, stalled: Callable[[], None]) -> asyncio.Future[None]:
    """The waiter an app's ``receive()`` sleeps on, for a stream of a multiplexed connection (HTTP/2, HTTP/3).  While
    the request body is not complete, --timeout-request-body runs: past it, ``stalled()`` (the driver answers 408
    and the app hears ``http.disconnect``)."""
    waiter: asyncio.Future[None] = ctx.loop.create_future()
    if not exchange.request_complete:
        timer = ctx.loop.call_later(ctx.timeouts.request_body, _body_stalled, waiter, stalled)
        waiter.add_done_callback(lambda _: timer.cancel())
    return waiter


def _body_stalled(waiter: asyncio.Future[None], stalled: Callable[[], None]) -> None:
    if not waiter.done():
        stalled()


def cut(transport: asyncio.Transport, *tasks: asyncio.Task[None] | None) -> list[asyncio.Task[None]]:
    """Shutdown ran out of time: drop the connection and cancel its app tasks; the tasks this cancelled."""
    transport.abort()
    return [task for task in tasks if task is not None and task.cancel()]


def log_access(ctx: ServerContext, info: ConnectionInfo, exchange: HTTPExchange, started_at: float) -> None:
    """Record a complete response: its access line (``--access-log-format``/``--access-log-json``, else the
    default) and its count in the metrics.  Called where ``ctx.recording`` is true.

    It calls the logger itself, as :func:`log_refused` does: logging finds its caller by walking the stack, and one
    more frame here costs a request 2% more instructions (callgrind, access log on)."""
    if started_at < 0.0:
        return  # UNRECORDED: a health check's answer
    scope = exchange.scope
    duration = (perf_counter() - started_at) * 1000.0
    metrics = ctx.metrics
    if metrics is not None:
        metrics.observe(exchange.status, duration / 1000.0)
        if not ctx.logging.access_log:
            return
    render = ctx.access_line
    if render is not None:
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s", render(scope, exchange.status, exchange.bytes_sent, duration, True))
        return
    query = scope["query_string"]
    target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    access_logger.info('%s - "%s %s HTTP/%s" %d %d %.1fms', client_text(info), scope["method"], escape_log(target),
                       scope["http_version"], exchange.status, exchange.bytes_sent, duration)


#: the start time given for an exchange that is not recorded (the health path's answers, without --health-log)
UNRECORDED: Final = -1.0

#: the status logged for a request whose client left before any response started (nginx's "client closed request")
CLIENT_CLOSED: Final = 499


def log_cut(ctx: ServerContext, info: ConnectionInfo, exchange: HTTPExchange, started_at: float) -> None:
    """Record a response cut short: the client went away (or reset its stream), the app failed once its body had
    started, or shutdown ran out of time.  The line carries the status sent (499 if none was), the body bytes
    written for it, and ``-`` after the duration (``{completion}`` in a format, ``"completed": false`` in JSON)."""
    if not ctx.recording or started_at < 0.0:
        return
    scope = exchange.scope
    status = exchange.status or CLIENT_CLOSED
    duration = (perf_counter() - started_at) * 1000.0 if started_at else 0.0
    metrics = ctx.metrics
    if metrics is not None:
        metrics.observe(status, duration / 1000.0)
        metrics.cut += 1
        if not ctx.logging.access_log:
            return
    render = ctx.access_line
    if render is not None:
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s", render(scope, status, exchange.bytes_sent, duration, False))
        return
    query = scope["query_string"]
    target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    access_logger.info('%s - "%s %s HTTP/%s" %d %d %.1fms -', client_text(info), scope["method"],
                       escape_log(target), scope["http_version"], status, exchange.bytes_sent, duration)


def log_refused(ctx: ServerContext, info: ConnectionInfo, status: int, sent: int,
                exchange: HTTPExchange | None = None, head: tuple[bytes, bytes, str] | None = None) -> None:
    """Record a response the server answered itself, the app never: a malformed request (400, 414, 431), a deadline
    (408), a body over the limit (413), --limit-concurrency (503).  ``sent`` is the response's body size.  The
    request is the exchange's, else ``head`` (method, target, HTTP version: the request was refused before an
    exchange was made), else ``-`` (it could not be parsed); the duration is ``-``.  Called where
    ``ctx.recording`` is true."""
    metrics = ctx.metrics
    if metrics is not None:
        metrics.observe(status, 0.0)
        if not ctx.logging.access_log:
            return
    if exchange is not None:
        scope: Any = exchange.scope
    else:
        path = query = b""
        if head is not None:
            path, _, query = head[1].partition(b"?")
        scope = {"type": "http", "method": head[0].decode("latin-1") if head else "-",
                 "path": path.decode("latin-1") if head else "-", "raw_path": path or b"-", "query_string": query,
                 "http_version": head[2] if head else "-", "scheme": info.scheme, "client": info.client,
                 "server": info.server, "headers": []}
    render = ctx.access_line
    if render is not None:
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s", render(scope, status, sent, 0.0, True))
        return
    if exchange is None and head is None:
        access_logger.info('%s - "-" %d %d -', client_text(info), status, sent)
        return
    query = scope["query_string"]
    target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    access_logger.info('%s - "%s %s HTTP/%s" %d %d -', client_text(info), scope["method"], escape_log(target),
                       scope["http_version"], status, sent)


_forwarded_hinted = False
_trusted: Final[dict[str, Any]] = {}


def forwarded_hint(ctx: ServerContext, info: ConnectionInfo) -> None:
    """A request carried a proxy's forwarding fields.  Without --proxy-headers they are ignored (the safe default);
    when it came from an address --forwarded-allow-ips trusts, say once per process which flag would use them."""
    global _forwarded_hinted
    proxy = ctx.config.proxy
    if _forwarded_hinted or proxy.proxy_headers or info.client is None:
        return
    trusted = _trusted.get(proxy.forwarded_allow_ips)
    if trusted is None:
        from ..middleware.proxy_headers import TrustedHosts

        trusted = _trusted[proxy.forwarded_allow_ips] = TrustedHosts(proxy.forwarded_allow_ips)
    if info.client[0] in trusted:
        _forwarded_hinted = True
        logger.warning("requests from %s carry X-Forwarded-*/Forwarded fields, which are ignored: turn on "
                       "--proxy-headers to take the client's address and scheme from a proxy you trust",
                       client_text(info))


def client_text(info: ConnectionInfo | None) -> str:
    """The client's address for a log line."""
    client = info.client if info is not None else None
    return f"{client[0]}:{client[1]}" if client else "-"

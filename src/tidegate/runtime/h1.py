"""The HTTP/1.1 driver: an ``asyncio.Protocol`` per connection.

It owns the transport, the keep-alive timer, the app tasks and back-pressure, feeds bytes to the sans-IO
:class:`~tidegate.protocol.http1.H1Connection` and routes its events to one
:class:`~tidegate.asgi.http.HTTPExchange` per request.  It is the exchange's :class:`~tidegate.asgi.http.Stream`:
the exchange's calls always come from the request being answered, because an exchange refuses to send once its
response is complete and the next pipelined request starts only then.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from time import perf_counter
from typing import Any, Final, cast

from ..asgi.http import HTTPExchange, Stream, escape_log
from ..asgi.scope import ConnectionInfo
from ..protocol.events import Data, EndOfMessage, Preface, Request, RequestError, Upgrade
from ..protocol.http1 import H1Connection
from .context import (
    UNRECORDED,
    ServerContext,
    client_text,
    connection_info,
    cut,
    forwarded_hint,
    log_access,
    log_cut,
    log_refused,
)
from .health import HealthCheck
from .writes import WriteBuffer, copy_file

__all__ = ["H1Driver"]

logger: Final = logging.getLogger("tidegate.error")

access_logger: Final = logging.getLogger("tidegate.access")

# Phases of the connection's read side (see "Deadlines" below).
_BUSY: Final = 0
_IDLE: Final = 1
_HEAD: Final = 2
# After an error response, how long the client may go on sending (read and dropped) before the connection is cut:
# closing at once while its bytes arrive would reset the connection, and the client might never read the answer.
LINGER: Final = 2.0


def _body_size(response: bytes) -> int:
    """The body size of a response the server wrote whole (its head ends at the first empty line)."""
    return len(response) - response.find(b"\r\n\r\n") - 4


def _declared_body(headers: list[tuple[bytes, bytes]]) -> int:
    """The body length a request head declares: its content-length, -1 for a transfer-encoding, else 0."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length" and value.isdigit():
            length = int(value)
    return length


class _UpgradeBody(asyncio.Protocol):
    """Reads the body of an upgrade request answered as a plain one, then gives the transport back."""

    def __init__(self, driver: H1Driver, exchange: HTTPExchange, remaining: int) -> None:
        self.driver = driver
        self.exchange = exchange
        self.remaining = remaining

    def start(self, data: bytes) -> None:
        self.driver.transport.set_protocol(self)
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        driver = self.driver
        take = data[:self.remaining]
        if take:
            self.remaining -= len(take)
            self.exchange.on_data(take)
        if self.remaining == 0:
            self.exchange.on_end()
            driver.transport.set_protocol(driver.as_protocol())
            rest = data[len(take):]
            if rest:
                driver.data_received(rest)
        elif self.exchange.buffered > driver.ctx.limits.request_buffer and not driver.reading_paused:
            driver.reading_paused = True
            driver.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return self.driver.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.connection_lost(exc)

    def pause_writing(self) -> None:
        self.driver.pause_writing()

    def resume_writing(self) -> None:
        self.driver.resume_writing()


class H1Driver(Stream):
    """One HTTP/1.1 connection: the transport's protocol, and the stream its exchanges talk to."""

    #: set by connection_made
    transport: asyncio.Transport
    info: ConnectionInfo

    __slots__ = (
        "_body_since",
        "_body_waiter",
        "_closing_since",
        "_eof",
        "_head_since",
        "_held",
        "_idle_since",
        "_last",
        "_lost",
        "_parked",
        "_pending_error",
        "_phase",
        "_started_at",
        "_timer",
        "_timer_at",
        "_upgrade_request",
        "conn",
        "ctx",
        "current",
        "current_request",
        "info",
        "pipeline",
        "shutting_down",
        "task",
        "transport",
        "writes",
    )

    def as_protocol(self) -> asyncio.Protocol:
        """This driver as its transport's protocol: it has every method of one, its base class is the exchange's
        :class:`~tidegate.asgi.http.Stream`."""
        return cast(asyncio.Protocol, self)

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        # Response bytes collect in the write buffer and go to the transport in one write: past FLUSH_BYTES, or
        # at the end of this loop pass with the other connections' (so a stream of small events made in one go
        # leaves in one write, an event sent before the app waits for something is on the wire before it waits,
        # and the responses of one pass leave together).
        self.writes = writes = WriteBuffer(ctx.loop, ctx.timeouts.write, self._on_paused, flushes=ctx.flushes)
        #: the client has not taken what was written (the exchange's send() then waits in drain())
        self.write_paused = False
        self.conn = H1Connection(ctx.defaults, writes.out.append, ctx.request_limits)
        self.current: HTTPExchange | None = None
        self.current_request: Request | None = None
        #: the exchange of the last request parsed, until it is complete (the next one's events go to it)
        self._last: HTTPExchange | None = None
        self.pipeline: deque[tuple[HTTPExchange, Request]] = deque()
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._phase = _BUSY
        self._idle_since = 0.0
        self._head_since = 0.0
        self._body_waiter: asyncio.Future[None] | None = None
        self._body_since = 0.0
        self._closing_since = 0.0
        #: a response is complete but the client has not taken enough of it: the next request waits
        self._held = False
        self._parked = False
        self._pending_error: RequestError | None = None
        self._upgrade_request: Request | None = None
        self._lost = False
        self._eof = False
        self._started_at = 0.0
        self.reading_paused = False
        self.shutting_down = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.writes.attach(transport)
        self.info = connection_info(self.ctx, transport)
        if not self.ctx.registry.add(self):
            # accepted past --limit-connections (in the same batch as the last one allowed): not read until a
            # connection closes
            self._parked = True
            self.transport.pause_reading()
            return
        self._arm_idle_timer()

    def unpark(self) -> None:
        """A connection closed: serve this one, accepted past the connection limit."""
        self._parked = False
        if not self._lost:
            self.transport.resume_reading()
            self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ctx.debug is not None:
            self.ctx.debug.closed(self.transport, exc, self._why_closed())
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        current = self.current
        if current is not None:
            current.on_disconnect()
            self.ctx.registry.outlive(self.task)
        elif self._last is not None:
            self._last.on_disconnect()
        self.pipeline.clear()
        self.writes.connection_lost()
        self.conn.release()
        self.ctx.registry.discard(self)

    def _why_closed(self) -> str:
        """Why the connection closed, as far as its state tells (for the debug line)."""
        idle = self._phase == _IDLE and not self._closing_since and not self.shutting_down
        # the keep-alive deadline first, compared as the timer compares it: once we close an idle connection, the
        # client's own close may still arrive (eof_received) before the transport is gone
        if idle and self.ctx.loop.time() >= self._idle_since + self.ctx.timeouts.keep_alive:
            return "keep-alive timeout"
        if self._eof:
            return "client closed"
        if self._closing_since:
            return "closed after an error response"
        if self.shutting_down:
            return "server shutting down"
        if self._phase == _IDLE:
            return "client closed"
        if self._phase == _HEAD:
            return "client closed during a request head"
        if not self.conn.keep_alive:
            return "closed after a response (connection: close)"
        return "closed during a request"

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Data):
                last = self._last
                if last is not None:
                    if not last.on_data(event.data):
                        self._body_too_large()
                        return
                    if last.buffered > self.ctx.limits.request_buffer and not self.reading_paused:
                        self.reading_paused = True
                        self.transport.pause_reading()
            elif isinstance(event, EndOfMessage):
                if self._last is not None:
                    self._last.on_end()
            elif isinstance(event, RequestError):
                self._on_request_error(event)
            elif isinstance(event, Upgrade):
                self._on_upgrade(event)
            elif isinstance(event, Preface):
                self._on_preface(event)
        if self._phase == _IDLE and self.conn.in_head:
            # the first byte of a request head: its deadline runs from now, whatever comes after
            self._phase = _HEAD
            self._head_since = self.ctx.loop.time()

    def eof_received(self) -> bool | None:
        # The client sends nothing more.  Whether it still reads is unknown: a half-closing client wants its
        # answers, a closed browser tab does not.  So requests already received are answered, and an app that
        # asks for more (waits in receive() for http.disconnect) is told the client is gone.
        if self._closing_since:
            return None  # lingering after an error response: the client is done, close
        current = self.current
        if current is None and not self._held:
            self._close()
            return None
        if current is not None:
            current.on_eof()
        if self.pipeline or self._held:
            for exchange, _ in self.pipeline:
                exchange.on_eof()
            self._eof = True
        else:
            self.conn.close_after_response()
        return True

    def _on_paused(self, paused: bool) -> None:
        self.write_paused = paused

    def pause_writing(self) -> None:
        self.writes.pause()

    def resume_writing(self) -> None:
        self.writes.resume()
        if self._held and not self._lost:
            self._held = False
            self._next()

    # ------------------------------------------------------------------ requests

    def _on_request(self, request: Request) -> None:
        self._phase = _BUSY
        if self.conn.forwarded:
            self.conn.forwarded = False
            forwarded_hint(self.ctx, self.info)
        if (request.upgrade is not None and self.current is None and request.upgrade in self.ctx.upgrades
                and request.http_version != "1.0"):  # HTTP/1.0 has no Upgrade (RFC 9110 §7.8): a plain request
            # answered by the upgrade handler once the Upgrade event brings the bytes that follow the head
            self._upgrade_request = request
            return
        exchange = HTTPExchange(self, request=request, info=self.info, body_limit=self.ctx.limits.request_body)
        self._last = exchange
        if self.current is None and not self._held:
            self._start(exchange, request)
        else:
            self.pipeline.append((exchange, request))
            if len(self.pipeline) >= self.ctx.limits.pipeline_depth and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()

    def _start(self, exchange: HTTPExchange, request: Request) -> None:
        ctx = self.ctx
        if ctx.health is not None and ctx.health.matches(request.target):
            self._start_health(exchange, request, ctx.health)
            return
        limited = ctx.registry.concurrency_limit is not None
        if limited and not self._admit(exchange):
            return
        if ctx.on_request is not None and ctx.on_request():
            self.conn.close_after_response()  # the last request this server takes (--max-requests)
        self.current = exchange
        self.current_request = request
        if ctx.recording:
            self._started_at = perf_counter()
        self.task = ctx.start_app(self._run_admitted(exchange) if limited else exchange.run(ctx.app))

    def _start_health(self, exchange: HTTPExchange, request: Request, health: HealthCheck) -> None:
        """--health-path: the server answers, as the request's app; neither --max-requests nor
        --limit-concurrency counts it, and it is recorded only with --health-log."""
        self.current = exchange
        self.current_request = request
        self._started_at = perf_counter() if health.log else UNRECORDED
        self.task = self.ctx.start_app(exchange.run(health))

    def _admit(self, exchange: HTTPExchange) -> bool:
        """--limit-concurrency: run the request now, or answer 503 (the app does not see it) and close."""
        if self.conn.broken:
            return False  # refused already: the connection closes
        if self.ctx.registry.admit_request():
            return True
        self._write_error(503, "too many requests in progress, retry later", b"retry-after: 1\r\n", exchange)
        return False

    async def _run_admitted(self, exchange: HTTPExchange) -> None:
        try:
            await exchange.run(self.ctx.app)
        finally:
            self.ctx.registry.release_request()

    def _on_request_error(self, error: RequestError) -> None:
        logger.info("invalid request from %s: %s", self._client_text(), escape_log(error.detail))
        current = self.current
        if current is None:
            self._write_error(error.status, error.detail, head=error.head)
            return
        last = self._last
        if last is not None and not last.request_complete:
            # the body being received is broken: that request will not be answered
            if last is current:
                # its app hears http.disconnect, its sends fail quietly
                if self.conn.response_started:
                    current.on_disconnect()
                    self.abort()
                else:
                    current.on_refused()
                    self._write_error(error.status, error.detail, exchange=current)
                return
            self.pipeline.pop()
        # answer it once the requests before it are answered
        self._pending_error = error

    def _on_upgrade(self, upgrade: Upgrade) -> None:
        request = self._upgrade_request
        self._upgrade_request = None
        if request is not None:
            assert request.upgrade is not None
            self.ctx.upgrades[request.upgrade](self, request, upgrade.trailing)
        else:
            # an upgrade we do not speak: the request is answered as a plain one.  The parser took its body for
            # bytes after the upgrade: read the body first, so that no byte of it is parsed as a request.
            exchange = self._last
            length = _declared_body(exchange.scope["headers"]) if exchange is not None else 0
            if exchange is None or length == 0:
                if upgrade.trailing:
                    self.data_received(upgrade.trailing)
            elif length < 0:
                exchange.reopen_body()
                self._on_request_error(RequestError(400, "an upgrade request's body needs a content-length"))
            else:
                exchange.reopen_body()
                _UpgradeBody(self, exchange, length).start(upgrade.trailing)

    def _on_preface(self, preface: Preface) -> None:
        # HTTP/2 with prior knowledge: only as the very first bytes of a connection (RFC 9113 §3.3), which the
        # parser sees to (it gives no preface once a request came)
        handler = self.ctx.prior_knowledge
        if handler is not None:
            handler(self, preface.data)
        else:
            self._on_request_error(RequestError(505, "HTTP/2 is not spoken here"))

    def decline_upgrade(self, request: Request, trailing: bytes) -> None:
        """Answer an upgrade request as a plain one (the upgrade was not acceptable) and parse what follows."""
        request.upgrade = None
        self._on_request(request)
        if self._last is not None:
            self._last.on_end()  # the parser ends an upgrade request with its head
        if trailing:
            self.data_received(trailing)

    def hand_over(self, protocol: asyncio.Protocol, data: bytes = b"", head: bytes = b"") -> None:
        """Write ``head`` (a 101 response), then give this connection's transport to another protocol (after an
        upgrade), with bytes already read."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if head:
            self.writes.out.append(head)
        self.writes.flush()
        self.writes.connection_lost()
        self.conn.release()
        self.ctx.registry.hand_over(self)
        self._lost = True  # nothing more comes through this driver
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if data:
            protocol.data_received(data)

    def refuse(self, status: int, detail: str, request: Request | None = None) -> None:
        """Answer with an error response and close (an upgrade that cannot be carried out)."""
        self.conn.stop()
        writes = self.writes
        response = self.conn.error_response(status, detail)
        writes.out.append(response)
        if self.ctx.recording:
            head = (request.method, request.target, request.http_version) if request is not None else None
            log_refused(self.ctx, self.info, status, _body_size(response), head=head)
        self._close()

    def _body_too_large(self) -> None:
        self.conn.stop()  # what follows the refused part of the body is not read as requests
        self._on_request_error(RequestError(413, "request body larger than the limit"))

    def _write_error(self, status: int, detail: str, extra: bytes = b"", exchange: HTTPExchange | None = None,
                     head: tuple[bytes, bytes, str] | None = None) -> None:
        """Answer a request the app does not (``exchange``: the one refused, if its head was parsed; else ``head``,
        its request line if that was read) and close."""
        transport = self.transport
        if not transport.is_closing():
            writes = self.writes
            response = self.conn.error_response(status, detail, extra)
            writes.out.append(response)
            writes.flush()
            if self.ctx.recording:
                log_refused(self.ctx, self.info, status, _body_size(response), exchange, head)
            self.conn.stop()
            if transport.can_write_eof():
                # linger: send the answer and a FIN, read (and drop) what the client still sends until it closes
                transport.write_eof()
                self._linger()
                if self.reading_paused:
                    self.reading_paused = False
                    transport.resume_reading()
            else:
                self._close()

    def _close(self) -> None:
        """Close once what is queued is written; past --timeout-write for that, drop the connection."""
        self.writes.close()

    def _linger(self) -> None:
        if self._lost:
            return
        now = self.ctx.loop.time()
        self._closing_since = now
        self._watch(now + LINGER)

    def response_done(self) -> None:
        exchange = self.current
        assert exchange is not None
        if self.ctx.recording:
            self._log_access(exchange)
        self.current = None
        self.current_request = None
        self.task = None
        if not self.conn.keep_alive or not exchange.request_complete or self.shutting_down:
            self._close()
            return
        self.conn.next_response()
        if self._last is exchange:
            self._last = None  # not kept while the connection waits (a keep-alive connection's memory: 0.9 KiB less)
        if self.writes.paused:
            # the client has not taken enough of this response yet: the next one waits (resume_writing), so that
            # a client that pipelines and never reads cannot make responses pile up; the parser holds what else
            # comes, and reading pauses once as many requests as may be queued are waiting
            self._held = True
            if not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self._next()

    def _next(self) -> None:
        """After a complete response: start the next pipelined request, or wait for one."""
        if self.pipeline:
            exchange, request = self.pipeline.popleft()
            self._start(exchange, request)
            conn = self.conn
            if conn.held and len(self.pipeline) < self.ctx.limits.pipeline_depth:
                self.data_received(b"")  # the requests not parsed while as many as may be queued were waiting
            if (self.reading_paused and not conn.held and len(self.pipeline) < self.ctx.limits.pipeline_depth
                    and exchange.buffered <= self.ctx.limits.request_buffer):
                self.resume_reading()
        elif self._pending_error is not None:
            error = self._pending_error
            self._write_error(error.status, error.detail, head=error.head)
        elif self._eof:
            self._close()
        else:
            if self.reading_paused:
                self.resume_reading()  # paused while the client had not taken the last response
            self._arm_idle_timer()

    # Deadlines, each for one phase and none pushed back by bytes that trickle in:
    #   idle: from the end of the last response (or the connection's start) to the first byte of a request:
    #     --timeout-keep-alive, then the connection closes quietly;
    #   head: from that first byte until the head is complete: --timeout-request-header, then 408;
    #   body: while the app waits in receive() for more of the request body: --timeout-request-body, then the app
    #     gets http.disconnect and the client 408 (if no response started);
    #   write: while send() waits for the client to take what is queued, or a closed connection still has bytes to
    #     write: the connection is dropped once a whole --timeout-write passes in which the client took none of them.
    # A phase begins with an attribute write or two, never a timer: one timer per connection is armed lazily.  When
    # it fires it works out the deadline of the phase the connection is in now: past it, it acts; else it re-arms
    # for it, and never for later than one idle period, so that the next idle phase finds it armed in time.

    def _arm_idle_timer(self) -> None:
        loop = self.ctx.loop
        self._phase = _IDLE
        self._idle_since = now = loop.time()
        if self._timer is None:
            self._timer_at = now + self._idle_check()
            self._timer = loop.call_at(self._timer_at, self._on_timer)

    def _watch(self, deadline: float) -> None:
        """Make the timer fire by ``deadline``."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.ctx.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._lost:
            return
        ctx = self.ctx
        loop = ctx.loop
        now = loop.time()
        if self._closing_since:
            deadline = self._closing_since + LINGER
            if now >= deadline:
                self.transport.abort()
                return
        elif self._phase:
            if self._phase == _IDLE and self.conn.in_head:
                # part of a pipelined head came while the previous request ran: its time counts from then
                self._phase = _HEAD
                self._head_since = self._idle_since
            if self._phase == _IDLE:
                deadline = self._idle_since + ctx.timeouts.keep_alive
                if now >= deadline:
                    self._close()
                    return
            else:
                deadline = self._head_since + ctx.timeouts.request_header
                if now >= deadline:
                    logger.info("request head from %s not complete within %gs: answering 408", self._client_text(),
                                ctx.timeouts.request_header)
                    self._write_error(408, "request head not received in time")
                    return
        else:
            deadline = 0.0
            waiter = self._body_waiter
            if waiter is not None and not waiter.done() and self.current is not None:
                deadline = self._body_since + ctx.timeouts.request_body
                if now >= deadline:
                    self._body_timed_out()
                    return
            if not deadline:
                return  # nothing to watch while the app runs: _arm_idle_timer or _watch arm it again
        self._timer_at = min(deadline, now + self._idle_check())
        self._timer = loop.call_at(self._timer_at, self._on_timer)

    def _body_timed_out(self) -> None:
        logger.info("request body from %s stalled for %gs: the app gets http.disconnect", self._client_text(),
                    self.ctx.timeouts.request_body)
        current = self.current
        assert current is not None
        self.conn.stop()
        if self.conn.response_started:
            current.on_disconnect()
            self.abort()
        else:
            current.on_refused()
            self._write_error(408, "request body not received in time", exchange=current)

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in progress."""
        self.shutting_down = True
        self.conn.close_after_response()
        if self._parked:
            self._close()  # accepted past the connection limit and never read
            return
        # A connection that has not sent its first request yet may have one on the way (it was accepted just
        # before the listener closed): answer it, with connection: close; the idle timer bounds the wait.
        if self.current is None and self.conn.requested:
            self._close()

    def _log_access(self, exchange: HTTPExchange) -> None:
        log_access(self.ctx, self.info, exchange, self._started_at)

    def _client_text(self) -> str:
        return client_text(self.info)

    def _idle_check(self) -> float:
        """The longest the deadline timer sleeps while one of the connection's deadlines is watched."""
        timeouts = self.ctx.timeouts
        return min(timeouts.keep_alive, timeouts.request_header)

    # ------------------------------------------------------------------ Stream (used by the exchange)

    def send_head(self, status: int, headers: Any) -> None:
        assert self.current_request is not None
        self.conn.start_response(self.current_request, status, headers)


    def send_data(self, data: bytes, end: bool) -> None:
        """A body piece, the last one too, leaves with the loop pass's other writes (see WriteBuffer.wrote): the
        responses of one pass reach their clients together, and each client wakes once for them."""
        self.conn.send_body(data, end)
        self.writes.wrote(len(data))

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.current_request is not None and self.current_request.http_version != "1.0":
            writes = self.writes
            writes.out.append(self.conn.informational(status, headers))
            writes.flush()

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn.send_trailers(headers)
        self.writes.flush()

    async def send_file(self, fd: int, offset: int, count: int, end: bool) -> None:
        """A file's bytes as a body piece: with ``sendfile`` on a cleartext connection, else read and written in
        pieces (TLS encrypts in the process), with back-pressure either way."""
        before, after, send = self.conn.file_framing(count, end)
        writes = self.writes
        if before:
            writes.out.append(before)
            writes.wrote(len(before))
        if send:
            if self.info.scheme == "http" and self.transport.get_extra_info("socket") is not None:
                await writes.send_file(fd, offset, count)
            else:
                await copy_file(fd, offset, count, self._write_piece, self)
        if after:
            writes.out.append(after)
        if end:
            writes.flush()
        elif after:
            writes.wrote(len(after))

    def _write_piece(self, data: bytes, last: bool) -> None:
        self.writes.out.append(data)
        self.writes.wrote(len(data))

    def send_error(self, status: int) -> None:
        writes = self.writes
        response = self.conn.error_response(status)
        writes.out.append(response)
        writes.flush()
        current = self.current
        if current is not None:
            current.bytes_sent = _body_size(response)
        self.response_done()

    def response_cut(self) -> None:
        current = self.current
        if current is not None:
            log_cut(self.ctx, self.info, current, self._started_at)

    def abort(self) -> None:
        """Close after what was written: the response in progress cannot be completed."""
        self._close()

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cancel the app and drop the connection; return the task cancelled."""
        return cut(self.transport, self.task)

    def drain(self) -> Awaitable[None]:
        return self.writes.drain()

    def create_waiter(self) -> asyncio.Future[None]:
        loop = self.ctx.loop
        waiter = loop.create_future()
        current = self.current
        if current is not None and not current.request_complete:
            # the app waits for more of the request body: --timeout-request-body runs
            self._body_waiter = waiter
            self._body_since = now = loop.time()
            self._watch(now + self.ctx.timeouts.request_body)
        return waiter

    def resume_reading(self) -> None:
        if self.reading_paused and not self._lost and not self.conn.held:
            self.reading_paused = False
            self.transport.resume_reading()

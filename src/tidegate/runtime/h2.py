"""The HTTP/2 driver: an ``asyncio.Protocol`` per connection, many exchanges at once.

It owns the transport, the idle timer, one app task per stream and back-pressure, feeds bytes to the sans-IO
:class:`~tidegate.protocol.http2.H2Connection` and gives each stream its own
:class:`~tidegate.asgi.http.HTTPExchange` — the same exchange as HTTP/1.1 — through a small :class:`H2Stream`
that is that exchange's :class:`~tidegate.asgi.http.Stream`.

- Reading: request data reaches the exchange as it arrives; the stream's flow-control window is given back as the
  app consumes it (``resume_reading``), so a slow app holds at most one window per stream.
- Writing: frames collect in one buffer and leave in one ``transport.write`` per loop iteration (responses made in
  one go leave together).  ``send()`` waits (``drain``) while the stream's data waits for the peer's window or the
  transport is over its high-water mark; while the transport is, reading pauses too, so a peer that does not read
  cannot make us queue answers to its PINGs and SETTINGS.
- A stream the client resets gets ``http.disconnect``; the others go on.  Streams whose app still runs count
  against ``--h2-max-concurrent-streams`` even once reset: past it a new stream is refused (rapid reset,
  CVE-2023-44487, cannot pile up app tasks), and the connection's reset count is zeroed every
  ``RESET_INTERVAL`` seconds (past the limit the connection ends with GOAWAY ENHANCE_YOUR_CALM).
- ``shutdown()`` sends GOAWAY with the last stream id and closes once the open streams are answered.
- The limits shared with HTTP/1.1: a body past ``--limit-request-body`` gets 413 (or a reset, once the response
  started), a body the app has waited for ``--timeout-request-body`` gets 408, and past ``--limit-concurrency`` a
  request gets 503 with Retry-After; each time the app hears ``http.disconnect`` or is not called.

How a connection comes to HTTP/2 (ALPN, prior knowledge, ``Upgrade: h2c``) is :mod:`~tidegate.runtime.negotiate`'s.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any, Final

from ..asgi.http import ASGIApp, HTTPExchange, Stream, escape_log
from ..asgi.scope import ConnectionInfo
from ..protocol.events import Answered, ConnectionClosed, Data, EndOfMessage, Request, StreamReset, Writable
from ..protocol.http2 import CANCEL, INTERNAL_ERROR, NO_ERROR, REFUSED_STREAM, H2Connection
from ..protocol.websocket import CLOSED
from .context import (
    UNRECORDED,
    ServerContext,
    body_waiter,
    client_text,
    connection_info,
    cut,
    log_access,
    log_cut,
    log_refused,
)
from .health import HealthCheck
from .websocket import StreamCarrier, WebSocketChannel
from .writes import FLUSH_BYTES, WriteBuffer, WriteDeadline, copy_file, release, wait_to_send

__all__ = ["H2Driver", "H2Stream", "H2WebSocket"]

logger: Final = logging.getLogger("tidegate.error")
access_logger: Final = logging.getLogger("tidegate.access")

#: after a GOAWAY, how long the connection may stay half-closed for the peer to read it and close
LINGER: Final = 2.0
#: seconds after which the count of client resets starts again from zero
RESET_INTERVAL: Final = 10.0
#: client resets (and client-caused stream errors) tolerated per interval
MAX_RESETS: Final = 200


def _stream_deadline(driver: H2Driver, stream: H2Stream | H2WebSocket) -> WriteDeadline:
    """--timeout-write for a stream waiting in ``drain()``: the client must take some of what waits for it (the
    stream's data held for its window, the transport's buffer) in each period, else the stream is reset (the
    connection itself is dropped by its own write deadline when the transport is what is full)."""

    def queued() -> int:
        return driver.conn.pending(stream.id) + driver.transport.get_write_buffer_size()

    def expired() -> None:
        if stream.gone or driver._lost:
            return
        logger.info("HTTP/2 client %s has not read for %gs: resetting the stream", driver.client_text(),
                    driver.ctx.timeouts.write)
        driver.conn.reset_stream(stream.id, CANCEL)
        stream.on_reset()
        driver.writes.wrote(0)

    return WriteDeadline(driver.ctx.loop, driver.ctx.timeouts.write, queued, expired)


async def _drain(stream: H2Stream | H2WebSocket) -> None:
    """Wait until a stream may send again (its window and the transport's buffer), under the write deadline; raise
    ClientDisconnected once the stream is gone."""
    driver = stream.driver
    await wait_to_send(stream, driver.ctx.loop, driver.waiting,
                       lambda: not driver.write_paused and not driver.conn.pending(stream.id),
                       lambda: _stream_deadline(driver, stream))


class H2Stream(Stream):
    """One stream: the :class:`~tidegate.asgi.http.Stream` its exchange talks to."""

    exchange: HTTPExchange  # set by the driver, which makes the exchange with this stream
    # deleted once the app is done (see H2Driver._stream_finished); mypyc allows it for what is listed here
    __deletable__ = ("exchange",)

    __slots__ = ("_waiter", "driver", "exchange", "gone", "id", "request", "started_at", "task", "unacked")

    def __init__(self, driver: H2Driver, request: Request) -> None:
        self.driver = driver
        self.id = request.stream_id
        self.request = request
        self.task: asyncio.Task[None] | None = None
        self.write_paused = False
        self.reading_paused = False
        #: request bytes handed to the exchange and not yet acknowledged to the peer
        self.unacked = 0
        self.gone = False
        self.started_at = 0.0
        self._waiter: asyncio.Future[None] | None = None

    async def run(self, app: ASGIApp | None = None) -> None:
        """Run the app on this stream's exchange (``app``: the health path's answer instead of the app)."""
        try:
            await self.exchange.run(self.driver.ctx.app if app is None else app)
        finally:
            self.driver._stream_finished(self)

    # ------------------------------------------------------------------ from the driver

    def on_data(self, data: bytes) -> None:
        self.unacked += len(data)
        self.reading_paused = True
        if not self.exchange.on_data(data):
            self.driver.refuse_body(self, 413, "request body larger than the limit")

    def on_end(self) -> None:
        if not self.gone:  # refused (see H2Driver.refuse_body): the app heard http.disconnect already
            self.exchange.on_end()

    def on_reset(self) -> None:
        """The stream was reset, or the connection is gone."""
        if not self.gone:
            self.gone = True
            self.exchange.on_disconnect()
            self.wake()

    def shutdown(self) -> None:
        pass  # a request in progress is answered

    def wake(self) -> None:
        release(self)

    # ------------------------------------------------------------------ Stream

    def send_head(self, status: int, headers: Any) -> None:
        self.driver.conn.start_response(self.id, status, headers)

    def send_data(self, data: bytes, end: bool) -> None:
        driver = self.driver
        if not driver.conn.send_body(self.id, data, end) or driver.write_paused:
            self.write_paused = True
        driver.writes.wrote(len(data))

    def send_trailers(self, headers: Any) -> None:
        driver = self.driver
        driver.conn.send_trailers(self.id, headers)
        if driver.conn.pending(self.id) or driver.write_paused:
            self.write_paused = True
        driver.writes.wrote(0)

    async def send_file(self, fd: int, offset: int, count: int, end: bool) -> None:
        """A file's bytes as DATA, read in pieces under the stream's flow control (no sendfile: frames wrap them)."""
        if count:
            await copy_file(fd, offset, count, lambda data, last: self.send_data(data, end and last), self)
        elif end:
            self.send_data(b"", True)

    def response_done(self) -> None:
        driver = self.driver
        if driver.ctx.recording:
            driver.log_access(self)

    def response_cut(self) -> None:
        driver = self.driver
        log_cut(driver.ctx, driver.info, self.exchange, self.started_at)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.driver.conn.informational(self.id, status, headers)
        self.driver.writes.wrote(0)

    def send_error(self, status: int) -> None:
        self.exchange.bytes_sent = self.driver.conn.error_response(self.id, status)
        self.driver.writes.wrote(0)
        self.response_done()

    def abort(self) -> None:
        """The response cannot be completed: reset this stream only."""
        self.driver.conn.reset_stream(self.id, INTERNAL_ERROR)
        self.driver.writes.wrote(0)

    async def drain(self) -> None:
        await _drain(self)

    def create_waiter(self) -> asyncio.Future[None]:
        return body_waiter(self.driver.ctx, self.exchange, self._body_stalled)

    def _body_stalled(self) -> None:
        self.driver.refuse_body(self, 408, "request body not received in time")

    def resume_reading(self) -> None:
        self.reading_paused = False
        size = self.unacked
        driver = self.driver
        if size:
            self.unacked = 0
            driver.conn.acknowledge(self.id, size)
            driver.writes.wrote(0)
        elif driver._upgraded is self and not driver._lost:
            driver.transport.resume_reading()  # the h2c upgrade's body, read again


class H2WebSocket(StreamCarrier):
    """A WebSocket over one stream (RFC 8441 extended CONNECT): the stream is the
    :class:`~tidegate.runtime.websocket.Carrier` of the same :class:`~tidegate.runtime.websocket.WebSocketChannel` as
    over HTTP/1.1, with the stream's DATA as the byte stream.

    The handshake is answered with HEADERS 200; frames go out as DATA (under the stream's flow control, so a client
    that does not read makes ``send()`` wait); data received is given back to the client's window as the channel
    takes it -- not while the app has not taken the messages, nor while our output to the client waits.  The closing
    handshake ends the stream with END_STREAM; a failure or a missing close resets it.
    """

    __slots__ = ("_ending", "driver", "gone", "id", "label", "unacked")

    def __init__(self, driver: H2Driver, request: Request) -> None:
        self.driver = driver
        self.id = request.stream_id
        self.label = " HTTP/2"
        #: request bytes received and not yet given back to the client's window
        self.unacked = 0
        self.gone = False
        self._ending = False
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.channel = WebSocketChannel(driver.ctx, driver.info, request, self)

    def _maybe_done(self) -> None:
        """Forgotten by the driver once the app returned and the stream ended."""
        if (self.task is None or self.task.done()) and (self.gone or not self.driver.conn.is_open(self.id)):
            self.channel.lost()
            self.driver.forget(self)

    # ------------------------------------------------------------------ from the driver

    def on_data(self, data: bytes) -> None:
        self.unacked += len(data)
        channel = self.channel
        channel.receive(data)
        if not channel.reading_paused:
            self.resume_reading()
        self.driver.writes.wrote(0)

    def on_end(self) -> None:
        """The client ended the stream: after its close frame, the end of the session; without one, a loss."""
        if self.channel.session.state != CLOSED:
            self.driver.conn.reset_stream(self.id, CANCEL)
            self.gone = True
            self.channel.lost()
        else:
            self.finish()
        self.driver.writes.wrote(0)
        self._maybe_done()

    def on_reset(self) -> None:
        if not self.gone:
            self.gone = True
            self.channel.lost()
            self.wake()
            self._maybe_done()

    # ------------------------------------------------------------------ Carrier (used by the channel)

    def output_full(self) -> bool:
        return self.driver.conn.pending(self.id) > FLUSH_BYTES

    def write(self, data: bytes) -> None:
        driver = self.driver
        if not driver.conn.send_body(self.id, data, False) or driver.write_paused:
            self.write_paused = True
        driver.writes.wrote(len(data))

    def flush(self) -> None:
        self.driver.writes.wrote(0)

    def accept(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        conn = self.driver.conn
        conn.start_response(self.id, status, headers)
        conn.send_body(self.id, b"", False)  # the HEADERS go now; the stream stays open both ways
        self.driver.writes.wrote(0)

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
        conn = self.driver.conn
        if headers:
            conn.start_response(self.id, status, headers)
            conn.send_body(self.id, (detail + "\n").encode(), True)
        else:
            conn.error_response(self.id, status, detail)
        self.driver.writes.wrote(0)
        self._maybe_done()

    def deny_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.driver.conn.start_response(self.id, status, headers)

    def deny_body(self, data: bytes, end: bool) -> None:
        driver = self.driver
        if not driver.conn.send_body(self.id, data, end) or driver.write_paused:
            self.write_paused = True
        if end and driver.conn.is_open(self.id) and not driver.conn.pending(self.id):
            driver.conn.reset_stream(self.id, NO_ERROR)  # answered: the client's side is not wanted (RFC 9113 §8.1)
        driver.writes.wrote(len(data))
        self._maybe_done()

    def pause_reading(self) -> None:
        pass  # what comes is not given back to the client's window (see on_data)

    def resume_reading(self) -> None:
        size = self.unacked
        if size and not self.gone:
            self.unacked = 0
            self.driver.conn.acknowledge(self.id, size)
            self.driver.writes.wrote(0)

    def finish(self) -> None:
        if not self._ending and not self.gone:
            self._ending = True
            self.driver.conn.send_body(self.id, b"", True)
            self.driver.writes.wrote(0)
            self._maybe_done()

    def abandon(self) -> None:
        if not self.gone:
            self.driver.conn.reset_stream(self.id, CANCEL)
            self.driver.writes.wrote(0)
        self.on_reset()

    async def drain(self) -> None:
        await _drain(self)


class H2Driver(asyncio.Protocol):
    """One HTTP/2 connection."""

    #: set by connection_made
    transport: asyncio.Transport
    info: ConnectionInfo

    def __init__(self, ctx: ServerContext, upgrade: tuple[Request, bytes, int] | None = None) -> None:
        self.ctx = ctx
        settings = ctx.h2
        self.writes = writes = WriteBuffer(ctx.loop, ctx.timeouts.write, self._on_paused, "HTTP/2 ", ctx.flushes)
        #: the transport is above its high-water mark
        self.write_paused = False
        self.conn = H2Connection(writes.out.append, defaults=ctx.defaults,
                                 max_concurrent_streams=settings.max_concurrent_streams,
                                 max_header_list_size=settings.max_header_list_size,
                                 initial_window_size=max(min(ctx.limits.request_buffer, 2**31 - 1), 1),
                                 enable_connect_protocol=ctx.connect_protocol,
                                 max_resets=MAX_RESETS, max_field_size=ctx.limits.request_field_size)
        #: streams whose app task runs (a stream the client reset stays here until its app returns; a WebSocket
        #: until its stream ends too)
        self.streams: dict[int, H2Stream | H2WebSocket] = {}
        #: streams waiting in drain()
        self.waiting: set[H2Stream | H2WebSocket] = set()
        self.shutting_down = False
        self._upgrade = upgrade
        self._upgrade_body = 0
        self._upgraded: H2Stream | None = None
        self._lost = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._reset_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.writes.attach(transport)
        self.info = connection_info(self.ctx, transport)
        self.ctx.registry.add(self, admit=False)  # counted; HTTP/2 connections are not held unread
        if self._upgrade is None:
            self.conn.initiate()
            self.writes.flush()
            self._arm_idle_timer()
        else:
            self._start_upgraded(*self._upgrade)
            self._upgrade = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ctx.debug is not None:
            self.ctx.debug.closed(self.transport, exc, self._why_closed(), (self.conn.last_stream_id + 1) // 2)
        self._lost = True
        for timer in (self._timer, self._reset_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._reset_timer = None
        self._closing = True
        self.writes.connection_lost()
        registry = self.ctx.registry
        for stream in list(self.streams.values()):
            stream.on_reset()
            registry.outlive(stream.task)
        registry.discard(self)

    def _why_closed(self) -> str:
        """Why the connection closed, as far as its state tells (for the debug line)."""
        if self.conn.closed:
            return "closed after a connection error (GOAWAY sent)"
        if self.shutting_down:
            return "server shutting down"
        if self.conn.peer_going_away:
            return "client sent GOAWAY"
        if self._closing:
            return "keep-alive timeout"
        return "client closed"

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # after our GOAWAY, while the peer reads it
        if self._upgrade_body:
            data = self._upgrade_body_data(data)
            if not data:
                return
        conn = self.conn
        streams = self.streams
        for event in conn.receive_data(data):
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Data):
                stream = streams.get(event.stream_id)
                if stream is None or stream.gone:
                    conn.acknowledge(event.stream_id, len(event.data))
                else:
                    piece = event.data
                    stream.on_data(piece if type(piece) is bytes else bytes(piece))  # (only HTTP/1.1 joins pieces)
            elif isinstance(event, (EndOfMessage, StreamReset, Writable)):
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                if isinstance(event, EndOfMessage):
                    stream.on_end()
                elif isinstance(event, StreamReset):
                    stream.on_reset()
                else:
                    stream.wake()
            elif isinstance(event, ConnectionClosed):
                self._on_closed(event)
            elif isinstance(event, Answered) and self.ctx.recording:
                log_refused(self.ctx, self.info, event.status, event.size, head=(event.method, event.target, "2"))
        if conn.resets and self._reset_timer is None:
            self._reset_timer = self.ctx.loop.call_later(RESET_INTERVAL, self._clear_resets)
        self.writes.flush()
        if conn.closed:
            self.close()

    def _on_paused(self, paused: bool) -> None:
        self.write_paused = paused

    def pause_writing(self) -> None:
        self.writes.pause()
        if not self._lost:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writes.resume()
        if not self._lost:
            self.transport.resume_reading()
        for stream in list(self.waiting):
            stream.wake()

    # ------------------------------------------------------------------ streams

    def _on_request(self, request: Request) -> None:
        if len(self.streams) >= self.conn.max_concurrent_streams:
            # apps of reset streams still run: do not start more than the limit
            self.conn.reset_stream(request.stream_id, REFUSED_STREAM, client_fault=True)
            return
        if request.upgrade is not None:
            self._on_extended_connect(request)
            return
        ctx = self.ctx
        if ctx.health is not None and ctx.health.matches(request.target):
            self._start_health(request, ctx.health)
            return
        limited = ctx.registry.concurrency_limit is not None
        if limited and not ctx.registry.admit_request():
            self._busy(request)
            return
        stream = H2Stream(self, request)
        stream.exchange = HTTPExchange(stream, request=request, info=self.info, body_limit=ctx.limits.request_body)
        self.streams[stream.id] = stream
        if ctx.on_request is not None:
            ctx.on_request()  # --max-requests: the server retires once it says so; the connection goes on
        if ctx.recording:
            stream.started_at = perf_counter()
        stream.task = ctx.start_app(self._run_admitted(stream) if limited else stream.run())

    def _start_health(self, request: Request, health: HealthCheck) -> None:
        """--health-path: the server answers, as the stream's app; neither --max-requests nor --limit-concurrency
        counts it, and it is recorded only with --health-log."""
        stream = H2Stream(self, request)
        stream.exchange = HTTPExchange(stream, request=request, info=self.info, body_limit=self.ctx.limits.request_body)
        self.streams[stream.id] = stream
        stream.started_at = perf_counter() if health.log else UNRECORDED
        stream.task = self.ctx.start_app(stream.run(health))

    async def _run_admitted(self, stream: H2Stream) -> None:
        try:
            await stream.run()
        finally:
            self.ctx.registry.release_request()

    def _busy(self, request: Request) -> None:
        """--limit-concurrency: 503 with Retry-After; the app does not see the request."""
        conn = self.conn
        stream_id = request.stream_id
        body = b"Service Unavailable: too many requests in progress, retry later\n"
        conn.start_response(stream_id, 503, [(b"retry-after", b"1"), (b"content-type", b"text/plain; charset=utf-8")])
        conn.send_body(stream_id, body, True)
        if conn.is_open(stream_id):
            conn.reset_stream(stream_id, NO_ERROR)  # the request's body is not wanted (RFC 9113 §8.1)
        self.writes.wrote(0)
        if self.ctx.recording:
            log_refused(self.ctx, self.info, 503, len(body), head=(request.method, request.target, "2"))

    def refuse_body(self, stream: H2Stream, status: int, detail: str) -> None:
        """The request body passed --limit-request-body (413) or stalled (408): the app hears http.disconnect; the
        client gets ``status`` if no response started, else the stream is reset."""
        if stream.gone:
            return
        logger.info("HTTP/2 request from %s refused: %s", self._client_text(), detail)
        exchange = stream.exchange
        unanswered = exchange.status == 0
        if unanswered:
            stream.gone = True
            exchange.on_refused()
            stream.wake()
            size = self.conn.error_response(stream.id, status, detail)
            if self.ctx.recording:
                log_refused(self.ctx, self.info, status, size, exchange)
        else:
            stream.on_reset()  # the response in progress is cut
        self.conn.reset_stream(stream.id, NO_ERROR if unanswered else CANCEL)
        self.writes.wrote(0)

    def _on_extended_connect(self, request: Request) -> None:
        """RFC 8441: a WebSocket over this stream (the only protocol extended CONNECT offers)."""
        if request.upgrade != b"websocket":
            detail = "extended CONNECT for this protocol is not supported"
            size = self.conn.error_response(request.stream_id, 501, detail)
            if self.ctx.recording:
                log_refused(self.ctx, self.info, 501, size, head=(request.method, request.target, "2"))
            return
        if self.ctx.debug is not None:
            target = escape_log(request.target.decode("latin-1"))
            self.ctx.debug.protocol(self._client_text(),
                                    f"WebSocket over HTTP/2 (stream {request.stream_id}, {target})")
        websocket = H2WebSocket(self, request)
        self.streams[websocket.id] = websocket
        websocket.start()

    def _stream_finished(self, stream: H2Stream) -> None:
        if not stream.gone and self.conn.is_open(stream.id) and not self._lost:
            # the app is done while the stream is not: the response is complete and the client still sends
            # (RFC 9113 §8.1: ask it to stop, without error), or the response was never completed
            self.conn.reset_stream(stream.id, CANCEL if stream.exchange.request_complete else NO_ERROR)
            self.writes.wrote(0)
        self.forget(stream)
        # the stream and its exchange refer to each other: without this, every request left that cycle (stream,
        # exchange, task, scope: ten objects) for the cyclic collector, a tenth of the CPU of an HTTP/2 server
        del stream.exchange

    def forget(self, stream: H2Stream | H2WebSocket) -> None:
        """The stream's app is done (and a WebSocket's stream ended): the connection may go idle or close."""
        self.streams.pop(stream.id, None)
        if not self.streams:
            if self.shutting_down or self.conn.peer_going_away:
                self.close()
            else:
                self._arm_idle_timer()

    def _on_closed(self, event: ConnectionClosed) -> None:
        if event.graceful:
            if not self.streams:
                self.close()
            return
        logger.info("HTTP/2 connection error with %s: %s", self._client_text(), escape_log(event.detail))
        for stream in list(self.streams.values()):
            stream.on_reset()

    def _clear_resets(self) -> None:
        self._reset_timer = None
        self.conn.forget_resets()

    # ------------------------------------------------------------------ h2c upgrade

    def _start_upgraded(self, request: Request, settings: bytes, body_length: int) -> None:
        self.conn.initiate_upgrade(settings, request.method == b"HEAD")
        self.writes.flush()
        stream = H2Stream(self, request)
        stream.exchange = HTTPExchange(stream, request=request, info=self.info, body_limit=self.ctx.limits.request_body)
        self.streams[1] = stream
        if self.ctx.recording:
            stream.started_at = perf_counter()
        self._upgrade_body = body_length
        self._upgraded = stream if body_length else None
        if not body_length:
            stream.exchange.on_end()
        health = self.ctx.health
        if health is not None and health.matches(request.target):
            stream.started_at = perf_counter() if health.log else UNRECORDED
            stream.task = self.ctx.start_app(stream.run(health))
            return
        stream.task = self.ctx.start_app(stream.run())

    def _upgrade_body_data(self, data: bytes) -> bytes:
        """The upgrading request's body comes first, as HTTP/1.1 bytes; the HTTP/2 preface follows it."""
        size = min(len(data), self._upgrade_body)
        self._upgrade_body -= size
        stream = self._upgraded
        if stream is not None and not stream.gone:
            exchange = stream.exchange
            exchange.on_data(data[:size])
            if not self._upgrade_body:
                exchange.on_end()
                self._upgraded = None
            elif exchange.buffered > self.ctx.limits.request_buffer and not stream.reading_paused:
                # these bytes are not flow-controlled: read no more until the app takes them
                stream.reading_paused = True
                self.transport.pause_reading()
        return data[size:]

    # ------------------------------------------------------------------ writing

    # ------------------------------------------------------------------ idle, shutdown

    def _arm_idle_timer(self) -> None:
        if self._closing:
            return
        loop = self.ctx.loop
        self._idle_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._idle_since + self.ctx.timeouts.keep_alive, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._timer = None
        if self.streams:
            return  # busy: re-armed when the last stream ends
        deadline = self._idle_since + self.ctx.timeouts.keep_alive
        loop = self.ctx.loop
        if loop.time() >= deadline:
            self.conn.goaway()
            self.close()
        else:
            self._timer = loop.call_at(deadline, self._on_idle_timer)

    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY with the last stream id; close once the open streams are answered."""
        self.shutting_down = True
        self.conn.goaway()
        for stream in list(self.streams.values()):
            stream.shutdown()
        self.writes.flush()
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Close after what is queued, half-closing first where the transport can: a peer still sending when a
        socket closes would get a reset that may destroy our GOAWAY before it reads it."""
        if self._closing or self._lost:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.writes.flush()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self.ctx.loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cancel the apps and drop the connection; return the tasks cancelled."""
        return cut(self.transport, *(stream.task for stream in self.streams.values()))

    # ------------------------------------------------------------------ logging

    def client_text(self) -> str:
        return self._client_text()

    def log_access(self, stream: H2Stream) -> None:
        log_access(self.ctx, self.info, stream.exchange, stream.started_at)

    def _client_text(self) -> str:
        return client_text(self.info)

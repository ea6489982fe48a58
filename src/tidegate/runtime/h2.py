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

Also here: choosing HTTP/2 — by TLS ALPN (:func:`connection_factory`), by the connection preface on a cleartext
port (``h2c`` with prior knowledge) and by ``Upgrade: h2c`` from HTTP/1.1 (:func:`install`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..asgi.errors import ClientDisconnected
from ..asgi.http import HTTPExchange, escape_log
from ..asgi.scope import ConnectionInfo, http_scope
from ..protocol.events import ConnectionClosed, Data, EndOfMessage, Request, StreamReset, Writable
from ..protocol.http2 import CANCEL, INTERNAL_ERROR, NO_ERROR, REFUSED_STREAM, H2Connection
from .h1 import H1Driver, _address
from .tls import with_tls

if TYPE_CHECKING:
    from .server import ServerState

__all__ = ["H2Driver", "H2Stream", "alpn_protocols", "connection_factory", "install"]

logger = logging.getLogger("tidegate.error")
access_logger = logging.getLogger("tidegate.access")

_FLUSH_BYTES = 65536
#: after a GOAWAY, how long the connection may stay half-closed for the peer to read it and close
LINGER = 2.0
#: seconds after which the count of client resets starts again from zero
RESET_INTERVAL = 10.0
#: client resets (and client-caused stream errors) tolerated per interval
MAX_RESETS = 200


class H2Stream:
    """One stream: the :class:`~tidegate.asgi.http.Stream` its exchange talks to."""

    __slots__ = ("_waiter", "driver", "exchange", "gone", "id", "reading_paused", "request", "started_at", "task",
                 "unacked", "write_paused")

    def __init__(self, driver: H2Driver, request: Request) -> None:
        self.driver = driver
        self.id = request.stream_id
        self.request = request
        self.exchange: HTTPExchange = None  # type: ignore[assignment]
        self.task: asyncio.Task[None] | None = None
        self.write_paused = False
        self.reading_paused = False
        #: request bytes handed to the exchange and not yet acknowledged to the peer
        self.unacked = 0
        self.gone = False
        self.started_at = 0.0
        self._waiter: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            await self.exchange.run(self.driver.server.app)
        finally:
            self.driver._stream_finished(self)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ Stream

    def send_head(self, status: int, headers: Any) -> None:
        self.driver.conn.start_response(self.id, status, headers)

    def send_data(self, data: bytes, end: bool) -> None:
        driver = self.driver
        if not driver.conn.send_body(self.id, data, end) or driver.write_paused:
            self.write_paused = True
        driver.wrote(len(data))

    def send_trailers(self, headers: Any) -> None:
        driver = self.driver
        driver.conn.send_trailers(self.id, headers)
        if driver.conn.pending(self.id) or driver.write_paused:
            self.write_paused = True
        driver.wrote(0)

    def response_done(self) -> None:
        driver = self.driver
        if driver.server.access_log:
            driver.log_access(self)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.driver.conn.informational(self.id, status, headers)
        self.driver.wrote(0)

    def send_error(self, status: int) -> None:
        self.driver.conn.error_response(self.id, status)
        self.driver.wrote(0)
        self.response_done()

    def abort(self) -> None:
        """The response cannot be completed: reset this stream only."""
        self.driver.conn.reset_stream(self.id, INTERNAL_ERROR)
        self.driver.wrote(0)

    async def drain(self) -> None:
        driver = self.driver
        while not self.gone:
            if not driver.write_paused and not driver.conn.pending(self.id):
                self.write_paused = False
                return
            waiter = driver.server.loop.create_future()
            self._waiter = waiter
            driver.waiting.add(self)
            try:
                await waiter
            finally:
                driver.waiting.discard(self)
        raise ClientDisconnected("the client has disconnected")

    def create_waiter(self) -> asyncio.Future[None]:
        return self.driver.server.loop.create_future()

    def resume_reading(self) -> None:
        self.reading_paused = False
        size = self.unacked
        if size:
            self.unacked = 0
            driver = self.driver
            driver.conn.acknowledge(self.id, size)
            driver.wrote(0)


class H2Driver(asyncio.Protocol):
    """One HTTP/2 connection."""

    def __init__(self, server: ServerState, upgrade: tuple[Request, bytes, int] | None = None) -> None:
        self.server = server
        settings = server.config.h2
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self.conn = H2Connection(self._out.append, defaults=server.defaults,
                                 max_concurrent_streams=settings.max_concurrent_streams,
                                 max_header_list_size=settings.max_header_list_size,
                                 initial_window_size=max(min(server.request_buffer, 2**31 - 1), 1),
                                 enable_connect_protocol=server.h2_connect_protocol,
                                 max_resets=MAX_RESETS)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.info: ConnectionInfo = None  # type: ignore[assignment]
        #: streams whose app task runs (a stream the client reset stays here until its app returns)
        self.streams: dict[int, H2Stream] = {}
        #: streams waiting in drain()
        self.waiting: set[H2Stream] = set()
        self.write_paused = False
        self.shutting_down = False
        self._upgrade = upgrade
        self._upgrade_body = 0
        self._lost = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._reset_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        sock = transport.get_extra_info("sockname")
        scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        if isinstance(sock, (str, bytes)):
            local: tuple[str, int | None] | None = (sock if isinstance(sock, str) else sock.decode(), None)
        else:
            local = _address(sock)
        extensions = server.extensions if scheme == "http" else with_tls(server.extensions, transport,
                                                                          server.config.tls.certfile)
        self.info = ConnectionInfo(_address(transport.get_extra_info("peername")), local, scheme,
                                   server.root_path, server.state, extensions)
        server.connections.add(self)
        if self._upgrade is None:
            self.conn.initiate()
            self._flush()
            self._arm_idle_timer()
        else:
            self._start_upgraded(*self._upgrade)
            self._upgrade = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server.connections.discard(self)
        for timer in (self._timer, self._reset_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._reset_timer = None
        self._closing = True
        for stream in list(self.streams.values()):
            stream.gone = True
            stream.exchange.on_disconnect()
            stream.wake()
        self._out.clear()
        self.server.connection_closed()

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
            kind = type(event)
            if kind is Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is EndOfMessage:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream.exchange.on_end()
            elif kind is Data:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                size = len(event.data)  # type: ignore[union-attr]
                if stream is None or stream.gone:
                    conn.acknowledge(event.stream_id, size)  # type: ignore[union-attr]
                else:
                    stream.unacked += size
                    stream.reading_paused = True
                    stream.exchange.on_data(event.data)  # type: ignore[union-attr]
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None and not stream.gone:
                    stream.gone = True
                    stream.exchange.on_disconnect()
                    stream.wake()
            elif kind is Writable:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream.wake()
            elif kind is ConnectionClosed:
                self._on_closed(event)  # type: ignore[arg-type]
        if conn.resets and self._reset_timer is None:
            self._reset_timer = self.server.loop.call_later(RESET_INTERVAL, self._clear_resets)
        if self._out:
            self._flush()
        if conn.closed:
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self._lost:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
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
        stream = H2Stream(self, request)
        if request.upgrade is not None:
            self._on_extended_connect(stream, request)
            return
        stream.exchange = HTTPExchange(stream, http_scope(request, self.info), request.expect_continue)
        self.streams[stream.id] = stream
        server = self.server
        if server.access_log:
            stream.started_at = perf_counter()
        stream.task = server.loop.create_task(stream.run())

    def _on_extended_connect(self, stream: H2Stream, request: Request) -> None:
        # no protocol other than those registered may be tunnelled
        self.conn.error_response(stream.id, 501, "extended CONNECT for this protocol is not supported")

    def _stream_finished(self, stream: H2Stream) -> None:
        self.streams.pop(stream.id, None)
        if not stream.gone and self.conn.is_open(stream.id) and not self._lost:
            # the app is done while the stream is not: the response is complete and the client still sends
            # (RFC 9113 §8.1: ask it to stop, without error), or the response was never completed
            self.conn.reset_stream(stream.id, CANCEL if stream.exchange.request_complete else NO_ERROR)
            self.wrote(0)
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
            if not stream.gone:
                stream.gone = True
                stream.exchange.on_disconnect()
                stream.wake()

    def _clear_resets(self) -> None:
        self._reset_timer = None
        self.conn.resets = 0

    # ------------------------------------------------------------------ h2c upgrade

    def _start_upgraded(self, request: Request, settings: bytes, body_length: int) -> None:
        self.conn.initiate_upgrade(settings, request.method == b"HEAD")
        self._flush()
        stream = H2Stream(self, request)
        stream.exchange = HTTPExchange(stream, http_scope(request, self.info), request.expect_continue)
        self.streams[1] = stream
        if self.server.access_log:
            stream.started_at = perf_counter()
        self._upgrade_body = body_length
        if not body_length:
            stream.exchange.on_end()
        stream.task = self.server.loop.create_task(stream.run())

    def _upgrade_body_data(self, data: bytes) -> bytes:
        """The upgrading request's body comes first, as HTTP/1.1 bytes; the HTTP/2 preface follows it."""
        size = min(len(data), self._upgrade_body)
        self._upgrade_body -= size
        stream = self.streams.get(1)
        if stream is not None and not stream.gone:
            stream.exchange.on_data(data[:size])
            if not self._upgrade_body:
                stream.exchange.on_end()
        return data[size:]

    # ------------------------------------------------------------------ writing

    def wrote(self, size: int) -> None:
        """Frames were queued: flush now past a threshold, else at the end of this loop iteration."""
        self._out_bytes += size
        if self._out_bytes > _FLUSH_BYTES:
            self._flush()
        elif self._flush_handle is None and self._out:
            self._flush_handle = self.server.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            if not self._lost:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)
            out.clear()
        self._out_bytes = 0

    # ------------------------------------------------------------------ idle, shutdown

    def _arm_idle_timer(self) -> None:
        if self._closing:
            return
        loop = self.server.loop
        self._idle_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._idle_since + self.server.keep_alive_timeout, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._timer = None
        if self.streams:
            return  # busy: re-armed when the last stream ends
        deadline = self._idle_since + self.server.keep_alive_timeout
        loop = self.server.loop
        if loop.time() >= deadline:
            self.conn.goaway()
            self.close()
        else:
            self._timer = loop.call_at(deadline, self._on_idle_timer)

    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY with the last stream id; close once the open streams are answered."""
        self.shutting_down = True
        self.conn.goaway()
        self._flush()
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
        self._flush()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self.server.loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cancel the apps and drop the connection; return the tasks cancelled."""
        cancelled = [s.task for s in self.streams.values() if s.task is not None and s.task.cancel()]
        self.transport.abort()
        return cancelled

    # ------------------------------------------------------------------ logging

    def log_access(self, stream: H2Stream) -> None:
        exchange = stream.exchange
        scope = exchange.scope
        duration = (perf_counter() - stream.started_at) * 1000.0
        query = scope["query_string"]
        target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        access_logger.info('%s - "%s %s HTTP/2" %d %d %.1fms', self._client_text(), scope["method"],
                           escape_log(target), exchange.status, exchange.bytes_sent, duration)

    def _client_text(self) -> str:
        client = self.info.client if self.info is not None else None
        return f"{client[0]}:{client[1]}" if client else "-"


# ---------------------------------------------------------------------------------------------- choosing HTTP/2

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*=*")
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
# Request fields of an h2c upgrade that belong to the HTTP/1.1 connection, not to the request on stream 1.
_UPGRADE_FIELDS = frozenset({b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"proxy-connection",
                             b"transfer-encoding"})


def prior_knowledge(h1: H1Driver, data: bytes) -> None:
    """A cleartext connection opened with the HTTP/2 preface: hand it to an HTTP/2 driver."""
    h1.hand_over(H2Driver(h1.server), data)


def upgrade_h2c(h1: H1Driver, request: Request, trailing: bytes) -> None:
    """``Upgrade: h2c`` (RFC 7540 §3.2): answer 101, then the request on stream 1 over HTTP/2."""
    settings = [value for name, value in request.headers if name == b"http2-settings"]
    body_length = 0
    for name, value in request.headers:
        if name == b"content-length":
            body_length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            body_length = -1
    if body_length < 0:
        # the parser took the body for bytes after the upgrade: they cannot be read as a request
        h1.transport.write(h1.conn.error_response(400, "an h2c upgrade request's body needs a content-length"))
        h1.transport.close()
        return
    payload = None
    if len(settings) == 1 and _BASE64URL.fullmatch(settings[0]):
        try:
            payload = base64.urlsafe_b64decode(settings[0] + b"=" * (-len(settings[0]) % 4))
        except (binascii.Error, ValueError):
            payload = None
    if payload is None or len(payload) % 6:
        if body_length:
            h1.transport.write(h1.conn.error_response(400, "invalid HTTP2-Settings"))
            h1.transport.close()
        else:
            h1.decline_upgrade(request, trailing)  # RFC 7540 §3.2.1: no upgrade without one valid HTTP2-Settings
        return
    headers = [(name, value) for name, value in request.headers if name not in _UPGRADE_FIELDS]
    upgraded = Request(request.method, request.target, "2", headers, True, request.expect_continue, 1, None,
                       request.trailers)
    h1.transport.write(_SWITCHING)
    h1.hand_over(H2Driver(h1.server, (upgraded, payload, body_length)), trailing)


def install(state: ServerState) -> None:
    """Register the cleartext ways into HTTP/2 that ``--http`` allows."""
    if state.config.protocols.http == "auto":
        state.upgrades[b"h2c"] = upgrade_h2c
        state.h2_prior_knowledge = prior_knowledge


class _ALPNChooser(asyncio.Protocol):
    """A TLS connection's first protocol: once the handshake is done, pick the driver ALPN negotiated."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        state = self.state
        mode = state.config.protocols.http
        h2 = mode == "2" or (alpn == "h2" and mode == "auto")
        driver: asyncio.Protocol = H2Driver(state) if h2 else state.h1_driver(state)
        transport.set_protocol(driver)
        driver.connection_made(transport)


def alpn_protocols(mode: str) -> list[str]:
    """The ALPN protocols a TLS listener offers for ``--http`` ``mode``, preferred first."""
    return {"1": ["http/1.1"], "2": ["h2"]}.get(mode, ["h2", "http/1.1"])


def connection_factory(state: ServerState, tls: bool) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for a listener: by ALPN over TLS, else HTTP/1.1 (which may hand over) or HTTP/2."""
    if tls:
        return lambda: _ALPNChooser(state)
    if state.config.protocols.http == "2":
        return lambda: H2Driver(state)
    return lambda: state.h1_driver(state)

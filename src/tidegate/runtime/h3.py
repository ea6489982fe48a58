"""The HTTP/3 driver (RFC 9114) over QUIC (RFC 9000), on aioquic's sans-IO QUIC and HTTP/3 layers.

One :class:`H3Endpoint` per UDP socket routes each datagram to its connection by destination connection ID, makes
connections for new Initial packets (bounded; address validation with Retry when asked or under load) and never
lets a malformed datagram raise.  Each connection is an :class:`H3Driver`: it feeds datagrams to aioquic, turns
HTTP/3 events into requests, and gives each request the same :class:`~tidegate.asgi.http.HTTPExchange` as HTTP/1.1
and HTTP/2 through an :class:`H3Stream` (its :class:`~tidegate.asgi.http.Stream`); a WebSocket (RFC 9220, extended
CONNECT) gets the same :class:`~tidegate.runtime.websocket.WebSocketChannel` with an :class:`H3WebSocket` stream as
its carrier.

- Reading: a request stream's flow-control window (``--limit-request-buffer``, or the header limit if larger) is
  given back only as the app takes the body, so a slow app holds at most one window per stream; the bytes of a
  request head being received are bounded by ``--h3-max-header-list-size``.
- Writing: datagrams leave once per loop iteration per connection (everything the apps sent meanwhile together);
  ``send()`` waits (``drain``) while more than ``FLUSH_BYTES`` of a stream's response are not sent yet (flow
  control, congestion control), under ``--timeout-write`` (past it the stream is reset).
- Streams: at most ``--h3-max-concurrent-streams`` at once (QUIC's MAX_STREAMS, and the apps still running for
  streams the client reset count too: more are refused with H3_REQUEST_REJECTED); a client resetting or having
  refused more than ``MAX_RESETS`` streams in ``RESET_INTERVAL`` seconds is closed with H3_EXCESSIVE_LOAD.
- ``shutdown()`` sends GOAWAY and closes once the open streams are answered and acknowledged; an idle connection
  closes the same way after ``--timeout-keep-alive``.

How datagrams of one connection reach one worker process is :mod:`~tidegate.runtime.udp`'s.  This module is
imported only with ``--http3`` (and the ``http3`` extra installed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from http import HTTPStatus
from time import perf_counter
from typing import Any, cast

from aioquic.buffer import Buffer, encode_uint_var  # type: ignore[attr-defined]
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, HeadersState, Setting, encode_frame
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionId
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from ..asgi.http import ASGIApp, HTTPExchange, Stream, escape_log
from ..asgi.scope import ConnectionInfo
from ..config import ConfigError
from ..protocol.events import ProtocolError, Request
from ..protocol.http2 import check_response_field, parse_request
from ..protocol.websocket import CLOSED
from .context import UNRECORDED, ServerContext, address, body_waiter, client_text, log_access, log_cut, log_refused
from .tls import server_cert_pem
from .udp import CID_LENGTH, QuicListeners, connection_id_maker
from .websocket import StreamCarrier, WebSocketChannel
from .writes import FLUSH_BYTES, WriteDeadline, copy_file, release, wait_to_send

__all__ = ["H3Driver", "H3Endpoint", "H3Stream", "H3WebSocket", "QuicServer", "quic_configuration"]

logger = logging.getLogger("tidegate.error")

#: seconds after which the count of client resets starts again from zero
RESET_INTERVAL = 10.0
#: client resets and refused streams tolerated per interval
MAX_RESETS = 200
#: above this many connections in their handshake on one endpoint, ``--quic-retry auto`` validates addresses first
RETRY_ABOVE = 64
#: connections in their handshake on one endpoint past which new ones are not made (a flood of Initial packets)
MAX_HANDSHAKES = 1024
#: how long a closing connection waits for its last responses to be acknowledged before it closes anyway
LINGER = 2.0
#: while a connection has streams open, a PING this often keeps it (and any NAT on the way) alive
KEEPALIVE = 15.0
#: the QUIC idle timeout (the transport closes a connection that hears nothing this long)
IDLE_TIMEOUT = 60.0
_H3_ALPN = ["h3"]
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_SPECIAL = _CONNECTION_SPECIFIC | {b"content-length", b"date", b"server"}
#: validated response fields the apps send, (name, value) → (lower-cased name, value); bounded
_FIELDS: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
_FIELDS_MAX = 4096
_STATUS = {code: (b":status", b"%d" % code) for code in range(100, 600)}
#: what a refused stream holds: its window is never given back
_NO_CREDIT = 1 << 62

# aioquic logs every stream reset and closed connection at INFO, and a misbehaving peer at WARNING: these are the
# client's doings, not the server's (tidegate says what matters on its own logger)
for _name in ("quic", "http3"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- aioquic, adapted

class _Quic(QuicConnection):
    """aioquic's connection with the server's connection IDs (see :mod:`~tidegate.runtime.udp`) and receive
    windows given back as the app takes the data (aioquic's own grow as data arrives)."""

    def __init__(self, *, make_cid: Any, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._make_cid = make_cid
        self._window = window
        #: stream id → bytes received on it and not yet taken by the app (not given back to the client's window)
        self.held: dict[int, int] = {}
        first = self._host_cids[0]
        first.cid = make_cid()
        self.host_cid = self._local_initial_source_connection_id = first.cid

    def _replenish_connection_ids(self) -> None:
        while len(self._host_cids) < min(8, self._remote_active_connection_id_limit):
            self._host_cids.append(QuicConnectionId(cid=self._make_cid(), sequence_number=self._host_cid_seq,
                                                    stateless_reset_token=os.urandom(16)))
            self._host_cid_seq += 1

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            window = self._window
            target = stream.receiver.highest_offset - self.held.get(stream.stream_id, 0) + window
            if target - stream.max_stream_data_local >= window >> 1:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA, capacity=17,
                                      handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def unsent(self, stream_id: int) -> int:
        """Bytes of the stream's response not yet sent once (they wait for flow or congestion control)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender.highest_offset

    def unacked(self, stream_id: int) -> int:
        """Bytes of the stream's response the client has not acknowledged yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def responses_acknowledged(self) -> bool:
        """Whether every request stream's response (or reset) has reached the client."""
        for stream_id, stream in self._streams.items():
            if not stream_id & 3 and not stream.sender.is_finished:
                return False
        return True

    def opened_requests(self) -> int:
        """How many request streams the client has opened (their ids are below 4 times this)."""
        return self._local_max_streams_bidi.used


class _H3(H3Connection):
    """aioquic's HTTP/3 connection announcing our settings, and able to send GOAWAY."""

    def __init__(self, quic: QuicConnection, *, max_field_section_size: int, connect_protocol: bool) -> None:
        self._field_limit = max_field_section_size
        self._connect_protocol = connect_protocol
        super().__init__(quic)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[Setting.MAX_FIELD_SECTION_SIZE] = self._field_limit
        if not self._connect_protocol:
            del settings[Setting.ENABLE_CONNECT_PROTOCOL]
        return settings

    def goaway(self, stream_id: int) -> None:
        assert self._local_control_stream_id is not None
        self._quic.send_stream_data(self._local_control_stream_id,
                                    encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id)))

    def pending_head(self, stream_id: int) -> int:
        """Bytes of a request head received on a stream and not decoded yet (0 once decoded)."""
        stream = self._stream.get(stream_id)
        return len(stream.buffer) if stream is not None and stream.headers_recv_state is HeadersState.INITIAL else 0


def _debug() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def quic_configuration(ctx: ServerContext) -> QuicConfiguration:
    """The server's QUIC configuration: its certificate and key (as ``--ssl-certfile``/``--ssl-keyfile`` give
    them), ALPN ``h3``, the receive windows."""
    tls = ctx.config.tls
    if tls.certfile is None:
        raise ConfigError("--http3 needs --ssl-certfile (HTTP/3 is always over TLS 1.3)")
    if tls.cert_reqs == "required":
        raise ConfigError("--http3 cannot check client certificates (aioquic does not ask for them): not with "
                          "--ssl-cert-reqs required")
    configuration = QuicConfiguration(is_client=False, alpn_protocols=_H3_ALPN, connection_id_length=CID_LENGTH,
                                      idle_timeout=max(IDLE_TIMEOUT, ctx.timeouts.keep_alive))
    window = _stream_window(ctx)
    configuration.max_stream_data = window
    configuration.max_data = max(window * ctx.config.h3.h3_max_concurrent_streams, 1 << 20)
    certificate, chain, key = _load_certificate(tls.certfile, tls.keyfile, tls.keyfile_password)
    configuration.certificate = certificate
    configuration.certificate_chain = chain
    configuration.private_key = key
    return configuration


def _stream_window(ctx: ServerContext) -> int:
    return max(ctx.limits.request_buffer, ctx.config.h3.h3_max_header_list_size, 16384)


def _load_certificate(certfile: str, keyfile: str | None, password: str | None) -> tuple[Any, list[Any], Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(certfile, "rb") as file:
            text = file.read()
        certificates = x509.load_pem_x509_certificates(text)
        if keyfile is not None:
            with open(keyfile, "rb") as file:
                text = file.read()
        match = re.search(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", text, re.DOTALL)
        if match is None:
            raise ValueError("no private key found")
        key = load_pem_private_key(match.group(0), password.encode() if password is not None else None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--http3: cannot load the certificate and key for QUIC: {exc}") from None
    return certificates[0], certificates[1:], key


def _tls_extension(quic: QuicConnection, certfile: str | None) -> dict[str, Any]:
    """The ASGI ``tls`` extension of a QUIC connection: always TLS 1.3; its cipher suite; no client certificate
    (aioquic does not ask for one)."""
    schedule = quic.tls.key_schedule
    suite = getattr(schedule, "cipher_suite", None)
    return {"server_cert": server_cert_pem(certfile), "client_cert_chain": [], "client_cert_name": None,
            "client_cert_error": None, "tls_version": 0x0304,
            "cipher_suite": int(suite) if suite is not None else None}


# ---------------------------------------------------------------------------------------------- response fields

def _response_fields(headers: Any, stream: H3Stream) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """App headers → validated HTTP/3 fields (lower-case names, no connection-specific field); notes a
    content-length on ``stream``.  Returns (fields, has date, has server)."""
    out: list[tuple[bytes, bytes]] = []
    has_date = has_server = False
    try:
        for given_name, given_value in headers:
            pair = _FIELDS.get((given_name, given_value))
            if pair is None:
                name, value, lname = check_response_field(given_name, given_value)
                if lname in _SPECIAL:
                    if lname in _CONNECTION_SPECIFIC:
                        continue
                    if lname == b"content-length":
                        if not value.isdigit():
                            raise ProtocolError(f"content-length must be digits, not {value!r}")
                        if stream.remaining >= 0:
                            raise ProtocolError("more than one content-length header")
                        stream.remaining = int(value)
                    elif lname == b"date":
                        has_date = True
                    else:
                        has_server = True
                    out.append((lname, value))
                    continue
                pair = (lname, value)
                if len(_FIELDS) < _FIELDS_MAX:
                    _FIELDS[(name, value)] = pair
            out.append(pair)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"headers must be an iterable of (name, value) byte string pairs: {exc}") from None
    return out, has_date, has_server


class _Defaults:
    """The server's default response fields (server, date, --header) as HTTP/3 fields, made again when the date
    changes."""

    __slots__ = ("_date", "_extra", "_key", "_server", "source")

    def __init__(self, ctx: ServerContext) -> None:
        self.source = ctx.defaults
        self._key: bytes | None = None
        self._server: list[tuple[bytes, bytes]] = []
        self._date: list[tuple[bytes, bytes]] = []
        self._extra: list[tuple[bytes, bytes]] = []

    def fields(self, has_date: bool, has_server: bool) -> list[tuple[bytes, bytes]]:
        source = self.source
        if source.together is not self._key:
            self._key = source.together
            self._server, self._date, self._extra = (_lines(source.server), _lines(source.date),
                                                     _lines(source.extra))
        if not has_date and not has_server:
            return self._server + self._date + self._extra
        return (([] if has_server else self._server) + ([] if has_date else self._date)) + self._extra


def _lines(lines: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.strip().lower(), value.strip()))
    return out


# ---------------------------------------------------------------------------------------------- streams

def _stream_deadline(stream: H3Stream | H3WebSocket) -> WriteDeadline:
    """--timeout-write for a stream waiting in ``drain()``: the client must acknowledge some of the stream's data
    in each period, else the stream is reset."""
    driver = stream.driver

    def queued() -> int:
        return driver.quic.unacked(stream.id)

    def expired() -> None:
        if stream.gone or driver.closed:
            return
        logger.info("HTTP/3 client %s has not read for %gs: resetting the stream", driver.client_text(),
                    driver.ctx.timeouts.write)
        driver.reset(stream.id, ErrorCode.H3_REQUEST_CANCELLED)
        stream.on_reset()

    return WriteDeadline(driver.ctx.loop, driver.ctx.timeouts.write, queued, expired)


async def _drain(stream: H3Stream | H3WebSocket) -> None:
    """Wait until the stream's unsent response is below ``FLUSH_BYTES``, under the write deadline; raise
    ClientDisconnected once the stream is gone."""
    driver = stream.driver
    await wait_to_send(stream, driver.ctx.loop, driver.waiting, lambda: driver.quic.unsent(stream.id) <= FLUSH_BYTES,
                       lambda: _stream_deadline(stream))


class H3Stream(Stream):
    """One request stream: the :class:`~tidegate.asgi.http.Stream` its exchange talks to."""

    exchange: HTTPExchange  # set by the driver, which makes the exchange with this stream

    __slots__ = ("_waiter", "driver", "ended", "exchange", "gone", "head", "id", "no_body", "remaining", "request",
                 "started_at", "task")

    def __init__(self, driver: H3Driver, request: Request) -> None:
        self.driver = driver
        self.id = request.stream_id
        self.request = request
        self.task: asyncio.Task[None] | None = None
        self.write_paused = False
        #: the exchange holds body bytes the app has not taken (their window is not given back)
        self.reading_paused = False
        self.gone = False
        #: our side of the stream ended (FIN or reset)
        self.ended = False
        self.started_at = 0.0
        #: the response head, held until the first body piece
        self.head: list[tuple[bytes, bytes]] | None = None
        self.no_body = request.method == b"HEAD"
        #: body bytes the response's content-length still announces (-1: none)
        self.remaining = -1
        self._waiter: asyncio.Future[None] | None = None

    async def run(self, app: ASGIApp | None = None) -> None:
        """Run the app on this stream's exchange (``app``: the health path's answer instead of the app)."""
        try:
            await self.exchange.run(self.driver.ctx.app if app is None else app)
        finally:
            self.driver.stream_finished(self)

    # ------------------------------------------------------------------ from the driver

    def on_data(self, data: bytes) -> None:
        if not self.exchange.on_data(data):
            self.driver.refuse_body(self, 413, "request body larger than the limit")
            return
        self.reading_paused = True

    def on_end(self) -> None:
        if not self.gone:
            self.exchange.on_end()

    def on_reset(self) -> None:
        """The client reset the stream (or stopped reading it), or the connection is gone."""
        if not self.gone:
            self.gone = True
            self.exchange.on_disconnect()
            release(self)

    def shutdown(self) -> None:
        pass  # a request in progress is answered

    def wake(self) -> None:
        release(self)

    # ------------------------------------------------------------------ Stream

    def send_head(self, status: int, headers: Any) -> None:
        if type(status) is not int or not 200 <= status <= 599:
            raise ProtocolError(f"status must be an int in 200..599 (1xx are informational), not {status!r}")
        fields, has_date, has_server = _response_fields(headers, self)
        if status == 204 or status == 304:
            self.no_body = True
            if status == 204 and self.remaining >= 0:
                fields = [pair for pair in fields if pair[0] != b"content-length"]
        self.head = [_STATUS[status], *fields, *self.driver.endpoint.defaults.fields(has_date, has_server)]

    def send_data(self, data: bytes, end: bool) -> None:
        if self.gone or self.ended:
            return
        driver = self.driver
        h3 = driver.h3
        head = self.head
        try:
            if self.no_body:
                if head is not None:
                    self.head = None
                    h3.send_headers(self.id, head, end)
                elif end:
                    h3.send_data(self.id, b"", True)
                self.ended = end
                driver.schedule()
                return
            remaining = self.remaining
            if remaining >= 0:
                remaining -= len(data)
                self.remaining = remaining
                if remaining < 0 or (end and remaining):
                    self.abort()
                    raise ProtocolError(f"the app sent {-remaining} bytes more than its content-length"
                                        if remaining < 0 else
                                        f"the app ended the body {remaining} bytes short of its content-length")
            if head is not None:
                self.head = None
                h3.send_headers(self.id, head, end and not data)
                if data:
                    h3.send_data(self.id, data, end)
            elif data or end:
                h3.send_data(self.id, data, end)
        except (RuntimeError, ValueError, AssertionError, KeyError) as exc:
            self._lost(exc)
            return
        except ProtocolError:
            raise
        except Exception as exc:  # aioquic's own ProtocolError (a stream the client stopped)
            self._lost(exc)
            return
        self.ended = end
        driver.schedule()
        if driver.quic.unsent(self.id) > FLUSH_BYTES:
            self.write_paused = True

    def _lost(self, exc: BaseException) -> None:
        """The stream can no longer be written (the client stopped it): the app hears http.disconnect."""
        logger.debug("HTTP/3 stream %d of %s: %r", self.id, self.driver.client_text(), exc)
        self.ended = True
        self.on_reset()

    def send_trailers(self, headers: Any) -> None:
        if self.gone or self.ended:
            return
        if self.remaining > 0:
            self.abort()
            raise ProtocolError(f"the app ended the body {self.remaining} bytes short of its content-length")
        fields, _, _ = _response_fields(headers, self)
        driver = self.driver
        try:
            if self.head is not None:
                head, self.head = self.head, None
                driver.h3.send_headers(self.id, head, not fields)
            elif not fields:
                driver.h3.send_data(self.id, b"", True)
            if fields:
                driver.h3.send_headers(self.id, fields, True)
        except Exception as exc:
            self._lost(exc)
            return
        self.ended = True
        driver.schedule()

    async def send_file(self, fd: int, offset: int, count: int, end: bool) -> None:
        """A file's bytes as DATA, read in pieces under the stream's flow control (no sendfile: QUIC encrypts
        each packet)."""
        if count:
            await copy_file(fd, offset, count, lambda data, last: self.send_data(data, end and last), self)
        elif end:
            self.send_data(b"", True)

    def response_done(self) -> None:
        driver = self.driver
        if driver.ctx.recording:
            log_access(driver.ctx, driver.info, self.exchange, self.started_at)

    def response_cut(self) -> None:
        driver = self.driver
        log_cut(driver.ctx, driver.info, self.exchange, self.started_at)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.gone or self.ended:
            return
        if not 100 <= status <= 199 or status == 101:
            raise ProtocolError(f"not an informational status: {status}")
        fields, _, _ = _response_fields(headers, self)
        try:
            self.driver.h3.send_headers(self.id, [_STATUS[status], *fields])
        except Exception as exc:
            self._lost(exc)
            return
        self.driver.schedule()

    def send_error(self, status: int) -> None:
        self.head = None
        self.remaining = -1
        self.exchange.bytes_sent = self.driver.error_response(self, status)
        self.response_done()

    def abort(self) -> None:
        """The response cannot be completed: reset this stream only."""
        if not self.ended:
            self.ended = True
            self.driver.reset(self.id, ErrorCode.H3_INTERNAL_ERROR)

    async def drain(self) -> None:
        await _drain(self)

    def create_waiter(self) -> asyncio.Future[None]:
        return body_waiter(self.driver.ctx, self.exchange, self._body_stalled)

    def _body_stalled(self) -> None:
        self.driver.refuse_body(self, 408, "request body not received in time")

    def resume_reading(self) -> None:
        self.reading_paused = False
        self.driver.give_back(self.id)


class H3WebSocket(StreamCarrier):
    """A WebSocket over one request stream (RFC 9220 extended CONNECT): the stream is the
    :class:`~tidegate.runtime.websocket.Carrier` of the same :class:`~tidegate.runtime.websocket.WebSocketChannel`
    as over HTTP/1.1 and HTTP/2, with the stream's DATA frames as the byte stream.

    The handshake is answered with HEADERS 200; frames go out as DATA (``send()`` waits while the stream's data
    waits for the client); data received is given back to the client's window as the channel takes it.  The closing
    handshake ends the stream with FIN; a failure or a missing close resets it."""

    __slots__ = ("_ending", "driver", "gone", "id", "label")

    def __init__(self, driver: H3Driver, request: Request) -> None:
        self.driver = driver
        self.id = request.stream_id
        self.label = " HTTP/3"
        self.gone = False
        self._ending = False
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.channel = WebSocketChannel(driver.ctx, driver.info, request, self)

    def _maybe_done(self) -> None:
        if (self.task is None or self.task.done()) and (self.gone or self._ending):
            self.channel.lost()
            self.driver.forget(self)

    # ------------------------------------------------------------------ from the driver

    def on_data(self, data: bytes) -> None:
        channel = self.channel
        channel.receive(data)
        if not channel.reading_paused:
            self.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self.channel.reading_paused

    def on_end(self) -> None:
        """The client ended the stream: after its close frame, the end of the session; without one, a loss."""
        if self.channel.session.state != CLOSED:
            self.driver.reset(self.id, ErrorCode.H3_REQUEST_CANCELLED)
            self.gone = True
            self.channel.lost()
        else:
            self.finish()
        self._maybe_done()

    def on_reset(self) -> None:
        if not self.gone:
            self.gone = True
            self.channel.lost()
            release(self)
            self._maybe_done()

    # ------------------------------------------------------------------ Carrier

    def output_full(self) -> bool:
        return self.driver.quic.unsent(self.id) > FLUSH_BYTES

    def write(self, data: bytes) -> None:
        if self.gone or self._ending:
            return
        driver = self.driver
        try:
            driver.h3.send_data(self.id, data, False)
        except Exception:
            self.on_reset()
            return
        driver.schedule()
        if driver.quic.unsent(self.id) > FLUSH_BYTES:
            self.write_paused = True

    def flush(self) -> None:
        self.driver.schedule()

    def accept(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._send_head(status, headers, False)

    def _send_head(self, status: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        fields = [(name.lower(), value) for name, value in headers if name.lower() not in _CONNECTION_SPECIFIC]
        driver = self.driver
        try:
            driver.h3.send_headers(self.id, [_STATUS[status], *fields, *driver.endpoint.defaults.fields(
                any(n == b"date" for n, _ in fields), any(n == b"server" for n, _ in fields))], end)
        except Exception:
            self.on_reset()
            return
        driver.schedule()

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
        driver = self.driver
        if headers:
            self._send_head(status, headers, False)
            self._send_body((detail + "\n").encode(), True)
        else:
            driver.error_response(self, status, detail)
        self._ending = True
        self._maybe_done()

    def deny_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._send_head(status, headers, False)

    def deny_body(self, data: bytes, end: bool) -> None:
        self._send_body(data, end)
        if end:
            self._ending = True
            self.driver.stop_reading(self.id)
            self._maybe_done()

    def _send_body(self, data: bytes, end: bool) -> None:
        if self.gone:
            return
        try:
            self.driver.h3.send_data(self.id, data, end)
        except Exception:
            self.on_reset()
            return
        self.driver.schedule()

    def pause_reading(self) -> None:
        pass  # what comes is not given back to the client's window (see H3Driver._on_stream_data)

    def resume_reading(self) -> None:
        if not self.gone:
            self.driver.give_back(self.id)

    def finish(self) -> None:
        if not self._ending and not self.gone:
            self._ending = True
            self._send_body(b"", True)
            self._maybe_done()

    def abandon(self) -> None:
        if not self.gone:
            self.driver.reset(self.id, ErrorCode.H3_REQUEST_CANCELLED)
        self.on_reset()

    async def drain(self) -> None:
        await _drain(self)


# ---------------------------------------------------------------------------------------------- the connection

class H3Driver:
    """One QUIC connection speaking HTTP/3."""

    #: the protocol label of its open connections in the metrics
    metrics_protocol = "h3"

    __slots__ = ("_handshake_timer", "_idle_timer", "_keepalive", "_linger", "_reset_timer", "_timer",
                 "_timer_at", "_tx", "addr", "cids", "closed", "ctx", "endpoint", "goaway_id", "h3", "handshaking",
                 "info", "over", "quic", "requests", "resets", "shutting_down", "speaking", "streams", "waiting")

    def __init__(self, endpoint: H3Endpoint, addr: Any, original_cid: bytes, retry_cid: bytes | None) -> None:
        self.endpoint = endpoint
        self.ctx = ctx = endpoint.ctx
        self.addr = addr
        self.quic = _Quic(configuration=endpoint.configuration, original_destination_connection_id=original_cid,
                          retry_source_connection_id=retry_cid, make_cid=endpoint.make_cid,
                          window=endpoint.window)
        limit = ctx.config.h3.h3_max_concurrent_streams
        for streams, most in ((self.quic._local_max_streams_bidi, limit), (self.quic._local_max_streams_uni, 16)):
            streams.value = streams.sent = most
        #: made once the handshake chose ALPN h3 (ProtocolNegotiated), before any request (``speaking``)
        self.h3: _H3 = cast(_H3, None)
        self.speaking = False
        self.info = ConnectionInfo(address(addr), address(endpoint.sockname), "https", ctx.config.app.root_path,
                                   ctx.state, ctx.extensions)
        #: request streams whose app runs (a stream the client reset stays until its app returns)
        self.streams: dict[int, H3Stream | H3WebSocket] = {}
        #: request streams whose request the client is still sending
        self.requests: set[int] = set()
        #: streams waiting in drain()
        self.waiting: set[H3Stream | H3WebSocket] = set()
        #: the connection IDs routed to this connection by the endpoint
        self.cids: set[bytes] = set()
        self.shutting_down = False
        #: no more requests (CONNECTION_CLOSE sent or received); ``over``: forgotten by its endpoint too
        self.closed = False
        self.over = False
        self.handshaking = True
        self.goaway_id: int | None = None
        self.resets = 0
        self._tx = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._reset_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = ctx.loop.call_later(ctx.timeouts.tls_handshake,
                                                                                 self._handshake_overdue)
        ctx.registry.add(self, admit=False)

    # ------------------------------------------------------------------ datagrams in, datagrams out

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.quic.receive_datagram(data, addr, self.ctx.loop.time())
            self._process_events()
        except Exception as exc:
            self._failed(exc)
            return
        if not self._tx:
            # after the app tasks this datagram woke have run once (the next iteration): their responses leave
            # with the acknowledgements, in as few packets as they fit
            self._tx = True
            self.ctx.loop.call_soon(self._transmit_soon)

    def _transmit_soon(self) -> None:
        self.ctx.loop.call_soon(self._transmit)

    def schedule(self) -> None:
        """Something was written: datagrams leave at the end of this loop iteration."""
        if not self._tx:
            self._tx = True
            self.ctx.loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._tx = False
        if self.over:
            return
        quic = self.quic
        loop = self.ctx.loop
        try:
            datagrams = quic.datagrams_to_send(loop.time())
            if datagrams:
                sendto = self.endpoint.sendto
                for data, addr in datagrams:
                    sendto(data, addr)
            if self.waiting:
                for stream in list(self.waiting):
                    if quic.unsent(stream.id) <= FLUSH_BYTES or stream.gone:
                        stream.wake()
            timer_at = quic.get_timer()
        except Exception as exc:
            self._failed(exc)
            return
        if timer_at is None:
            return
        timer = self._timer
        if timer is None or timer_at < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer_at = timer_at
            self._timer = loop.call_at(timer_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.over:
            return
        loop = self.ctx.loop
        now = loop.time()
        try:
            self.quic.handle_timer(now)
            self._process_events()
        except Exception as exc:
            self._failed(exc)
            return
        self._transmit()

    def _failed(self, exc: BaseException) -> None:
        """aioquic raised (a bug, or input it did not expect): close this connection, never the endpoint."""
        logger.error("HTTP/3 connection with %s failed: %r; closing it", self.client_text(), exc, exc_info=exc)
        try:
            self.quic.close(error_code=QuicErrorCode.INTERNAL_ERROR, reason_phrase="internal error")
            for data, addr in self.quic.datagrams_to_send(self.ctx.loop.time()):
                self.endpoint.sendto(data, addr)
        except Exception:
            pass
        self._terminated()

    # ------------------------------------------------------------------ events

    def _process_events(self) -> None:
        quic = self.quic
        while True:
            event = quic.next_event()
            if event is None:
                return
            kind = type(event)
            if kind is StreamDataReceived:
                self._on_stream_data(cast(StreamDataReceived, event))
            elif kind is StreamReset or kind is StopSendingReceived:
                self._on_stream_reset(cast(StreamReset, event))
            elif kind is ConnectionIdIssued:
                self.endpoint.route(cast(ConnectionIdIssued, event).connection_id, self)
            elif kind is ConnectionIdRetired:
                self.endpoint.unroute(cast(ConnectionIdRetired, event).connection_id, self)
            elif kind is ProtocolNegotiated:
                if cast(ProtocolNegotiated, event).alpn_protocol in _H3_ALPN and not self.speaking:
                    self.speaking = True
                    self.h3 = _H3(quic, max_field_section_size=self.ctx.config.h3.h3_max_header_list_size,
                                  connect_protocol=self.ctx.connect_protocol)
            elif kind is HandshakeCompleted:
                self._on_handshake()
            elif kind is ConnectionTerminated:
                self._terminated()
                return

    def _on_handshake(self) -> None:
        self.handshaking = False
        self.endpoint.handshakes -= 1
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        ctx = self.ctx
        self.info.extensions = {**ctx.extensions, "tls": _tls_extension(self.quic, ctx.config.tls.certfile)}
        self._arm_idle_timer()
        if _debug():
            server = self.info.server
            logger.debug("%s - connection opened on %s (QUIC, TLSv1.3, ALPN h3)", self.client_text(),
                         f"{server[0]}:{server[1]}" if server else "-")
            logger.debug("%s - protocol: HTTP/3", self.client_text())

    def _handshake_overdue(self) -> None:
        self._handshake_timer = None
        if self.handshaking and not self.closed:
            logger.debug("QUIC handshake with %s not complete in %gs: dropped", self.client_text(),
                         self.ctx.timeouts.tls_handshake)
            self._terminated()

    def _on_stream_data(self, event: StreamDataReceived) -> None:
        if not self.speaking:
            return
        h3 = self.h3
        stream_id = event.stream_id
        for h3_event in h3.handle_event(event):
            self._on_h3_event(h3_event)
        if stream_id & 3:
            return  # a unidirectional stream: what it carries is taken at once
        stream = self.streams.get(stream_id)
        held = self.quic.held
        if stream is not None and stream.reading_paused and not stream.gone:
            held[stream_id] = held.get(stream_id, 0) + len(event.data)
            return
        size = held.get(stream_id)
        if size is not None:
            if size != _NO_CREDIT:
                del held[stream_id]  # taken by the app meanwhile, or no longer wanted
        elif stream is None and h3.pending_head(stream_id) > 2 * self.ctx.config.h3.h3_max_header_list_size:
            # a request head (its HEADERS frame, not decoded yet) twice as large as any we answer (431 below that)
            self._refuse_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)

    def _on_h3_event(self, event: H3Event) -> None:
        if type(event) is DataReceived:
            data_event = event
            stream = self.streams.get(data_event.stream_id)
            if stream is not None and not stream.gone:
                if data_event.data:
                    stream.on_data(data_event.data)
                if data_event.stream_ended:
                    self.requests.discard(data_event.stream_id)
                    stream.on_end()
            elif data_event.stream_ended:
                self.requests.discard(data_event.stream_id)
        elif type(event) is HeadersReceived:
            headers_event = event
            stream_id = headers_event.stream_id
            if stream_id in self.requests:
                # trailers: the request's end (ASGI has no request trailers)
                if headers_event.stream_ended:
                    self.requests.discard(stream_id)
                    stream = self.streams.get(stream_id)
                    if stream is not None:
                        stream.on_end()
                return
            if stream_id & 3 == 0:
                self._on_request(stream_id, headers_event.headers, headers_event.stream_ended)

    def _on_stream_reset(self, event: StreamReset | StopSendingReceived) -> None:
        stream_id = event.stream_id
        if self.speaking:
            self.h3.handle_event(event)
        if type(event) is StreamReset:
            self.requests.discard(stream_id)  # (after STOP_SENDING the request may still come: see stop_reading)
            self.quic.held.pop(stream_id, None)
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.gone:
            self._count_reset()
            stream.on_reset()
            if isinstance(event, StreamReset):
                self.reset(stream_id, ErrorCode.H3_REQUEST_CANCELLED)  # the client wants no more of it

    def _count_reset(self) -> None:
        self.resets += 1
        if self.resets > MAX_RESETS:
            logger.info("HTTP/3 client %s reset or had refused more than %d streams in %gs: closing the "
                        "connection", self.client_text(), MAX_RESETS, RESET_INTERVAL)
            self.close(ErrorCode.H3_EXCESSIVE_LOAD, "too many streams reset")
        elif self._reset_timer is None:
            self._reset_timer = self.ctx.loop.call_later(RESET_INTERVAL, self._clear_resets)

    def _clear_resets(self) -> None:
        self._reset_timer = None
        self.resets = 0
        # the streams refused since, whose state aioquic has discarded
        held, streams = self.quic.held, self.quic._streams
        for stream_id in [i for i, size in held.items() if size == _NO_CREDIT and i not in streams]:
            del held[stream_id]

    # ------------------------------------------------------------------ requests

    def _on_request(self, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        ctx = self.ctx
        if not ended:
            self.requests.add(stream_id)
        if self.goaway_id is not None and stream_id >= self.goaway_id:
            self._refuse_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)  # after GOAWAY: the client may retry
            return
        if len(self.streams) >= ctx.config.h3.h3_max_concurrent_streams:
            self._refuse_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            self._count_reset()
            return
        head = parse_request(fields, ctx.connect_protocol)
        if isinstance(head, str):
            logger.info("HTTP/3 request from %s refused: %s", self.client_text(), escape_log(head))
            self._refuse_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            self._count_reset()
            return
        if ended and head.content_length > 0:
            self._refuse_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)  # a body announced, none follows
            return
        field_limit = ctx.limits.request_field_size
        if head.size > ctx.config.h3.h3_max_header_list_size or (
                field_limit and any(len(n) + len(v) > field_limit for n, v in head.headers)):
            self._answer(stream_id, 431, "request header fields too large", head.method, head.target)
            return
        if head.method == b"CONNECT" and head.protocol is None:
            self._answer(stream_id, 400, "CONNECT is not served here (this is not a proxy)", head.method,
                         head.target)
            return
        request = Request(head.method, head.target, "3", head.headers, True, head.expect_continue, stream_id,
                          head.protocol, head.trailers)
        if head.protocol is not None:
            self._on_extended_connect(request)
            return
        health = ctx.health
        if health is not None and health.matches(request.target):
            # --health-path: the server answers; neither --max-requests nor --limit-concurrency counts it, and it is
            # recorded only with --health-log
            stream = H3Stream(self, request)
            stream.exchange = HTTPExchange(stream, request=request, info=self.info, body_limit=ctx.limits.request_body)
            self.streams[stream_id] = stream
            self._cancel_idle_timer()
            stream.started_at = perf_counter() if health.log else UNRECORDED
            if ended:
                stream.exchange.on_end()
            stream.task = ctx.start_app(stream.run(health))
            return
        limited = ctx.registry.concurrency_limit is not None
        if limited and not ctx.registry.admit_request():
            self._busy(request)
            return
        stream = H3Stream(self, request)
        stream.exchange = HTTPExchange(stream, request=request, info=self.info, body_limit=ctx.limits.request_body)
        self.streams[stream_id] = stream
        self._cancel_idle_timer()
        if ctx.on_request is not None:
            ctx.on_request()
        if ctx.recording:
            stream.started_at = perf_counter()
        if ended:
            stream.exchange.on_end()
        stream.task = ctx.start_app(self._run_admitted(stream) if limited else stream.run())

    async def _run_admitted(self, stream: H3Stream) -> None:
        try:
            await stream.run()
        finally:
            self.ctx.registry.release_request()

    def _on_extended_connect(self, request: Request) -> None:
        """RFC 9220: a WebSocket over this stream (the only protocol extended CONNECT offers)."""
        if request.upgrade != b"websocket":
            self._answer(request.stream_id, 501, "extended CONNECT for this protocol is not supported",
                         request.method, request.target)
            return
        websocket = H3WebSocket(self, request)
        self.streams[websocket.id] = websocket
        self._cancel_idle_timer()
        websocket.start()

    def _busy(self, request: Request) -> None:
        """--limit-concurrency: 503 with Retry-After; the app does not see the request."""
        stream_id = request.stream_id
        body = b"Service Unavailable: too many requests in progress, retry later\n"
        try:
            self.h3.send_headers(stream_id, [_STATUS[503], (b"retry-after", b"1"),
                                             (b"content-type", b"text/plain; charset=utf-8"),
                                             (b"content-length", b"%d" % len(body))])
            self.h3.send_data(stream_id, body, True)
        except Exception:
            return
        self.stop_reading(stream_id)
        self.schedule()
        if self.ctx.recording:
            log_refused(self.ctx, self.info, 503, len(body), head=(request.method, request.target, "3"))

    def _answer(self, stream_id: int, status: int, detail: str, method: bytes, target: bytes) -> None:
        """A request the server answers itself (431, 400, 501): the app never sees it."""
        size = self._error_body(stream_id, status, detail)
        self.stop_reading(stream_id)
        if self.ctx.recording:
            log_refused(self.ctx, self.info, status, size, head=(method, target, "3"))

    def _error_body(self, stream_id: int, status: int, detail: str) -> int:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = (phrase + (": " + detail if detail else "") + "\n").encode("ascii", "backslashreplace")
        fields = [_STATUS[status], (b"content-type", b"text/plain; charset=utf-8"),
                  (b"content-length", b"%d" % len(body)), *self.endpoint.defaults.fields(False, False)]
        try:
            self.h3.send_headers(stream_id, fields)
            self.h3.send_data(stream_id, body, True)
        except Exception:
            return 0
        self.schedule()
        return len(body)

    def error_response(self, stream: H3Stream | H3WebSocket, status: int, detail: str = "") -> int:
        """A complete short response for an error we answer ourselves; its body's size (0: none was sent)."""
        if stream.gone or getattr(stream, "ended", False):
            return 0
        if isinstance(stream, H3Stream):
            stream.ended = True
        size = self._error_body(stream.id, status, detail)
        if stream.id in self.requests:
            self.stop_reading(stream.id)  # answered before the request ended: the rest of it is not wanted
        return size

    def refuse_body(self, stream: H3Stream, status: int, detail: str) -> None:
        """The request body passed --limit-request-body (413) or stalled (408): the app hears http.disconnect; the
        client gets ``status`` if no response started, else the stream is reset."""
        if stream.gone:
            return
        logger.info("HTTP/3 request from %s refused: %s", self.client_text(), detail)
        exchange = stream.exchange
        if exchange.status == 0 and not stream.ended:
            stream.head = None
            size = self.error_response(stream, status, detail)
            stream.gone = True
            exchange.on_refused()
            stream.wake()
            if self.ctx.recording:
                log_refused(self.ctx, self.info, status, size, exchange)
        else:
            stream.on_reset()
            stream.abort()
        self.stop_reading(stream.id)

    def _refuse_stream(self, stream_id: int, code: int) -> None:
        """Refuse a request stream outright: reset it, ask the client to stop sending on it, and give no more of
        its window back (a client that goes on sends one window at most)."""
        self.reset(stream_id, code)
        self.requests.discard(stream_id)
        stream = self.quic._streams.get(stream_id)
        if stream is not None and not stream.receiver.is_finished:
            stream.receiver.stop(code)
            self.quic.held[stream_id] = _NO_CREDIT
            self.schedule()

    def reset(self, stream_id: int, code: int) -> None:
        try:
            self.quic.reset_stream(stream_id, code)
        except Exception:
            return
        self.schedule()

    def stop_reading(self, stream_id: int) -> None:
        """Ask the client to stop sending a request (RFC 9114 §4.1: answered already, or refused)."""
        self.quic.held.pop(stream_id, None)
        if stream_id in self.requests:
            self.requests.discard(stream_id)
            try:
                self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
            except Exception:
                return
            self.schedule()

    def give_back(self, stream_id: int) -> None:
        """The app took a stream's body: the bytes held are given back to the client's window."""
        if self.quic.held.pop(stream_id, 0):
            self.schedule()

    def stream_finished(self, stream: H3Stream) -> None:
        if not stream.ended and not stream.gone and not self.closed:
            stream.abort()  # the app returned without completing the response
        self.stop_reading(stream.id)
        self.forget(stream)
        del stream.exchange  # the stream and its exchange refer to each other: freed now, not by the collector

    def forget(self, stream: H3Stream | H3WebSocket) -> None:
        """The stream's app is done: the connection may go idle or close."""
        self.streams.pop(stream.id, None)
        self.quic.held.pop(stream.id, None)
        if not self.streams:
            if self.shutting_down:
                self._close_when_answered()
            else:
                self._arm_idle_timer()

    # ------------------------------------------------------------------ idle, shutdown, close

    def _arm_idle_timer(self) -> None:
        if self.closed or self.shutting_down:
            return
        self._cancel_idle_timer()
        loop = self.ctx.loop
        self._idle_timer = loop.call_later(self.ctx.timeouts.keep_alive, self._on_idle)
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._keepalive is None and not self.closed:
            self._keepalive = self.ctx.loop.call_later(KEEPALIVE, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        if self.streams and not self.closed:
            self.quic.send_ping(0)
            self.schedule()
            self._keepalive = self.ctx.loop.call_later(KEEPALIVE, self._ping)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if not self.streams and not self.closed:
            self._send_goaway()
            self._close_when_answered()

    def _send_goaway(self) -> None:
        if self.goaway_id is None and self.speaking and not self.closed:
            self.goaway_id = self.quic.opened_requests() * 4
            try:
                self.h3.goaway(self.goaway_id)
            except Exception:
                pass
            self.schedule()

    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY; close once the open streams are answered and their answers acknowledged."""
        self.shutting_down = True
        if self.handshaking or not self.speaking:
            self.close(ErrorCode.H3_NO_ERROR, "")
            return
        self._send_goaway()
        for stream in list(self.streams.values()):
            stream.shutdown()
        if not self.streams:
            self._close_when_answered()

    def _close_when_answered(self) -> None:
        """Close once every response has been acknowledged (closing sooner would lose what is in flight), or after
        ``LINGER`` seconds at most."""
        if self.closed:
            return
        if self.quic.responses_acknowledged():
            self.close(ErrorCode.H3_NO_ERROR, "")
        elif self._linger is None:
            self._linger = self.ctx.loop.call_later(LINGER, self.close, ErrorCode.H3_NO_ERROR, "")
            self._check_answered()

    def _check_answered(self) -> None:
        if self.closed:
            return
        if self.quic.responses_acknowledged():
            self.close(ErrorCode.H3_NO_ERROR, "")
        else:
            self.ctx.loop.call_later(0.05, self._check_answered)

    def close(self, code: int = ErrorCode.H3_NO_ERROR, reason: str = "") -> None:
        """Send CONNECTION_CLOSE; the connection no longer counts as open (its connection IDs stay routed while the
        close is repeated to a client that goes on sending)."""
        if self.closed:
            return
        try:
            self.quic.close(error_code=code, reason_phrase=reason)
        except Exception:
            pass
        self._transmit()
        self._gone()

    def _gone(self) -> None:
        """No more requests: every stream's app hears the client is gone; the registry forgets the connection."""
        if self.closed:
            return
        self.closed = True
        if self.handshaking:
            self.handshaking = False
            self.endpoint.handshakes -= 1
        for timer in (self._idle_timer, self._keepalive, self._reset_timer, self._linger, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._keepalive = self._reset_timer = self._linger = self._handshake_timer = None
        registry = self.ctx.registry
        for stream in list(self.streams.values()):
            stream.on_reset()
            registry.outlive(stream.task)
        for stream in list(self.waiting):
            stream.wake()
        registry.discard(self)

    def _terminated(self) -> None:
        """The QUIC connection is over (closed by either side, idle, or dropped): forget it."""
        if not self.over and _debug():
            self._log_over()
        self._gone()
        self.over = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.endpoint.forget(self)

    def _log_over(self) -> None:
        event = self.quic._close_event
        if self.handshaking or not self.speaking:
            why = "handshake not complete"
        elif event is None:
            why = "closed"
        else:
            reason = f", {escape_log(event.reason_phrase)}" if event.reason_phrase else ""
            why = f"closed (code {event.error_code:#x}{reason})"
        count = self.quic.opened_requests()
        logger.debug("%s - QUIC connection over, %d request stream%s: %s", self.client_text(), count,
                     "" if count == 1 else "s", why)

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: close the connection and cancel its apps; the tasks this cancelled."""
        tasks = [stream.task for stream in self.streams.values()]
        self.close(ErrorCode.H3_NO_ERROR, "server shutting down")
        self._terminated()
        return [task for task in tasks if task is not None and task.cancel()]

    # ------------------------------------------------------------------ logging

    def client_text(self) -> str:
        return client_text(self.info)


# ---------------------------------------------------------------------------------------------- the endpoint

class H3Endpoint(asyncio.DatagramProtocol):
    """One UDP socket: routes each datagram to its connection by destination connection ID, makes connections for
    new Initial packets, and answers versions it does not speak.  Nothing a datagram holds makes it raise."""

    transport: asyncio.DatagramTransport

    def __init__(self, ctx: ServerContext, configuration: QuicConfiguration, make_cid: Any) -> None:
        self.ctx = ctx
        self.configuration = configuration
        self.make_cid = make_cid
        self.window = _stream_window(ctx)
        self.defaults = _Defaults(ctx)
        self.connections: dict[bytes, H3Driver] = {}
        #: connections whose handshake is not complete
        self.handshakes = 0
        self.accepting = True
        self.retry_mode = ctx.config.h3.quic_retry
        self._retry: QuicRetryTokenHandler | None = None
        self.sockname: Any = None
        self.sendto: Any = None  # the transport's, once made
        self._errors = 0
        self._supported = configuration.supported_versions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.sockname = transport.get_extra_info("sockname")
        self.sendto = self.transport.sendto

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a datagram we sent (a client gone): its connection times out

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if data[0] & 0x80 == 0:
                driver = self.connections.get(data[1:1 + CID_LENGTH])
                if driver is not None:
                    driver.datagram_received(data, addr)
                return  # a short header for no connection of ours: dropped
            self._long_header(data, addr)
        except Exception as exc:
            # pull_quic_header and the packet builders raise on what they cannot parse: the datagram is dropped
            self._errors += 1
            if self._errors & (self._errors - 1) == 0:  # the 1st, 2nd, 4th, 8th...
                logger.debug("QUIC datagram from %s dropped (%d so far): %r", addr, self._errors, exc)

    def _long_header(self, data: bytes, addr: Any) -> None:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        driver = self.connections.get(header.destination_cid)
        if driver is not None:
            driver.datagram_received(data, addr)
            return
        if header.version is not None and header.version not in self._supported:
            if header.packet_type != QuicPacketType.VERSION_NEGOTIATION and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:
                self.sendto(encode_quic_version_negotiation(source_cid=header.destination_cid,
                                                            destination_cid=header.source_cid,
                                                            supported_versions=self._supported), addr)
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return
        if not self.accepting or len(header.destination_cid) < 8:
            return
        registry = self.ctx.registry
        if registry.connection_limit is not None and len(registry.connections) >= registry.connection_limit:
            return  # --limit-connections: the client retries (or goes on over TCP)
        if self.handshakes >= MAX_HANDSHAKES:
            return  # a flood of Initial packets: no more state for them
        original_cid = header.destination_cid
        retry_cid = None
        mode = self.retry_mode
        if header.token:
            # the only tokens we give are Retry tokens
            try:
                original_cid = self._retry_handler().validate_token(address=addr,
                                                                    destination_cid=header.destination_cid,
                                                                    token=header.token, now=self.ctx.loop.time())
            except ValueError:
                if mode == "never" or (mode == "auto" and self.handshakes < RETRY_ABOVE):
                    original_cid = header.destination_cid  # not ours to check: go on without validation
                else:
                    self.sendto(_invalid_token_close(header.version, header.destination_cid, header.source_cid),
                                addr)
                    return
            else:
                retry_cid = header.destination_cid
        elif mode == "always" or (mode == "auto" and self.handshakes >= RETRY_ABOVE):
            self._send_retry(header, addr)
            return
        driver = H3Driver(self, addr, original_cid, retry_cid)
        self.handshakes += 1
        self.route(header.destination_cid, driver)
        self.route(driver.quic.host_cid, driver)
        driver.datagram_received(data, addr)

    def _retry_handler(self) -> QuicRetryTokenHandler:
        if self._retry is None:
            self._retry = QuicRetryTokenHandler()
        return self._retry

    def _send_retry(self, header: Any, addr: Any) -> None:
        """Address validation (RFC 9000 §8.1.2): the client must come back with this token from its address."""
        source_cid = self.make_cid()
        token = self._retry_handler().create_token(address=addr, original_destination_connection_id=header.
                                                   destination_cid, retry_source_connection_id=source_cid,
                                                   now=self.ctx.loop.time())
        self.sendto(encode_quic_retry(version=header.version, source_cid=source_cid,
                                      destination_cid=header.source_cid,
                                      original_destination_cid=header.destination_cid, retry_token=token), addr)

    def route(self, cid: bytes, driver: H3Driver) -> None:
        self.connections[cid] = driver
        driver.cids.add(cid)

    def unroute(self, cid: bytes, driver: H3Driver) -> None:
        if self.connections.get(cid) is driver:
            del self.connections[cid]
        driver.cids.discard(cid)

    def forget(self, driver: H3Driver) -> None:
        for cid in driver.cids:
            if self.connections.get(cid) is driver:
                del self.connections[cid]
        driver.cids.clear()

    def close(self) -> None:
        for driver in set(self.connections.values()):
            driver._terminated()
        self.connections.clear()
        self.transport.close()


def _invalid_token_close(version: int | None, source_cid: bytes, destination_cid: bytes) -> bytes:
    """A server Initial packet closing the connection with INVALID_TOKEN (RFC 9000 §8.1.3)."""
    assert version is not None
    crypto = CryptoPair()
    crypto.setup_initial(cid=source_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=source_cid, is_client=False, max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
                                peer_cid=destination_cid, version=version)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=64)
    buf.push_uint_var(QuicErrorCode.INVALID_TOKEN)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(0)
    datagrams, _ = builder.flush()
    return datagrams[0]


class QuicServer:
    """Every QUIC endpoint of one server.  Its configuration (the certificate and key) is loaded when it is made,
    before the app starts: a problem is a ConfigError then."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.configuration = quic_configuration(ctx)
        self.endpoints: list[H3Endpoint] = []

    async def start(self, listeners: QuicListeners) -> None:
        configuration = self.configuration
        make_cid = connection_id_maker(listeners.slot, listeners.tag)
        loop = self.ctx.loop
        for sock in listeners.sockets:
            _, endpoint = await loop.create_datagram_endpoint(
                lambda: H3Endpoint(self.ctx, configuration, make_cid), sock=sock)
            self.endpoints.append(endpoint)

    def stop_accepting(self) -> None:
        for endpoint in self.endpoints:
            endpoint.accepting = False

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
        self.endpoints.clear()

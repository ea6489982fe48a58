"""HTTP/2 connection, sans-IO, server side (RFC 9113, HPACK RFC 7541).

Bytes in, the same neutral events as HTTP/1.1 out (:meth:`H2Connection.receive_data` → :class:`Request` with its
``stream_id`` and ``http_version`` ``"2"``, :class:`Data`, :class:`EndOfMessage`, plus :class:`StreamReset`,
:class:`Writable` and :class:`ConnectionClosed`); the response side turns a status, headers, body pieces and
trailers into frames handed to :attr:`H2Connection.write`.  No socket, no clock, no asyncio.

Header blocks are decoded with ``hpack`` (the HPACK implementation of the ``h2`` project).  Framing, stream states
and flow control are done here rather than by ``h2.connection.H2Connection``: that class spends about 60 µs of
Python per request and stream, which alone caps a server core below the throughput we aim for; the rules below are
RFC 9113's and the tests drive this connection with ``h2`` as the peer.  Two cheap forms keep the hot path short:

- a request header block made only of one-byte indexed fields (what a client sends for a request it repeats) does
  not change the HPACK table, so its decoded and validated form is cached, keyed by its bytes, until a block that
  could change the table arrives;
- responses never use the HPACK dynamic table (static-table indexes and literals "without indexing"), so an
  encoded header field depends on nothing but itself and is cached across connections.

Rules this file enforces:

- the client preface, then a SETTINGS frame, opens the connection; frames larger than our SETTINGS_MAX_FRAME_SIZE,
  control frames of the wrong size or on the wrong stream, a header block interleaved with other frames, streams
  opened with an even or a non-increasing id, PUSH_PROMISE from a client → connection error (GOAWAY, then the
  caller closes: :class:`ConnectionClosed` with ``graceful`` False);
- requests (RFC 9113 §8.3): ``:method``, ``:scheme`` and ``:path`` present once each (CONNECT: ``:authority``
  only; extended CONNECT with ``:protocol`` when enabled), pseudo-header fields first and no others, lower-case
  field names, no connection-specific fields, ``te`` only ``trailers``, no CR/LF/NUL or edge whitespace in values,
  ``host`` agreeing with ``:authority``, DATA summing to ``content-length`` → else a stream error (RST_STREAM
  PROTOCOL_ERROR) and the application never sees the request; ``:authority`` becomes a ``host`` header and
  ``cookie`` fields are joined (§8.2.3);
- a CONNECT without ``:protocol`` (a tunnel) is answered 400, as over HTTP/1.1;
- a header list larger than ``max_header_list_size`` is answered 431; one larger than twice that, or an
  undecodable block, is a connection error COMPRESSION_ERROR (the HPACK state is lost), so a header block never
  holds more than that in memory, however it is split into CONTINUATION frames;
- concurrency: a new stream beyond ``max_concurrent_streams`` open ones is refused (RST_STREAM REFUSED_STREAM);
- flow control, receiving: a stream's window is given back (WINDOW_UPDATE) only as the application consumes its
  data (:meth:`acknowledge`); the connection window is ``max_concurrent_streams`` stream windows, given back as
  data is consumed or discarded, so one slow stream never stalls the others and the data held for the
  application stays bounded by the stream windows;
- flow control, sending: DATA never exceeds the peer's windows or frame size; what does not fit waits in the
  stream (:meth:`send_body` returns False) until a WINDOW_UPDATE, when :class:`Writable` says it went out;
- abuse: every RST_STREAM from the client on a live stream, every stream error it causes, every empty DATA or
  CONTINUATION frame, and every SETTINGS frame that changes SETTINGS_INITIAL_WINDOW_SIZE while streams are
  open (each costs a pass over them) counts in :attr:`resets`; past ``max_resets`` (the caller zeroes the count
  every interval) the connection ends with GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487; empty
  frames, CVE-2019-9518);
- :meth:`goaway` starts a graceful close: GOAWAY NO_ERROR with the last stream id; later streams are ignored.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from h2.errors import ErrorCodes
from hpack import Decoder
from hpack.exceptions import HPACKError
from hpack.table import HeaderTable

from .events import (
    Answered,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    ProtocolError,
    Request,
    StreamReset,
    Writable,
)
from .http1 import ResponseDefaults

__all__ = ["PREFACE", "H2Connection", "check_response_field", "decode_settings"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types
DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PUSH_PROMISE: Final = 5
PING: Final = 6
GOAWAY: Final = 7
WINDOW_UPDATE: Final = 8
CONTINUATION: Final = 9
_FRAME_TYPES: Final = 10
# Flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20
# Error codes
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB
# Settings
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = 2**31 - 1
DEFAULT_FRAME_SIZE: Final = 16384
# Streams we reset whose late frames are ignored rather than answered with STREAM_CLOSED.
_RECENT_RESETS: Final = 64

_FRAME: Final = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
_SETTING: Final = struct.Struct(">HL")
_U32: Final = struct.Struct(">L")
_GOAWAY: Final = struct.Struct(">LL")


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def decode_settings(payload: bytes) -> list[tuple[int, int]]:
    """A SETTINGS payload → (identifier, value) pairs (``HTTP2-Settings`` of an h2c upgrade carries one)."""
    if len(payload) % 6:
        raise ValueError("a SETTINGS payload is a multiple of 6 bytes")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


# ---------------------------------------------------------------------------------------------- HPACK encoding

# Responses use no dynamic table: every field is a static-table index or a literal "without indexing", so its
# encoding depends only on the field and is cached for every connection (bounded, like http1's known headers).
_STATIC_PAIRS: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_PAIRS.setdefault((_n, _v), _i)
    _STATIC_NAMES.setdefault(_n, _i)
_SENSITIVE: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_FIELD_CACHE: Final[dict[tuple[bytes, bytes], bytes]] = {}
_FIELD_CACHE_MAX: Final = 4096


def _hpack_int(value: int, bits: int, flags: int) -> bytes:
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One header field, without touching any dynamic table (RFC 7541 §6.1, §6.2.2, §6.2.3)."""
    index = _STATIC_PAIRS.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))
    flags = 0x10 if name in _SENSITIVE else 0x00  # sensitive: "never indexed" by whoever re-encodes it
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _hpack_int(index, 4, flags) + _hpack_int(len(value), 7, 0) + value
    return bytes((flags,)) + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


_STATUS_FIELDS: Final = {status: encode_field(b":status", b"%d" % status) for status in range(100, 600)}
# content-length fields by value (bounded, like the field cache)
_LENGTH_FIELDS: Final[dict[bytes, bytes]] = {}


def _length_field(value: bytes) -> bytes:
    piece = _LENGTH_FIELDS.get(value)
    if piece is None:
        piece = encode_field(b"content-length", value)
        if len(_LENGTH_FIELDS) < _FIELD_CACHE_MAX:
            _LENGTH_FIELDS[value] = piece
    return piece

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# What a :path may not hold, as an HTTP/1.1 request target may not (RFC 9112 §3.2): spaces, controls, DEL, raw
# bytes above 0x7F.
_BAD_TARGET: Final = re.compile(rb"[\x00-\x20\x7f-\xff]")
_BAD_VALUE: Final = re.compile(rb"[\r\n\0]")
_REQUEST_BAD_VALUE: Final = re.compile(rb"[\r\n\0]|^[ \t]|[ \t]$")
# Response fields we never pass through: HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                         b"upgrade"})
_SPECIAL_RESPONSE: Final = _CONNECTION_SPECIFIC | {b"content-length", b"date", b"server", b"alt-svc"}


def check_response_field(name: object, value: object) -> tuple[bytes, bytes, bytes]:
    """An app's response field as ``(name, value, lower-cased name)`` bytes, for HTTP/2 and HTTP/3 alike; raises
    ProtocolError for what may not be sent (not bytes, an invalid name, CR, LF or NUL in the value)."""
    if type(name) is not bytes or type(value) is not bytes:
        if not isinstance(name, (bytes, bytearray)) or not isinstance(value, (bytes, bytearray)):
            raise ProtocolError("headers must be an iterable of (name, value) byte string pairs")
        name, value = bytes(name), bytes(value)
    lname = name.lower()
    if not _TOKEN.fullmatch(lname):
        raise ProtocolError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ProtocolError(f"header {name!r} has CR, LF or NUL in its value")
    return name, value, lname


def _response_field(name: bytes, value: bytes) -> bytes:
    """A validated, encoded response field (cached); raises ProtocolError for what may not be sent."""
    try:
        piece = _FIELD_CACHE.get((name, value))
    except TypeError:
        raise ProtocolError("headers must be an iterable of (name, value) byte string pairs") from None
    if piece is not None:
        return piece
    name, value, lname = check_response_field(name, value)
    piece = encode_field(lname, value)
    if len(_FIELD_CACHE) < _FIELD_CACHE_MAX and lname not in _SPECIAL_RESPONSE:
        # (a field that replaces a default is never cached: _encode_headers must see it each time)
        _FIELD_CACHE[(name, value)] = piece
    return piece


def _default_fields(lines: bytes) -> bytes:
    """HTTP/1.1 default header lines (``name: value\\r\\n``…) → encoded fields."""
    out = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append(_response_field(name.strip().lower(), value.strip()))
    return b"".join(out)


# ---------------------------------------------------------------------------------------------- requests

_PSEUDO_REQUEST: Final = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})


@dataclass(slots=True, eq=False)
class _Head:
    """A decoded, validated request head (cached for repeated all-indexed header blocks)."""

    method: bytes
    target: bytes
    headers: Headers
    content_length: int
    expect_continue: bool
    trailers: bool
    protocol: bytes | None
    size: int

    def __init__(self, method: bytes, target: bytes, headers: Headers, content_length: int, expect_continue: bool,
                 trailers: bool, protocol: bytes | None, size: int) -> None:  # not a dataclass's: see events.py
        self.method = method
        self.target = target
        self.headers = headers
        self.content_length = content_length
        self.expect_continue = expect_continue
        self.trailers = trailers
        self.protocol = protocol
        self.size = size


def parse_request(fields: Iterable[tuple[bytes, bytes]], connect_protocol: bool) -> _Head | str:
    """Decoded request fields → a head, or the reason the request is malformed (RFC 9113 §8.1.1, §8.2, §8.3)."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    size = 0
    host = None
    content_length = -1
    expect_continue = trailers = False
    cookies: list[bytes] = []
    cookie_at = -1
    for name, value in fields:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if headers or cookies:
                return "pseudo-header field after a regular field"
            if name not in _PSEUDO_REQUEST:
                return f"unknown pseudo-header field {name!r}"
            if name in pseudo:
                return f"{name!r} appears twice"
            if _REQUEST_BAD_VALUE.search(value):
                return f"invalid value for {name!r}"
            pseudo[name] = value
            continue
        if not _TOKEN.fullmatch(name):
            return f"invalid field name {name!r}" + (" (upper case)" if _TOKEN.fullmatch(name.lower()) else "")
        if _REQUEST_BAD_VALUE.search(value):
            return f"invalid value for {name!r}"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific field {name!r}"
        if name == b"te":
            if value.lower() != b"trailers":
                return "te other than 'trailers'"
            trailers = True
        elif name == b"cookie":
            if cookie_at < 0:
                cookie_at = len(headers)
            cookies.append(value)
            continue
        elif name == b"host":
            if host is not None:
                return "more than one host field"
            host = value
        elif name == b"content-length":
            if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                return "invalid content-length"
            content_length = int(value)
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True
        headers.append((name, value))
    if cookies:
        headers.insert(cookie_at, (b"cookie", b"; ".join(cookies)))
    method = pseudo.get(b":method")
    if method is None:
        return "missing :method"
    if not _TOKEN.fullmatch(method.lower()):
        return "invalid :method"
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    if protocol is not None and (not connect_protocol or method != b"CONNECT"):
        return ":protocol without extended CONNECT"
    if method == b"CONNECT" and protocol is None:
        if b":scheme" in pseudo or b":path" in pseudo or not authority:
            return "CONNECT must have :authority and neither :scheme nor :path"
        target = authority
    else:
        target = pseudo.get(b":path", b"")
        if b":scheme" not in pseudo or not target:
            return "missing :scheme or :path"
        if (target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS")) or _BAD_TARGET.search(target):
            return "invalid :path"
        if protocol is not None and not authority:
            return "extended CONNECT without :authority"
    if authority is not None:
        if host is None:
            headers.insert(0, (b"host", authority))
        elif host != authority:
            return "host and :authority differ"
    return _Head(method, target, headers, content_length, expect_continue, trailers, protocol, size)


def _all_indexed(block: bytes) -> bool:
    """True when every byte is a one-byte indexed field: such a block cannot change the HPACK table."""
    return not block.translate(None, _INDEXED_BYTES)


_INDEXED_BYTES: Final = bytes(range(0x80, 0xFF))

# ---------------------------------------------------------------------------------------------- streams

# Response states of a stream
_IDLE: Final = 0
_HEAD_PENDING: Final = 1
_SENDING: Final = 2
_DONE: Final = 3


@dataclass(slots=True, eq=False)
class _Stream:
    # the defaults are __init__'s (written out: see events.py)
    id: int
    send_window: int
    recv_window: int
    head_only: bool
    remote_open: bool
    state: int
    head: bytes
    status: int
    #: bytes delivered to the application and not acknowledged yet
    buffered: int
    #: bytes acknowledged and not yet given back to the peer with a WINDOW_UPDATE
    credit: int
    request_length: int
    received: int
    #: response content-length still owed (-1: none announced)
    remaining: int
    pending: list[bytes | memoryview]
    pending_end: bool
    pending_trailers: bytes

    def __init__(self, id: int, send_window: int, recv_window: int, head_only: bool) -> None:
        self.id = id
        self.send_window = send_window
        self.recv_window = recv_window
        self.head_only = head_only
        self.remote_open = True
        self.state = _IDLE
        self.head = b""
        self.status = 0
        self.buffered = 0
        self.credit = 0
        self.request_length = -1
        self.received = 0
        self.remaining = -1
        self.pending = []
        self.pending_end = False
        self.pending_trailers = b""


class _ConnectionError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        self.code = code
        self.detail = detail


class _Continuation:
    __slots__ = ("end_stream", "fragments", "self_dependent", "size", "stream_id")

    def __init__(self, stream_id: int, end_stream: bool, fragment: bytes, self_dependent: bool) -> None:
        self.stream_id = stream_id
        self.end_stream = end_stream
        self.fragments = [fragment]
        self.size = len(fragment)
        self.self_dependent = self_dependent


def _discard(data: bytes | memoryview) -> None:
    pass


class H2Connection:
    """One HTTP/2 connection's wire state, server side."""

    def __init__(self, write: Callable[[bytes | memoryview], object] | None = None, *,
                 defaults: ResponseDefaults | None = None, max_concurrent_streams: int = 100,
                 max_header_list_size: int = 65536,
                 initial_window_size: int = DEFAULT_WINDOW, enable_connect_protocol: bool = False,
                 max_resets: int = 200, max_field_size: int = 0) -> None:
        #: where frames go (the driver's output buffer)
        self.write: Callable[[bytes | memoryview], object] = write if write is not None else _discard
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        #: largest header field (name and value), answered 431 past it; 0: only the list's size counts
        self.max_field_size = max_field_size
        self.max_resets = max_resets
        self.enable_connect_protocol = enable_connect_protocol
        self._defaults = defaults if defaults is not None else ResponseDefaults()
        self._defaults_key = b"?"
        self._default_block = b""
        self._server_field = b""
        self._date_field = b""
        self._extra_fields = b""
        self._alt_svc_field = b""
        self._decoder = Decoder(max_header_list_size=2 * max_header_list_size)
        self._head_cache: dict[bytes, _Head | str] = {}
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        self._recent_resets: list[int] = []
        self._buffer = b""
        self._preface = True
        self._settings_seen = False
        self._continuation: _Continuation | None = None
        self._last_stream_id = 0
        self._goaway_last: int | None = None
        # our receive side
        self._stream_window = initial_window_size
        self._acked_stream_window = DEFAULT_WINDOW  # what the peer may assume until it acknowledges our SETTINGS
        self._stream_threshold = max(initial_window_size // 2, 1)
        self._conn_window_size = max(max_concurrent_streams * initial_window_size, DEFAULT_WINDOW)
        self._recv_window = DEFAULT_WINDOW
        self._conn_credit = 0
        self._conn_threshold = max(self._conn_window_size // 4, 1)
        # the peer's receive side
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._max_frame = DEFAULT_FRAME_SIZE
        self._table_size_update = False
        self._events: list[Event] = []
        #: client resets and client-caused stream errors since the caller last zeroed this (:meth:`forget_resets`)
        self.resets = 0

        #: True once a GOAWAY for an error was sent: nothing more is read or written
        self.closed = False
        #: True once the peer said it will open no more streams
        self.peer_going_away = False

    # ------------------------------------------------------------------ setup

    def forget_resets(self) -> None:
        """A new interval of the reset count (rapid reset, CVE-2023-44487) begins."""
        self.resets = 0

    def initiate(self) -> None:
        """Our connection preface: SETTINGS, then the connection window."""
        settings = [(MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
                    (MAX_HEADER_LIST_SIZE, self.max_header_list_size)]
        if self._stream_window != DEFAULT_WINDOW:
            settings.append((INITIAL_WINDOW_SIZE, self._stream_window))
        if self.enable_connect_protocol:
            settings.append((ENABLE_CONNECT_PROTOCOL, 1))
        payload = b"".join(_SETTING.pack(k, v) for k, v in settings)
        out = _frame(SETTINGS, 0, 0, payload)
        increment = self._conn_window_size - DEFAULT_WINDOW
        if increment > 0:
            out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))
            self._recv_window += increment
        self.write(out)

    def initiate_upgrade(self, settings: bytes, head_only: bool) -> None:
        """Start after an HTTP/1.1 ``Upgrade: h2c``: apply the client's ``HTTP2-Settings``; the upgrading request
        becomes stream 1, half-closed (its body, if any, came over HTTP/1.1).  Raises ValueError for bad settings."""
        try:
            self._apply_settings(decode_settings(settings))
        except _ConnectionError as exc:
            raise ValueError(exc.detail) from None
        self.initiate()
        stream = _Stream(1, self._peer_stream_window, 0, head_only)
        stream.remote_open = False
        self._streams[1] = stream
        self._last_stream_id = 1

    # ------------------------------------------------------------------ inbound

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events they complete."""
        if self.closed:
            return []
        events: list[Event] = []
        self._events = events
        buf = self._buffer + data if self._buffer else data
        pos = 0
        try:
            if self._preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(buf):
                        raise _ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                    self._buffer = buf
                    return events
                if buf[:24] != PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                self._preface = False
                pos = 24
            end = len(buf)
            unpack = _FRAME.unpack_from
            handlers = _HANDLERS
            while end - pos >= 9:
                high, low, ftype, flags, stream_id = unpack(buf, pos)
                length = (high << 8) | low
                if length > DEFAULT_FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes is over our maximum")
                if end - pos - 9 < length:
                    break
                payload = buf[pos + 9:pos + 9 + length]
                pos += 9 + length
                stream_id &= 0x7FFFFFFF
                if self._continuation is not None and ftype != CONTINUATION:
                    raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted by another frame")
                if not self._settings_seen and ftype != SETTINGS:
                    raise _ConnectionError(PROTOCOL_ERROR, "the first frame must be SETTINGS")
                if ftype < _FRAME_TYPES:  # frames of unknown types are ignored (RFC 9113 §4.1)
                    handlers[ftype](self, flags, stream_id, payload)
                if self.resets > self.max_resets:
                    raise _ConnectionError(ENHANCE_YOUR_CALM, "too many stream resets")
        except _ConnectionError as exc:
            self._terminate(exc.code, exc.detail)
            return events
        self._buffer = buf[pos:] if pos < end else b""
        return events

    def _terminate(self, code: int, detail: str) -> None:
        self.write(_frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_stream_id, code) + detail.encode()[:256]))
        self.closed = True
        self._buffer = b""
        self._events.append(ConnectionClosed(code, f"{error_name(code)}: {detail}", False))

    # -- HEADERS / CONTINUATION

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its padding")
            start, end = 1, end - payload[0]
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dependent = (_U32.unpack_from(payload, start)[0] & 0x7FFFFFFF) == stream_id
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
        block = payload if start == 0 and end == len(payload) else payload[start:end]
        if not flags & END_HEADERS:
            self._continuation = _Continuation(stream_id, bool(flags & END_STREAM), block, self_dependent)
            self._check_block_size(len(block))
            return
        self._on_header_block(stream_id, bool(flags & END_STREAM), block, self_dependent)

    def _check_block_size(self, size: int) -> None:
        if size > self._decoder.max_header_list_size:
            raise _ConnectionError(COMPRESSION_ERROR, "header block too large")

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        cont = self._continuation
        if cont is None or cont.stream_id != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        if not payload and not flags & END_HEADERS:
            self.resets += 1
        cont.fragments.append(payload)
        cont.size += len(payload)
        self._check_block_size(cont.size)
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, cont.end_stream, b"".join(cont.fragments), cont.self_dependent)

    def _decode(self, block: bytes) -> Iterable[tuple[bytes, bytes]]:
        """The fields of a header block (iterated once by each caller)."""
        if self._head_cache and not _all_indexed(block):
            self._head_cache.clear()  # the HPACK table may change: cached meanings may not hold
        try:
            fields = self._decoder.decode(block, raw=True)
        except HPACKError as exc:
            # the error's name only: hpack's message quotes the block's repr, a heap address among it
            raise _ConnectionError(COMPRESSION_ERROR, f"header block: {type(exc).__name__}") from None
        return fields

    def _decode_head(self, block: bytes) -> _Head | str:
        head = self._head_cache.get(block)
        if head is not None:
            return head
        head = parse_request(self._decode(block), self.enable_connect_protocol)
        if _all_indexed(block):
            if len(self._head_cache) >= 64:
                self._head_cache.clear()
            self._head_cache[block] = head
        return head

    def _on_header_block(self, stream_id: int, end_stream: bool, block: bytes, self_dependent: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._on_trailers(stream, end_stream, block)
            return
        if not stream_id & 1:
            self._decode(block)
            raise _ConnectionError(PROTOCOL_ERROR, f"stream {stream_id} opened with an even id")
        if stream_id <= self._last_stream_id:
            self._decode(block)  # keep the HPACK state in step
            if stream_id in self._recent_resets:
                return
            if stream_id < self._last_stream_id:
                # RFC 9113 §5.1.1: a new stream's id must be higher than every one before it
                raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, lower than a previous one")
            raise _ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self._last_stream_id = stream_id
        head = self._decode_head(block)
        if self._goaway_last is not None and stream_id > self._goaway_last:
            return  # after our GOAWAY: ignored, the client may retry it elsewhere
        if type(head) is str:
            self._refuse(stream_id, PROTOCOL_ERROR)
            return
        if self_dependent:
            self._refuse(stream_id, PROTOCOL_ERROR)
            return
        if len(self._streams) >= self.max_concurrent_streams:
            self._refuse(stream_id, REFUSED_STREAM)
            return
        assert isinstance(head, _Head)
        if end_stream and head.content_length > 0:
            self._refuse(stream_id, PROTOCOL_ERROR)  # a body was announced and none follows
            return
        stream = _Stream(stream_id, self._peer_stream_window, self._acked_stream_window, head.method == b"HEAD")
        self._streams[stream_id] = stream
        if head.size > self.max_header_list_size or (
                self.max_field_size and any(len(n) + len(v) > self.max_field_size for n, v in head.headers)):
            stream.remote_open = not end_stream
            size = self.error_response(stream_id, 431, "request header fields too large")
            self._events.append(Answered(stream_id, 431, size, head.method, head.target))
            return
        if head.method == b"CONNECT" and head.protocol is None:
            # a tunnel, which an origin server does not open (as over HTTP/1.1)
            stream.remote_open = not end_stream
            size = self.error_response(stream_id, 400, "CONNECT is not served here (this is not a proxy)")
            self._events.append(Answered(stream_id, 400, size, head.method, head.target))
            return
        stream.request_length = head.content_length
        if end_stream:
            stream.remote_open = False
            self._events.append(Request(head.method, head.target, "2", list(head.headers), True, False,
                                        stream_id, head.protocol, head.trailers))
            self._events.append(EndOfMessage(stream_id))
        else:
            self._events.append(Request(head.method, head.target, "2", list(head.headers), True,
                                        head.expect_continue, stream_id, head.protocol, head.trailers))

    def _on_trailers(self, stream: _Stream, end_stream: bool, block: bytes) -> None:
        fields = self._decode(block)
        if not stream.remote_open:
            self._stream_error(stream, STREAM_CLOSED)
            return
        if not end_stream or any(name[:1] == b":" for name, _ in fields):
            self._stream_error(stream, PROTOCOL_ERROR)
            return
        self._end_of_request(stream)

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_open = False
        if stream.request_length >= 0 and stream.received != stream.request_length:
            self._stream_error(stream, PROTOCOL_ERROR)
            return
        self._events.append(EndOfMessage(stream.id))
        if stream.state == _DONE and not stream.pending:
            self._close(stream)

    # -- DATA

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self._recv_window -= length
        if self._recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            self._give_back(length)
            if stream is None:
                if stream_id > self._last_stream_id:
                    raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
                if stream_id in self._recent_resets:
                    return
                self._write_reset(stream_id, STREAM_CLOSED)
                self.resets += 1
            else:
                self._stream_error(stream, STREAM_CLOSED)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._give_back(length)
            self._stream_error(stream, FLOW_CONTROL_ERROR)
            return
        body = payload
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise _ConnectionError(PROTOCOL_ERROR, "invalid padding")
            body = payload[1:length - payload[0]]
            padding = length - len(body)
            stream.credit += padding  # padding is consumed at once
            self._give_back(padding)
        if body:
            size = len(body)
            stream.received += size
            if stream.request_length >= 0 and stream.received > stream.request_length:
                self._give_back(size)
                self._stream_error(stream, PROTOCOL_ERROR)
                return
            stream.buffered += size
            self._events.append(Data(body, stream_id))
        elif not flags & END_STREAM:
            self.resets += 1  # an empty DATA frame that ends nothing
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _give_back(self, size: int) -> None:
        """Connection-level flow-control credit for bytes consumed or discarded."""
        credit = self._conn_credit + size
        if credit >= self._conn_threshold:
            self.write(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(credit)))
            self._recv_window += credit
            credit = 0
        self._conn_credit = credit

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed ``size`` bytes of the stream's data: the peer may send that much more."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return  # given back to the connection when the stream closed
        stream.buffered -= size
        self._give_back(size)
        credit = stream.credit + size
        if stream.remote_open and credit >= self._stream_threshold:
            self.write(_frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(credit)))
            stream.recv_window += credit
            credit = 0
        stream.credit = credit

    # -- control frames

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            # our SETTINGS now hold: streams opened before were given the default window
            delta = self._stream_window - self._acked_stream_window
            if delta:
                self._acked_stream_window = self._stream_window
                for stream in self._streams.values():
                    stream.recv_window += delta
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        self._settings_seen = True
        grown = self._apply_settings(decode_settings(payload))
        self.write(_frame(SETTINGS, ACK, 0))
        if grown:
            # data that waited goes out after the ACK: a peer may count its new window from there
            for blocked in list(self._blocked.values()):
                self._flush_pending(blocked)

    def _apply_settings(self, settings: list[tuple[int, int]]) -> bool:
        """Apply the peer's settings; True when stream windows grew (blocked data may go)."""
        grown = False
        for key, value in settings:
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_stream_window
                self._peer_stream_window = value
                if delta and self._streams:
                    self.resets += 1
                    for stream in self._streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window overflow")
                    grown = grown or delta > 0
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self._max_frame = value
            elif key == HEADER_TABLE_SIZE:
                self._table_size_update = True
            elif (key == ENABLE_PUSH or key == ENABLE_CONNECT_PROTOCOL) and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, f"invalid value {value} for setting {key}")
            # MAX_CONCURRENT_STREAMS limits pushes (we never push); MAX_HEADER_LIST_SIZE is advisory
        return grown

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if not flags & ACK:
            self.write(_frame(PING, ACK, 0, payload))

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if stream_id == 0 or stream_id > self._last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # already closed: a reset crossing our end of stream
        self.resets += 1
        code = _U32.unpack(payload)[0]
        self._close(stream)
        self._events.append(StreamReset(stream_id, code))

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._stream_error(stream, FRAME_SIZE_ERROR)
            else:
                self._write_reset(stream_id, FRAME_SIZE_ERROR)
            return
        if (_U32.unpack_from(payload)[0] & 0x7FFFFFFF) == stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._stream_error(stream, PROTOCOL_ERROR)
            else:
                self._write_reset(stream_id, PROTOCOL_ERROR)
        # priorities are advisory (RFC 9113 §5.3 deprecates the scheme): otherwise ignored

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise _ConnectionError(PROTOCOL_ERROR, "a client must not send PUSH_PROMISE")

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY too short")
        if not self.peer_going_away:
            self.peer_going_away = True
            code = _GOAWAY.unpack_from(payload)[1]
            self._events.append(ConnectionClosed(code, error_name(code), True))

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            for blocked in list(self._blocked.values()):
                if self._send_window <= 0:
                    break
                self._flush_pending(blocked)
            return
        if stream_id > self._last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self._stream_error(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending:
            self._flush_pending(stream)

    # -- stream ends

    def _refuse(self, stream_id: int, code: int) -> None:
        """Reset a stream the application never saw."""
        self._write_reset(stream_id, code)
        self.resets += 1

    def _stream_error(self, stream: _Stream, code: int) -> None:
        self.reset_stream(stream.id, code, client_fault=True)

    def _write_reset(self, stream_id: int, code: int) -> None:
        self.write(_frame(RST_STREAM, 0, stream_id, _U32.pack(code)))
        recent = self._recent_resets
        recent.append(stream_id)
        if len(recent) > _RECENT_RESETS:
            del recent[0]

    def reset_stream(self, stream_id: int, code: int = CANCEL, *, client_fault: bool = False) -> None:
        """End a stream abnormally (RST_STREAM); its pending data is dropped."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return
        self._write_reset(stream_id, code)
        if client_fault:
            self.resets += 1
        self._close(stream)
        self._events.append(StreamReset(stream_id, code))

    def _close(self, stream: _Stream) -> None:
        del self._streams[stream.id]
        self._blocked.pop(stream.id, None)
        stream.pending.clear()
        stream.state = _DONE
        if stream.buffered:
            self._give_back(stream.buffered)
            stream.buffered = 0

    # ------------------------------------------------------------------ outbound

    def _header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        if self._table_size_update:
            self._table_size_update = False
            block = b"\x20" + block  # our table holds nothing: say its size is 0 (RFC 7541 §4.2)
        max_frame = self._max_frame
        if len(block) <= max_frame:
            return _frame(HEADERS, END_HEADERS | END_STREAM if end_stream else END_HEADERS, stream_id, block)
        frames = [_frame(HEADERS, END_STREAM if end_stream else 0, stream_id, block[:max_frame])]
        for i in range(max_frame, len(block), max_frame):
            last = i + max_frame >= len(block)
            frames.append(_frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[i:i + max_frame]))
        return b"".join(frames)

    def _encode_headers(self, headers: Any, stream: _Stream | None) -> tuple[list[bytes], bool, bool, bool]:
        """App headers → encoded fields; notes a content-length on ``stream``.  Returns (fields, date, server,
        alt-svc)."""
        parts: list[bytes] = []
        has_date = has_server = has_alt_svc = False
        special = _SPECIAL_RESPONSE
        try:
            for name, value in headers:
                piece = _FIELD_CACHE.get((name, value))
                if piece is None:
                    lname = name.lower()
                    if lname in special:
                        if lname in _CONNECTION_SPECIFIC:
                            continue
                        if lname == b"content-length":
                            if not value.isdigit():
                                raise ProtocolError(f"content-length must be digits, not {value!r}")
                            if stream is not None:
                                if stream.remaining >= 0:
                                    raise ProtocolError("more than one content-length header")
                                stream.remaining = int(value)
                            parts.append(_length_field(value))
                            continue
                        if lname == b"date":
                            has_date = True
                        elif lname == b"server":
                            has_server = True
                        else:
                            has_alt_svc = True
                    piece = _response_field(name, value)
                parts.append(piece)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"headers must be an iterable of (name, value) byte string pairs: {exc}") from None
        return parts, has_date, has_server, has_alt_svc

    def _defaults_block(self, has_date: bool, has_server: bool, has_alt_svc: bool) -> bytes:
        defaults = self._defaults
        if defaults.together is not self._defaults_key:
            self._defaults_key = defaults.together
            self._server_field = _default_fields(defaults.server)
            self._date_field = _default_fields(defaults.date)
            self._extra_fields = _default_fields(defaults.extra)
            self._alt_svc_field = _default_fields(defaults.alt_svc)
            self._default_block = self._server_field + self._date_field + self._extra_fields + self._alt_svc_field
        if not has_date and not has_server and not has_alt_svc:
            return self._default_block
        return ((b"" if has_server else self._server_field) + (b"" if has_date else self._date_field)
                + self._extra_fields + (b"" if has_alt_svc else self._alt_svc_field))

    def start_response(self, stream_id: int, status: object, headers: Any) -> None:
        """Begin the response; its HEADERS frame is held until the first :meth:`send_body`.  ``status`` and
        ``headers`` are what the app sent, checked here."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.state != _IDLE:
            raise ProtocolError("the response has already started")
        field = _STATUS_FIELDS.get(status) if type(status) is int else None
        if field is None or type(status) is not int or status < 200:
            raise ProtocolError(f"status must be an int in 200..599 (1xx are informational), not {status!r}")
        parts, has_date, has_server, has_alt_svc = self._encode_headers(headers, stream)
        parts.insert(0, field)
        parts.append(self._defaults_block(has_date, has_server, has_alt_svc))
        if status == 204 or status == 304:
            if status == 204 and stream.remaining >= 0:
                stream.remaining = -1
                raise ProtocolError("a 204 response must not have a content-length")
            stream.head_only = True
            stream.remaining = -1
        elif stream.head_only:
            stream.remaining = -1
        stream.status = status
        stream.head = b"".join(parts)
        stream.state = _HEAD_PENDING

    def send_body(self, stream_id: int, data: bytes, end: bool) -> bool:
        """Send a body piece (``end``: the last).  False when some of it waits for the peer's flow control."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return True  # reset: the driver tells the application
        state = stream.state
        if state != _SENDING:
            if state != _HEAD_PENDING:
                raise ProtocolError("the response is complete" if state == _DONE else "the response has not started")
            stream.state = _SENDING
            head = stream.head
            stream.head = b""
            if stream.head_only:
                if data and stream.status in (204, 304):
                    self._fail(stream)
                    raise ProtocolError("a 204 or 304 response must not have a body")
                data = b""
            elif end and stream.remaining < 0:
                head += _length_field(b"%d" % len(data))
                stream.remaining = len(data)
            if end and not data:
                self.write(self._header_frames(stream_id, head, True))
                self._local_done(stream)
                return True
            self.write(self._header_frames(stream_id, head, False))
        elif stream.head_only:
            data = b""
        if stream.remaining >= 0:
            remaining = stream.remaining - len(data)
            if remaining < 0 or (end and remaining):
                self._fail(stream)
                raise ProtocolError("the app sent more body than its content-length" if remaining < 0 else
                                    f"the app ended the body {remaining} bytes short of its content-length")
            stream.remaining = remaining
        return self._send_data(stream, data, end)

    def _send_data(self, stream: _Stream, data: bytes | memoryview, end: bool) -> bool:
        if not data and not end:
            return not stream.pending
        if stream.pending:
            if data:
                stream.pending.append(data)
            stream.pending_end = end
            return False
        size = len(data)
        if size <= self._send_window and size <= stream.send_window and size <= self._max_frame:
            self._send_window -= size
            stream.send_window -= size
            n = size
            header = _FRAME.pack(n >> 8, n & 0xFF, DATA, END_STREAM if end else 0, stream.id)
            if size <= 16384:
                self.write(header + data)
            else:
                self.write(header)
                self.write(data)
            if end:
                self._local_done(stream)
            return True
        stream.pending.append(data)
        stream.pending_end = end
        self._flush_pending(stream)
        return not stream.pending

    def _flush_pending(self, stream: _Stream) -> None:
        """Send what the windows allow of the stream's waiting data (then its end, then its trailers)."""
        pending = stream.pending
        write = self.write
        max_frame = self._max_frame
        while pending:
            allowed = min(self._send_window, stream.send_window, max_frame)
            if allowed <= 0:
                break
            chunk = pending[0]
            if len(chunk) > allowed:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                piece: bytes | memoryview = view[:allowed]
                pending[0] = view[allowed:]
                last = False
            else:
                piece = chunk
                del pending[0]
                last = not pending and stream.pending_end and not stream.pending_trailers
            size = len(piece)
            self._send_window -= size
            stream.send_window -= size
            write(_FRAME.pack(size >> 8, size & 0xFF, DATA, END_STREAM if last else 0, stream.id))
            write(piece)
        if pending:
            self._blocked[stream.id] = stream
            return
        was_blocked = self._blocked.pop(stream.id, None) is not None
        if stream.pending_end:
            stream.pending_end = False
            if stream.pending_trailers:
                write(stream.pending_trailers)
                stream.pending_trailers = b""
            self._local_done(stream)
        if was_blocked:
            self._events.append(Writable(stream.id))

    def send_trailers(self, stream_id: int, headers: Any) -> None:
        """End the response with trailer fields (an empty list: just end it)."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return
        if stream.state == _HEAD_PENDING:
            self.send_body(stream_id, b"", False)
        elif stream.state != _SENDING:
            raise ProtocolError("the response is complete" if stream.state == _DONE else "the response has not started")
        if stream.remaining > 0:
            self._fail(stream)
            raise ProtocolError(f"the app ended the body {stream.remaining} bytes short of its content-length")
        parts, _, _, _ = self._encode_headers(headers, None)
        if not parts:
            self._send_data(stream, b"", True)
            return
        frames = self._header_frames(stream_id, b"".join(parts), True)
        if stream.pending:
            stream.pending_end = True
            stream.pending_trailers = frames
            return
        self.write(frames)
        self._local_done(stream)

    def _local_done(self, stream: _Stream) -> None:
        stream.state = _DONE
        if not stream.remote_open:
            self._close(stream)

    def _fail(self, stream: _Stream) -> None:
        stream.state = _DONE

    def informational(self, stream_id: int, status: int, headers: Headers | None = None) -> None:
        """A 1xx response (100 Continue, 103 Early Hints) before the final one."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return
        if not 100 <= status <= 199 or status == 101:
            raise ProtocolError(f"not an informational status: {status}")
        if stream.state != _IDLE and stream.state != _HEAD_PENDING:
            raise ProtocolError("the final response has already started")
        parts, _, _, _ = self._encode_headers(headers or (), None)
        self.write(self._header_frames(stream_id, _STATUS_FIELDS[status] + b"".join(parts), False))

    def error_response(self, stream_id: int, status: int, detail: str = "") -> int:
        """A complete short response for an error we answer ourselves; its body's size (0: none was sent)."""
        stream = self._streams.get(stream_id)
        if stream is None or self.closed or stream.state not in (_IDLE, _HEAD_PENDING):
            return 0
        stream.state = _IDLE
        stream.head = b""
        stream.remaining = -1
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = (phrase + (": " + detail if detail else "") + "\n").encode("ascii", "backslashreplace")
        self.start_response(stream_id, status, [(b"content-type", b"text/plain; charset=utf-8")])
        self.send_body(stream_id, body, True)
        if stream.remote_open and stream.id in self._streams:
            # answered before the request ended: the rest of it is not wanted (RFC 9113 §8.1); whoever asked for
            # this answer knows the stream is over
            self._write_reset(stream_id, NO_ERROR)
            self._close(stream)
        return len(body)

    def goaway(self) -> int:
        """Graceful close: GOAWAY NO_ERROR with the last stream we will answer; returns that id."""
        if self._goaway_last is None and not self.closed:
            self._goaway_last = self._last_stream_id
            self.write(_frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_stream_id, NO_ERROR)))
        return self._last_stream_id

    # ------------------------------------------------------------------ state

    def pending(self, stream_id: int) -> int:
        """Bytes of the stream's response waiting for flow-control window."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return sum(len(chunk) for chunk in stream.pending) or (1 if stream.pending_end else 0)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def last_stream_id(self) -> int:
        return self._last_stream_id



#: frame type -> its handler (flags, stream id, payload), by type number
_HANDLERS: Final[tuple[Callable[[H2Connection, int, int, bytes], None], ...]] = (
    H2Connection._on_data, H2Connection._on_headers, H2Connection._on_priority, H2Connection._on_rst_stream,
    H2Connection._on_settings, H2Connection._on_push_promise, H2Connection._on_ping, H2Connection._on_goaway,
    H2Connection._on_window_update, H2Connection._on_continuation)

"""WebSocket session, sans-IO: RFC 6455 framing and RFC 7692 permessage-deflate, server side.

A session starts from a request head (:class:`~tidegate.protocol.events.Request`) that a connection already parsed
— an HTTP/1.1 ``GET`` with ``Upgrade: websocket``, or an HTTP/2 extended ``CONNECT`` (RFC 8441) — and then speaks
over a byte stream: :meth:`WebSocketSession.receive_data` turns bytes into events (a ``str`` is a text message, a
``bytes`` a binary one, :class:`Close` and :class:`Pong` the rest); the ``send_*`` methods hand frame bytes to
:attr:`WebSocketSession.write`.  No socket, no clock: pings are sent when the caller says, deadlines are the caller's.

Rules this file enforces:

- handshake: ``GET`` over HTTP/1.1 with ``Upgrade: websocket``, ``Connection: upgrade``, one valid 16-byte
  ``Sec-WebSocket-Key`` (HTTP/2: ``CONNECT`` with ``:protocol websocket``, no key) → else 400;
  ``Sec-WebSocket-Version`` other than 13 → 426 with ``Sec-WebSocket-Version: 13``.  :attr:`rejection` says so
  before anything is upgraded.
- states: CONNECTING --accept--> OPEN --send_close--> CLOSING --peer's close--> CLOSED;
  OPEN --peer's close (echoed) or a failure--> CLOSED.  Only OPEN sends data; CLOSING still answers pings and
  discards data messages; CLOSED discards every byte.
- frames from the client are masked, reserved bits are 0 unless permessage-deflate was negotiated (RSV1 on the
  first frame of a compressed message), opcodes are known, control frames are final and at most 125 bytes,
  continuation frames only continue a started message → else the connection fails with close code 1002;
- text is valid UTF-8 (checked per fragment, so a bad fragment fails at once) and close reasons too → else 1007;
- a message (after decompression) longer than ``max_size`` → 1009, decided from the frame header before its
  payload is read and bounded while inflating, so no more than ``max_size`` bytes are ever held for one message;
- a close frame has no payload (code 1005 for the application) or a valid code (1000-1003, 1007-1014, 3000-4999)
  and a UTF-8 reason; it is echoed while OPEN.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .events import Headers, ProtocolError, Request

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask
from websockets.exceptions import InvalidHeader
from websockets.headers import parse_extension

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Close",
    "Event",
    "HandshakeRejection",
    "PerMessageDeflate",
    "Pong",
    "WebSocketSession",
    "accept_key",
    "negotiate_deflate",
]

DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Session states
CONNECTING: Final = 0
OPEN: Final = 1
CLOSING: Final = 2
CLOSED: Final = 3

# Close codes a peer may send (RFC 6455 §7.4.1, IANA registry); 3000-4999 are for libraries and applications.
_VALID_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

# Frame heads for the common case: a final, unmasked, uncompressed frame with a payload under 126 bytes.
_TEXT_HEADS: Final = [bytes((0x81, n)) for n in range(126)]
_BINARY_HEADS: Final = [bytes((0x82, n)) for n in range(126)]
# Above this size a payload is written as its own buffer rather than copied behind its head.
_COPY_LIMIT: Final = 16384


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


@dataclass(slots=True, eq=False)
class Close:
    """The session is closed: the peer's close frame (``error`` False), or a failure we closed it for."""

    code: int
    reason: str = ""
    error: bool = False

    def __repr__(self) -> str:
        return f"<Close {self.code} {self.reason!r}{' error' if self.error else ''}>"


@dataclass(slots=True, eq=False)
class Pong:
    """A pong frame arrived (the answer to a ping, or unsolicited)."""

    payload: bytes


Event = str | bytes | Close | Pong


class HandshakeRejection:
    """Why a handshake is refused: the status to answer, a one-line reason and any headers the answer needs."""

    __slots__ = ("detail", "headers", "status")

    def __init__(self, status: int, detail: str, headers: Headers | None = None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers or []

    def __repr__(self) -> str:
        return f"<HandshakeRejection {self.status} {self.detail!r}>"


class _Fail(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _TooBig(Exception):
    pass


# --------------------------------------------------------------------------------------------- permessage-deflate

_TAIL: Final = b"\x00\x00\xff\xff"


class PerMessageDeflate:
    """RFC 7692 compression state for one session, with the negotiated parameters.

    The zlib objects are made on first use and dropped after each message when the context is not taken over.
    When it is, :meth:`compact` drops them between messages all the same: what they need of the past is the last
    window of data each way, kept as bytes, from which the next message rebuilds them (a zlib preset dictionary
    is exactly a window of history).  An idle session then holds at most a window each way instead of the
    compressor's ~30 KB and the decompressor's ~10 KB.
    """

    __slots__ = ("_compressor", "_decompressor", "_received", "_sent", "local_bits", "local_no_context_takeover",
                 "mem_level", "remote_bits", "remote_no_context_takeover")

    def __init__(self, local_no_context_takeover: bool = False, remote_no_context_takeover: bool = False,
                 local_bits: int = 15, remote_bits: int = 15, mem_level: int = 5) -> None:
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_bits = local_bits
        self.remote_bits = remote_bits
        self.mem_level = mem_level
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        # the last window of data sent and received, while the context is taken over
        self._sent = b""
        self._received = b""

    def decompress(self, data: bytes, fin: bool, limit: int) -> bytes:
        """Inflate one frame of a compressed message; more than ``limit`` bytes out raises ``_TooBig``."""
        inflater = self._decompressor
        if inflater is None:
            if self._received:
                inflater = zlib.decompressobj(wbits=-self.remote_bits, zdict=self._received)
            else:
                inflater = zlib.decompressobj(wbits=-self.remote_bits)
            self._decompressor = inflater
        if fin and len(data) < 2048:
            data += _TAIL
            fin = False
        # One byte over the limit is enough to know the message is too big; never inflate further.
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit:
            raise _TooBig
        if fin:
            out += inflater.decompress(_TAIL, limit - len(out) + 1)
            if len(out) > limit:
                raise _TooBig
        if inflater.eof:
            # a final deflate block (BFINAL=1) ends the stream: the next message starts a new one
            self._decompressor = None
            self._received = b""
        elif not self.remote_no_context_takeover:
            self._received = _window(self._received, out, 1 << self.remote_bits)
        return out

    def end_of_message(self) -> None:
        if self.remote_no_context_takeover:
            self._decompressor = None

    def compress(self, data: bytes) -> bytes:
        deflater = self._compressor
        if deflater is None:
            if self._sent:
                deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.local_bits,
                                            self.mem_level, zdict=self._sent)
            else:
                deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.local_bits,
                                            self.mem_level)
            if not self.local_no_context_takeover:
                self._compressor = deflater
        out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        if not self.local_no_context_takeover:
            self._sent = _window(self._sent, data, 1 << self.local_bits)
        # a sync flush ends with an empty stored block, 00 00 ff ff, which RFC 7692 §7.2.1 removes
        return out[:-4]

    def compact(self, receiving: bool = False) -> None:
        """Drop the zlib objects kept between messages (the decompressor too unless a message is arriving)."""
        self._compressor = None
        if not receiving:
            self._decompressor = None

    @property
    def idle(self) -> bool:
        """True when no zlib state is held."""
        return self._compressor is None and self._decompressor is None


def _window(history: bytes, data: bytes, size: int) -> bytes:
    """The last ``size`` bytes of ``history + data``."""
    if len(data) >= size:
        return bytes(data[-size:])
    joined = history + data
    return joined[-size:] if len(joined) > size else joined


# Our window: 4 KiB each way unless the client asks for less (the memory of a busy session stays small).
_MAX_WINDOW_BITS: Final = 12


def negotiate_deflate(offers: str, *, max_window_bits: int = _MAX_WINDOW_BITS
                      ) -> tuple[bytes, PerMessageDeflate] | None:
    """Pick the first acceptable permessage-deflate offer (RFC 7692 §7.1) from a ``Sec-WebSocket-Extensions``
    value: the response header value and the compression state, or None.  Raises ``ValueError`` when the header
    is malformed."""
    try:
        parsed = parse_extension(offers)
    except InvalidHeader as exc:
        raise ValueError(str(exc)) from None
    for name, params in parsed:
        if name != "permessage-deflate":
            continue
        seen: set[str] = set()
        server_nct = client_nct = False
        server_bits: int | None = None
        client_bits: int | None = None
        client_bits_offered = False
        acceptable = True
        for pname, value in params:
            if pname in seen:
                acceptable = False
                break
            seen.add(pname)
            if pname == "server_no_context_takeover" and value is None:
                server_nct = True
            elif pname == "client_no_context_takeover" and value is None:
                client_nct = True
            elif pname == "server_max_window_bits" and value is not None and _window_bits(value):
                server_bits = int(value)
            elif pname == "client_max_window_bits" and (value is None or _window_bits(value)):
                client_bits_offered = True
                client_bits = int(value) if value is not None else None
            else:
                acceptable = False
                break
        # zlib cannot compress with an 8-bit window (it silently uses 9), so an offer that insists is declined
        if not acceptable or server_bits == 8:
            continue
        local_bits = min(server_bits or max_window_bits, max_window_bits)
        response = ["permessage-deflate"]
        if server_nct:
            response.append("server_no_context_takeover")
        if client_nct:
            response.append("client_no_context_takeover")
        response.append(f"server_max_window_bits={local_bits}")
        remote_bits = 15
        if client_bits_offered:
            remote_bits = min(client_bits or max_window_bits, max_window_bits)
            response.append(f"client_max_window_bits={remote_bits}")
        header = "; ".join(response).encode("ascii")
        return header, PerMessageDeflate(server_nct, client_nct, local_bits, remote_bits)
    return None


def _window_bits(value: str) -> bool:
    return value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15


# --------------------------------------------------------------------------------------------- handshake helpers

def _header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    tokens: list[bytes] = []
    for key, value in headers:
        if key == name:
            tokens.extend(t.strip().lower() for t in value.split(b","))
    return tokens


def _header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


# --------------------------------------------------------------------------------------------- the session

def _discard(data: bytes) -> None:
    pass


class WebSocketSession:
    """One WebSocket's wire state, from the request head that opened it."""

    __slots__ = (
        "_budget",
        "_deflate",
        "_extension_header",
        "_frag_buffer",
        "_frag_compressed",
        "_frag_decoder",
        "_frag_kind",
        "_key",
        "_need",
        "_partial",
        "_probe",
        "defer_failures",
        "h2",
        "max_size",
        "rejection",
        "request",
        "state",
        "write",
    )

    def __init__(self, request: Request, *, max_size: int = DEFAULT_MAX_SIZE, per_message_deflate: bool = True,
                 write: Callable[[bytes], object] | None = None) -> None:
        self.request = request
        #: where frame bytes go (the driver sets its transport's writer)
        self.write: Callable[[bytes], object] = write if write is not None else _discard
        self.max_size = max_size
        #: True for RFC 8441 (an HTTP/2 extended CONNECT): the handshake is answered with 200, not 101
        self.h2 = request.method == b"CONNECT"
        self.state = CONNECTING
        self._key = b""
        self._deflate: PerMessageDeflate | None = None
        self._extension_header = b""
        # receiving
        self._budget = max_size
        #: the start of a frame not complete yet (one buffer, whatever the number of reads it came in), and the size
        #: the frame needs (0 while its header is not complete)
        self._partial = bytearray()
        self._need = 0
        #: a text frame not complete yet is checked as it comes: [decoder, payload bytes checked, mask], or None
        self._probe: list[Any] | None = None
        self._frag_kind = 0  # opcode of the fragmented message being received (1 text, 2 binary), 0 if none
        self._frag_compressed = False
        #: the fragments of the message being received, joined as they come
        self._frag_buffer = bytearray()
        self._frag_decoder: codecs.IncrementalDecoder | None = None
        #: when True, a protocol error in what the client sent is reported (a Close with ``error``) without the close
        #: frame: the messages before it may still be answered, then the caller calls :meth:`fail`
        self.defer_failures = False
        #: why the handshake is refused, or None when it may be accepted
        self.rejection = self._check_handshake(request, per_message_deflate)

    # ------------------------------------------------------------------ handshake

    def _check_handshake(self, request: Request, per_message_deflate: bool) -> HandshakeRejection | None:
        headers = request.headers
        if self.h2:
            if request.upgrade != b"websocket":
                return HandshakeRejection(400, "extended CONNECT must carry :protocol websocket")
        else:
            if request.http_version == "1.0":
                return HandshakeRejection(400, "a WebSocket handshake needs HTTP/1.1")
            if request.method != b"GET":
                return HandshakeRejection(400, "a WebSocket handshake must be a GET request")
            if b"websocket" not in _header_tokens(headers, b"upgrade"):
                return HandshakeRejection(400, "missing 'Upgrade: websocket'")
            if b"upgrade" not in _header_tokens(headers, b"connection"):
                return HandshakeRejection(400, "missing 'Connection: upgrade'")
        versions = _header_values(headers, b"sec-websocket-version")
        if versions != [b"13"]:
            return HandshakeRejection(426, "unsupported or missing Sec-WebSocket-Version (13 is spoken)",
                                      [(b"sec-websocket-version", b"13")])
        if not self.h2:
            keys = _header_values(headers, b"sec-websocket-key")
            if len(keys) != 1:
                return HandshakeRejection(400, "missing Sec-WebSocket-Key" if not keys
                                          else "more than one Sec-WebSocket-Key")
            key = keys[0].strip()
            try:
                raw = base64.b64decode(key, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) != 16:
                return HandshakeRejection(400, "invalid Sec-WebSocket-Key")
            self._key = key
        offers = _header_values(headers, b"sec-websocket-extensions")
        if offers and per_message_deflate:
            try:
                negotiated = negotiate_deflate(b", ".join(offers).decode("latin-1"))
            except ValueError:
                return HandshakeRejection(400, "invalid Sec-WebSocket-Extensions header")
            if negotiated is not None:
                self._extension_header, self._deflate = negotiated
        return None

    @property
    def deflate(self) -> PerMessageDeflate | None:
        """The negotiated compression, if any."""
        return self._deflate

    def accept(self, subprotocol: str | None = None, headers: Headers | None = None) -> tuple[int, Headers]:
        """Accept the handshake: the response status (101, or 200 over HTTP/2) and headers to send.

        ``headers`` are the application's extra headers, checked (a token name, no CR/LF/NUL in the value);
        the handshake's own headers cannot be replaced by them.
        """
        if self.state != CONNECTING or self.rejection is not None:
            raise ProtocolError("the handshake was already answered" if self.state != CONNECTING
                                else "this handshake cannot be accepted")
        extra: Headers = []
        for name, value in headers or ():
            lname = name.lower()
            if not _TOKEN.fullmatch(name):
                raise ProtocolError(f"invalid header name {name!r}")
            if b"\r" in value or b"\n" in value or b"\0" in value:
                raise ProtocolError(f"header {name!r} has CR, LF or NUL in its value")
            if lname == b"sec-websocket-protocol":
                if subprotocol is None:
                    subprotocol = value.decode("latin-1")
                continue
            if lname in (b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-extensions"):
                continue
            extra.append((name, value))
        response: Headers
        if self.h2:
            response = []
        else:
            response = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                        (b"sec-websocket-accept", accept_key(self._key))]
        if self._extension_header:
            response.append((b"sec-websocket-extensions", self._extension_header))
        if subprotocol is not None:
            value = subprotocol.encode("latin-1")
            if not _TOKEN.fullmatch(value):
                raise ProtocolError(f"invalid subprotocol {subprotocol!r}")
            response.append((b"sec-websocket-protocol", value))
        response += extra
        self.state = OPEN
        return (200 if self.h2 else 101), response

    def reject(self) -> None:
        """The handshake was answered with an HTTP response: nothing more is exchanged."""
        self.state = CLOSED

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events they complete."""
        events: list[Event] = []
        if self.state == CLOSED or self.state == CONNECTING:
            return events
        partial = self._partial
        if partial:
            partial += data
            if len(partial) < self._need:
                probe = self._probe
                if probe is not None:
                    try:
                        if probe:
                            self._check_partial(data)
                        else:
                            self._start_probe(partial, 0)
                    except _Fail as failure:
                        self._fail_with(failure.code, failure.reason, events)
                return events
            data = bytes(partial)
            partial.clear()
            self._probe = None
        n = len(data)
        pos = 0
        need = 0  # bytes the frame at ``pos`` needs, once its header is complete
        frag = self._frag_kind
        try:
            while n - pos >= 2:
                b0 = data[pos]
                length = data[pos + 1]
                if length < 0x80:
                    raise _Fail(1002, "frames from a client must be masked")
                length -= 0x80
                if length < 126:
                    start = pos + 6
                elif length == 126:
                    if n - pos < 4:
                        break
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    start = pos + 8
                else:
                    if n - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2:pos + 10], "big")
                    if length >> 63:
                        raise _Fail(1002, "invalid frame length")
                    start = pos + 14
                # Decide on the size from the header, before the payload is read.
                if b0 & 0x08:
                    if length > 125:
                        raise _Fail(1002, "control frame too long")
                elif length > self._budget:
                    raise _Fail(1009, f"message larger than {self.max_size} bytes")
                end = start + length
                if end > n:
                    need = end - pos
                    break
                payload = apply_mask(data[start:end], data[start - 4:start]) if length else b""
                pos = end
                if b0 == 0x81 and not frag:
                    if self.state == OPEN:
                        try:
                            events.append(payload.decode())
                        except UnicodeDecodeError as exc:
                            raise _Fail(1007, f"invalid UTF-8 at byte {exc.start}") from None
                elif b0 == 0x82 and not frag:
                    if self.state == OPEN:
                        events.append(payload)
                else:
                    self._frame(b0, payload, events)
                    if self.state == CLOSED:
                        return events
                    frag = self._frag_kind
        except _Fail as failure:
            self._fail_with(failure.code, failure.reason, events)
            return events
        if pos < n:
            partial += memoryview(data)[pos:]
            self._need = need
            if data[pos] & 0x4F == 0x01 or (data[pos] & 0x4F == 0 and frag == 1 and not self._frag_compressed):
                # an uncompressed text frame (or continuation of a text message) that is not complete: its UTF-8
                # is checked as it comes, so that an invalid byte fails the connection at once
                try:
                    self._start_probe(data, pos)
                except _Fail as failure:
                    self._fail_with(failure.code, failure.reason, events)
        return events

    def _start_probe(self, data: bytes | bytearray, pos: int) -> None:
        """Check the text frame at ``pos`` as far as it came, once its header has (until then, wait for it)."""
        self._probe = []
        if len(data) - pos < 2:
            return
        length = data[pos + 1] & 0x7F
        start = pos + (6 if length < 126 else 8 if length == 126 else 14)
        if len(data) < start:
            return
        decoder = codecs.getincrementaldecoder("utf-8")()
        if data[pos] & 0x0F == 0 and self._frag_decoder is not None:
            decoder.setstate(self._frag_decoder.getstate())  # go on from the fragments before
        self._probe = [decoder, 0, bytes(data[start - 4:start])]
        self._check_partial(bytes(data[start:]))  # a copy: a view would pin a bytearray that is then resized

    def _check_partial(self, data: bytes) -> None:
        probe = self._probe
        assert probe is not None
        decoder, checked, mask = probe
        if not data:
            return
        shift = checked & 3
        rotated = mask[shift:] + mask[:shift]
        try:
            decoder.decode(apply_mask(data, rotated), False)
        except UnicodeDecodeError as exc:
            raise _Fail(1007, f"invalid UTF-8: {exc.reason}") from None
        probe[1] = checked + len(data)

    def _frame(self, b0: int, payload: bytes, events: list[Event]) -> None:
        """Every frame but a final, uncompressed text or binary one outside a fragmented message."""
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode >= 8:
            if b0 & 0x70:
                raise _Fail(1002, "reserved bits must be 0")
            if not fin:
                raise _Fail(1002, "fragmented control frame")
            if opcode == 9:
                self._send_frame(0x8A, payload)
            elif opcode == 10:
                events.append(Pong(payload))
            elif opcode == 8:
                self._on_close(payload, events)
            else:
                raise _Fail(1002, f"unknown opcode {opcode}")
            return
        if opcode > 2:
            raise _Fail(1002, f"unknown opcode {opcode}")
        rsv = b0 & 0x70
        if opcode:
            if self._frag_kind:
                raise _Fail(1002, "expected a continuation frame")
            compressed = False
            if rsv:
                if rsv != 0x40 or self._deflate is None:
                    raise _Fail(1002, "reserved bits must be 0")
                compressed = True
            kind = opcode
        else:
            if not self._frag_kind:
                raise _Fail(1002, "unexpected continuation frame")
            if rsv:
                raise _Fail(1002, "reserved bits must be 0")
            compressed = self._frag_compressed
            kind = self._frag_kind
        if compressed:
            deflate = self._deflate
            assert deflate is not None
            try:
                payload = deflate.decompress(payload, bool(fin), self._budget)
            except _TooBig:
                raise _Fail(1009, f"message larger than {self.max_size} bytes") from None
            except zlib.error:
                raise _Fail(1002, "invalid compressed data") from None
            if fin:
                deflate.end_of_message()
        if fin and opcode:
            # a whole message in one (compressed) frame
            if self.state == OPEN:
                if kind == 1:
                    try:
                        events.append(payload.decode())
                    except UnicodeDecodeError as exc:
                        raise _Fail(1007, f"invalid UTF-8 at byte {exc.start}") from None
                else:
                    events.append(payload)
            return
        if opcode:
            # first fragment
            self._frag_kind = kind
            self._frag_compressed = compressed
            self._frag_buffer = bytearray()
            self._frag_decoder = codecs.getincrementaldecoder("utf-8")() if kind == 1 else None
        self._budget -= len(payload)
        decoder = self._frag_decoder
        if decoder is not None:
            try:
                decoder.decode(payload, bool(fin))  # checked fragment by fragment, decoded once whole
            except UnicodeDecodeError as exc:
                raise _Fail(1007, f"invalid UTF-8: {exc.reason}") from None
        buffer = self._frag_buffer
        buffer += payload
        if fin:
            message: str | bytes = buffer.decode() if kind == 1 else bytes(buffer)
            self._frag_kind = 0
            self._frag_buffer = bytearray()
            self._frag_decoder = None
            self._budget = self.max_size
            if self.state == OPEN:
                events.append(message)

    def _on_close(self, payload: bytes, events: list[Event]) -> None:
        if not payload:
            code, reason = 1005, ""
        elif len(payload) == 1:
            raise _Fail(1002, "close frame too short")
        else:
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                raise _Fail(1007, "invalid UTF-8 in the close reason") from None
            code = (payload[0] << 8) | payload[1]
            if code not in _VALID_CODES and not 3000 <= code <= 4999:
                raise _Fail(1002, f"invalid close code {code}")
        if self.state == OPEN:
            # echo the code (RFC 6455 §5.5.1); the reason is the peer's own
            self._send_frame(0x88, payload[:2])
        self.state = CLOSED
        self._drop_message()
        events.append(Close(code, reason))

    def _fail_with(self, code: int, reason: str, events: list[Event]) -> None:
        if self.defer_failures:
            self._drop_message()
        else:
            self.fail(code, reason)
        events.append(Close(code, reason, error=True))

    def _drop_message(self) -> None:
        self._partial.clear()
        self._probe = None
        self._frag_kind = 0
        self._frag_buffer = bytearray()
        self._frag_decoder = None

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame if we still may; discard what follows."""
        if self.state == OPEN:
            self._send_frame(0x88, _close_payload(code, reason))
        self.state = CLOSED
        self._drop_message()

    def compact(self) -> None:
        """Release the compression state an idle session does not need (see :meth:`PerMessageDeflate.compact`)."""
        if self._deflate is not None:
            self._deflate.compact(receiving=self._frag_kind != 0 and self._frag_compressed)

    # ------------------------------------------------------------------ sending

    def send_text(self, text: str) -> None:
        data = text.encode()
        if self.state != OPEN:
            raise ProtocolError(_not_open(self.state))
        if self._deflate is not None:
            self._send_frame(0xC1, self._deflate.compress(data))
            return
        n = len(data)
        if n < 126:
            self.write(_TEXT_HEADS[n] + data)
        else:
            self._send_frame(0x81, data)

    def send_bytes(self, data: bytes) -> None:
        if self.state != OPEN:
            raise ProtocolError(_not_open(self.state))
        if self._deflate is not None:
            self._send_frame(0xC2, self._deflate.compress(data))
            return
        n = len(data)
        if n < 126:
            self.write(_BINARY_HEADS[n] + data)
        else:
            self._send_frame(0x82, data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (the state becomes CLOSING until the peer's close frame arrives)."""
        if self.state != OPEN:
            raise ProtocolError(_not_open(self.state))
        if code == 1005 and not reason:
            payload = b""
        else:
            if type(code) is not int or (code not in _VALID_CODES and not 3000 <= code <= 4999):
                raise ProtocolError(f"invalid close code {code!r}")
            payload = _close_payload(code, reason)
            if len(payload) > 125:
                raise ProtocolError("the close reason is longer than 123 bytes in UTF-8")
        self._send_frame(0x88, payload)
        self.state = CLOSING

    def ping(self, payload: bytes = b"") -> None:
        if self.state != OPEN and self.state != CLOSING:
            raise ProtocolError(_not_open(self.state))
        if len(payload) > 125:
            raise ProtocolError("a ping payload is at most 125 bytes")
        self._send_frame(0x89, payload)

    def _send_frame(self, b0: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            self.write(bytes((b0, n)) + data)
            return
        head = struct.pack("!BBH", b0, 126, n) if n < 65536 else struct.pack("!BBQ", b0, 127, n)
        if n <= _COPY_LIMIT:
            self.write(head + data)
        else:
            self.write(head)
            self.write(data)


def _close_payload(code: int, reason: str) -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def _not_open(state: int) -> str:
    return ("the WebSocket is not accepted yet" if state == CONNECTING
            else "the WebSocket is closing" if state == CLOSING else "the WebSocket is closed")

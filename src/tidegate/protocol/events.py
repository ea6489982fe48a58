"""The neutral stream vocabulary shared by every wire protocol.

A connection (HTTP/1.1 or HTTP/2) turns bytes into these events; the ASGI layer never sees the wire format.
Events are small slotted classes: they are made once per request on the hot path.  Those made per request or per
piece of body write their ``__init__`` out: a dataclass's generated one is Python source, which a compiled build
would run interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Preface",
    "ProtocolError",
    "Request",
    "RequestError",
    "StreamReset",
    "Upgrade",
    "Writable",
]

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True, eq=False)
class Request:
    """A request head.  ``headers`` has lower-cased names, in the order and with the duplicates received."""

    method: bytes
    target: bytes
    http_version: str
    headers: Headers
    keep_alive: bool
    expect_continue: bool
    stream_id: int
    #: the lower-cased protocol the client asks to switch to (``Connection: upgrade`` + ``Upgrade: X``)
    upgrade: bytes | None
    #: the client accepts response trailers (``TE: trailers``)
    trailers: bool

    def __init__(self, method: bytes, target: bytes, http_version: str, headers: Headers, keep_alive: bool,
                 expect_continue: bool, stream_id: int = 0, upgrade: bytes | None = None,
                 trailers: bool = False) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.stream_id = stream_id
        self.upgrade = upgrade
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.http_version}>"


@dataclass(slots=True, eq=False)
class Data:
    """A piece of a request body.  HTTP/1.1 joins a run of small pieces that came in one read (a chunked body of
    one-byte chunks) into one bytearray: a read's events cost its bytes, not an event per chunk."""

    data: bytes | bytearray
    stream_id: int

    def __init__(self, data: bytes | bytearray, stream_id: int = 0) -> None:
        self.data = data
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


@dataclass(slots=True, eq=False)
class EndOfMessage:
    """The request body is complete."""

    stream_id: int

    def __init__(self, stream_id: int = 0) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, eq=False)
class Upgrade:
    """The client switches protocols after the last request head; ``trailing`` is what it sent past it."""

    trailing: bytes


@dataclass(slots=True, eq=False)
class RequestError:
    """The peer sent something invalid: answer ``status`` (if nothing was answered yet) and close.  ``head`` is the
    request's method, target and HTTP version when its request line was read (for the access log)."""

    status: int
    detail: str
    head: tuple[bytes, bytes, str] | None = None


@dataclass(slots=True, eq=False)
class Answered:
    """A request the protocol layer answered itself, which reaches no app (HTTP/2: its header list was too large,
    a CONNECT tunnel): for the access log and the metrics.  ``size`` is the response body's length."""

    stream_id: int
    status: int
    size: int
    method: bytes
    target: bytes


@dataclass(slots=True, eq=False)
class Preface:
    """An HTTP/1.1 connection opened with the HTTP/2 connection preface; ``data`` is every byte from it on."""

    data: bytes


@dataclass(slots=True, eq=False)
class StreamReset:
    """A stream ended before its exchange did (reset by the peer, or by us for its fault); ``code`` says why."""

    stream_id: int
    code: int


@dataclass(slots=True, eq=False)
class Writable:
    """Response data that waited for the peer (flow control) has gone out: the stream takes more."""

    stream_id: int


@dataclass(slots=True, eq=False)
class ConnectionClosed:
    """The connection is ending.  ``graceful``: the peer opens no more streams, finish the open ones; else a
    protocol error was answered (already queued to the peer): close once what is queued is written."""

    code: int
    detail: str
    graceful: bool


Event = (Request | Data | EndOfMessage | Upgrade | RequestError | Preface | StreamReset | Writable
         | ConnectionClosed | Answered)


class ProtocolError(Exception):
    """Our side tried to send something the protocol does not allow (raised to the caller, never sent)."""

"""The neutral stream vocabulary shared by every wire protocol.

A connection (HTTP/1.1 or HTTP/2) turns bytes into these events; the ASGI layer never sees the wire format.
Events are small slotted classes: they are made once per request on the hot path.
"""

from __future__ import annotations

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


class Request:
    """A request head.  ``headers`` has lower-cased names, in the order and with the duplicates received."""

    __slots__ = ("expect_continue", "headers", "http_version", "keep_alive", "method", "stream_id", "target",
                 "trailers", "upgrade")

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
        #: the lower-cased protocol the client asks to switch to (``Connection: upgrade`` + ``Upgrade: X``)
        self.upgrade = upgrade
        #: the client accepts response trailers (``TE: trailers``)
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.http_version}>"


class Data:
    """A piece of a request body."""

    __slots__ = ("data", "stream_id")

    def __init__(self, data: bytes, stream_id: int = 0) -> None:
        self.data = data
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


class EndOfMessage:
    """The request body is complete."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int = 0) -> None:
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return "<EndOfMessage>"


class Upgrade:
    """The client switches protocols after the last request head; ``trailing`` is what it sent past it."""

    __slots__ = ("trailing",)

    def __init__(self, trailing: bytes) -> None:
        self.trailing = trailing


class RequestError:
    """The peer sent something invalid: answer ``status`` (if nothing was answered yet) and close."""

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        return f"<RequestError {self.status} {self.detail!r}>"


class Preface:
    """An HTTP/1.1 connection opened with the HTTP/2 connection preface; ``data`` is every byte from it on."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class StreamReset:
    """A stream ended before its exchange did (reset by the peer, or by us for its fault); ``code`` says why."""

    __slots__ = ("code", "stream_id")

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code

    def __repr__(self) -> str:
        return f"<StreamReset {self.stream_id} code={self.code}>"


class Writable:
    """Response data that waited for the peer (flow control) has gone out: the stream takes more."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class ConnectionClosed:
    """The connection is ending.  ``graceful``: the peer opens no more streams, finish the open ones; else a
    protocol error was answered (already queued to the peer): close once what is queued is written."""

    __slots__ = ("code", "detail", "graceful")

    def __init__(self, code: int, detail: str, graceful: bool) -> None:
        self.code = code
        self.detail = detail
        self.graceful = graceful

    def __repr__(self) -> str:
        return f"<ConnectionClosed {self.detail!r} graceful={self.graceful}>"


Event = (Request | Data | EndOfMessage | Upgrade | RequestError | Preface | StreamReset | Writable
         | ConnectionClosed)


class ProtocolError(Exception):
    """Our side tried to send something the protocol does not allow (raised to the caller, never sent)."""

"""The neutral stream vocabulary shared by every wire protocol.

A connection (HTTP/1.1 now, HTTP/2 later) turns bytes into these events; the ASGI layer never sees the wire format.
Events are small slotted classes: they are made once per request on the hot path.
"""

from __future__ import annotations

__all__ = [
    "Data",
    "EndOfMessage",
    "Event",
    "ProtocolError",
    "Request",
    "RequestError",
    "Upgrade",
]

Headers = list[tuple[bytes, bytes]]


class Request:
    """A request head.  ``headers`` has lower-cased names, in the order and with the duplicates received."""

    __slots__ = ("expect_continue", "headers", "http_version", "keep_alive", "method", "stream_id", "target",
                 "upgrade")

    def __init__(self, method: bytes, target: bytes, http_version: str, headers: Headers, keep_alive: bool,
                 expect_continue: bool, stream_id: int = 0, upgrade: bytes | None = None) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.stream_id = stream_id
        #: the lower-cased protocol the client asks to switch to (``Connection: upgrade`` + ``Upgrade: X``)
        self.upgrade = upgrade

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


Event = Request | Data | EndOfMessage | Upgrade | RequestError


class ProtocolError(Exception):
    """Our side tried to send something the protocol does not allow (raised to the caller, never sent)."""

"""The WebSocket exchange: one ASGI WebSocket session, the same over HTTP/1.1 and HTTP/2.

The exchange turns what its driver reports (:meth:`WebSocketExchange.on_message`, :meth:`on_close`) into
``websocket.connect`` / ``websocket.receive`` / ``websocket.disconnect`` messages, and the app's messages into calls
on its :class:`WebSocketStream`.  It validates every message and enforces their order:

    HANDSHAKE --websocket.accept--> OPEN --websocket.close--> CLOSED
    HANDSHAKE --websocket.close--> DENIED (HTTP 403)
    HANDSHAKE --websocket.http.response.start--> DENYING --websocket.http.response.body (last)--> DENIED
    any state --the session ends (client close, failure, lost connection, server shutdown)--> GONE

``receive()`` gives ``websocket.connect`` first, then the messages received in order, then
``websocket.disconnect`` with the close code and reason (1005 when the client's close frame had none, 1006 when
the connection ended without one).  ``send()`` after the session closed raises :class:`ClientDisconnected` (an
``OSError``, ASGI spec 2.4).  When the app fails, :meth:`run` answers 500 if the handshake was not answered yet,
closes with 1011 if it was accepted, and logs the exception once.  Like the HTTP exchange, it awaits only what its
stream provides, so it needs no event loop and is tested with a fake stream.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import Any, Final, Protocol

from ..protocol.events import ProtocolError
from .awaiting import awaiting
from .errors import ASGIError, ClientDisconnected
from .http import Waiter, Waiting, _as_bytes, escape_log
from .types import (
    ASGIApp,
    WebSocketConnectEvent,
    WebSocketDisconnectEvent,
    WebSocketReceiveEvent,
    WebSocketScope,
)

__all__ = ["MAX_QUEUED", "WebSocketExchange", "WebSocketStream"]

logger: Final = logging.getLogger("tidegate.error")

# App-side states.  CLOSED: the app sent websocket.close; GONE: the session ended for another reason.
_HANDSHAKE: Final = 0
_DENYING: Final = 1
_OPEN: Final = 2
_CLOSED: Final = 3
_DENIED: Final = 4
_GONE: Final = 5

#: messages received and not yet taken by the app before reading pauses
MAX_QUEUED: Final = 16

_SEND_TYPES: Final = frozenset({"websocket.accept", "websocket.send", "websocket.close",
                                "websocket.http.response.start", "websocket.http.response.body"})


class WebSocketStream(Protocol):
    """What the exchange needs from the connection carrying it (implemented by each driver)."""

    @property
    def write_paused(self) -> bool: ...
    reading_paused: bool

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None: ...
    def send_text(self, text: str) -> None: ...
    def send_bytes(self, data: bytes) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None: ...
    def send_data(self, data: bytes, end: bool) -> None: ...
    def send_error(self, status: int) -> None: ...
    def abort(self) -> None: ...
    def drain(self) -> Awaitable[None]: ...
    def create_waiter(self) -> Waiter: ...
    def resume_reading(self) -> None: ...


class WebSocketExchange(Waiting):
    """One WebSocket session as the app sees it."""

    __slots__ = ("_connect_pending", "_disconnect", "_more", "_next", "_state", "queue_bytes_limit", "queue_limit",
                 "queued_bytes", "scope", "status", "stream")

    def __init__(self, stream: WebSocketStream, scope: WebSocketScope, queue_bytes_limit: int = 65536,
                 queue_limit: int = MAX_QUEUED) -> None:
        self.stream = stream
        self.scope = scope
        self._waiter = None
        self._state = _HANDSHAKE
        self._connect_pending = True
        # the messages received and not yet taken by the app, oldest first: the next one, then the others (a deque
        # only while more than one waits: an idle session holds none, and one at a time allocates nothing)
        self._next: str | bytes | None = None
        self._more: deque[str | bytes] | None = None
        self._disconnect: WebSocketDisconnectEvent | None = None
        #: size of the messages received and not yet taken by the app
        self.queued_bytes = 0
        self.queue_bytes_limit = queue_bytes_limit
        #: messages that may wait for the app before reading pauses (--ws-max-queue)
        self.queue_limit = queue_limit
        #: how the handshake was answered (101 accepted, 403 denied, ...), 0 while it is not
        self.status = 0

    # ------------------------------------------------------------------ from the driver

    def on_message(self, data: str | bytes) -> None:
        """A text (``str``) or binary (``bytes``) message arrived."""
        if self._next is None:
            self._next = data
        else:
            more = self._more
            if more is None:
                more = self._more = deque()
            more.append(data)
        self.queued_bytes += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def has_messages(self) -> bool:
        """Whether messages wait for the app."""
        return self._next is not None

    @property
    def over_limit(self) -> bool:
        """True while so much waits for the app that reading should pause."""
        more = self._more
        queued = 0 if self._next is None else 1 if more is None else 1 + len(more)
        return queued > self.queue_limit or self.queued_bytes > self.queue_bytes_limit

    def on_close(self, code: int, reason: str = "") -> None:
        """The session ended: the app's next ``receive()`` (after the queued messages) says so; the first call
        counts."""
        if self._disconnect is not None:
            return
        self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        if self._state != _DENIED:
            self._state = _GONE
        self._wake()

    # ------------------------------------------------------------------ to the app

    async def receive(self) -> WebSocketConnectEvent | WebSocketReceiveEvent | WebSocketDisconnectEvent:
        while True:
            data = self._next
            if data is not None:
                more = self._more
                if more:
                    self._next = more.popleft()
                else:
                    self._next = self._more = None
                self.queued_bytes -= len(data)
                stream = self.stream
                if stream.reading_paused and not self.over_limit:
                    stream.resume_reading()
                if isinstance(data, str):  # (type() would not narrow the other branch to bytes)
                    return {"type": "websocket.receive", "text": data}
                return {"type": "websocket.receive", "bytes": data}
            if self._connect_pending:
                self._connect_pending = False
                return {"type": "websocket.connect"}
            disconnect = self._disconnect
            if disconnect is not None:
                return disconnect.copy()
            waiter = self.stream.create_waiter()
            self._waiter = waiter
            await awaiting(waiter)

    async def send(self, message: Any) -> None:
        # what the app sent, checked field by field as read (see HTTPExchange.send)
        try:
            kind = message["type"]
        except (KeyError, TypeError):
            raise ASGIError(f"a message must be a dict with a 'type' key, not {message!r}") from None
        state = self._state
        if kind == "websocket.send" and state == _OPEN:
            stream = self.stream
            text = message.get("text")
            if text is not None:
                if type(text) is not str:
                    raise ASGIError(f"'text' must be a str, not {type(text).__name__}")
                if message.get("bytes") is not None:
                    raise ASGIError("a 'websocket.send' message has 'bytes' or 'text', not both")
                try:
                    stream.send_text(text)
                except UnicodeEncodeError as exc:
                    raise ASGIError(f"'text' cannot be encoded as UTF-8: {exc.reason}") from None
            else:
                data = message.get("bytes")
                if data is None:
                    raise ASGIError("a 'websocket.send' message needs 'bytes' or 'text'")
                if type(data) is not bytes:
                    data = _as_bytes(data)
                stream.send_bytes(data)
            if stream.write_paused:
                await stream.drain()
            return
        if kind not in _SEND_TYPES:
            raise ASGIError(f"unknown message type {kind!r} for a WebSocket")
        if state >= _CLOSED:
            raise ClientDisconnected("the WebSocket is closed")
        if state == _HANDSHAKE:
            # message["type"], not kind, where the type checker must know the message's shape (see asgi.http)
            if message["type"] == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._state = _DENIED
                self.status = 403
                self.stream.send_error(403)
            elif message["type"] == "websocket.http.response.start":
                status = message.get("status")
                if type(status) is not int:
                    raise ASGIError(f"'status' must be an int, not {status!r}")
                try:
                    self.stream.send_head(status, message.get("headers", ()))
                except ProtocolError as exc:
                    raise ASGIError(str(exc)) from None
                self.status = status
                self._state = _DENYING
            else:
                raise ASGIError(f"{kind!r} sent before 'websocket.accept'" if kind == "websocket.send"
                                else f"{kind!r} sent before 'websocket.http.response.start'")
        elif state == _DENYING:
            if kind != "websocket.http.response.body":
                raise ASGIError(f"{kind!r} sent during the denial response")
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = _as_bytes(body)
            more = bool(message.get("more_body", False))
            if not more:
                self._state = _DENIED
            try:
                self.stream.send_data(body, not more)
            except ProtocolError as exc:
                self._state = _DENIED
                self.stream.abort()
                raise ASGIError(str(exc)) from None
            if self.stream.write_paused:
                await self.stream.drain()
        elif kind == "websocket.close":  # _OPEN
            code = message.get("code", 1000)
            reason = message.get("reason") or ""
            if type(code) is not int:
                raise ASGIError(f"'code' must be an int, not {code!r}")
            if type(reason) is not str:
                raise ASGIError(f"'reason' must be a str, not {type(reason).__name__}")
            try:
                self.stream.close(code, reason)
            except ProtocolError as exc:
                raise ASGIError(f"invalid 'websocket.close': {exc}") from None
            self._state = _CLOSED
        elif kind == "websocket.accept":
            raise ASGIError("'websocket.accept' sent twice")
        else:
            raise ASGIError(f"{kind!r} sent after the WebSocket was accepted")

    def _accept(self, message: Any) -> None:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and type(subprotocol) is not str:
            raise ASGIError(f"'subprotocol' must be a str or None, not {subprotocol!r}")
        headers: list[tuple[bytes, bytes]] = []
        try:
            for name, value in message.get("headers") or ():
                headers.append((_as_bytes(name), _as_bytes(value)))
        except (TypeError, ValueError):
            raise ASGIError("'headers' must be an iterable of (name, value) byte string pairs") from None
        try:
            self.stream.accept(subprotocol, headers)
        except ProtocolError as exc:
            raise ASGIError(f"invalid 'websocket.accept': {exc}") from None
        self.status = 101
        if self._state == _HANDSHAKE:  # the session may have ended at once (bytes already received, shutdown)
            self._state = _OPEN

    # ------------------------------------------------------------------ running the app

    async def run(self, app: ASGIApp) -> None:
        """Call the app; turn its failures into a 500 or a 1011 close, logged once."""
        try:
            await awaiting(app(self.scope, self.receive, self.send))
        except ClientDisconnected:
            logger.debug("client disconnected from WebSocket %s", self._target())
            return
        except Exception as exc:
            self._fail("Exception in ASGI application", exc)
            return
        state = self._state
        if state == _HANDSHAKE:
            self._fail("ASGI application returned without accepting or closing the WebSocket", None)
        elif state == _DENYING:
            self._fail("ASGI application returned without completing its denial response", None)
        elif state == _OPEN:
            # the app is done with the session: close it normally
            self._state = _CLOSED
            self.stream.close(1000, "")

    def _fail(self, what: str, exc: BaseException | None) -> None:
        logger.error("%s while handling WebSocket %s", what, self._target(), exc_info=exc)
        state = self._state
        if state == _HANDSHAKE:
            self._state = _DENIED
            self.status = 500
            self.stream.send_error(500)
        elif state == _DENYING:
            self._state = _DENIED
            self.stream.abort()
        elif state == _OPEN:
            self._state = _CLOSED
            self.stream.close(1011, "")

    def _target(self) -> str:
        scope = self.scope
        query = scope.get("query_string", b"")
        return escape_log(scope.get("path", "") + ("?" + query.decode("latin-1") if query else ""))

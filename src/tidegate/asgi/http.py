"""The HTTP exchange: one ASGI request/response, the same for every wire protocol.

The exchange turns stream events (fed by the driver: :meth:`HTTPExchange.on_data`, :meth:`on_end`,
:meth:`on_disconnect`) into ``http.request`` / ``http.disconnect`` messages, and the app's messages into calls on
its :class:`Stream` (send a head, a body piece, a 1xx).  It validates every message and enforces their order:

    START --http.response.start--> STARTED --http.response.body(more_body)--> STREAMING --(last body)--> DONE

A response started with ``trailers: True`` (the ``http.response.trailers`` extension) takes the parallel states
STARTED_T, STREAMING_T, then TRAILERS after its last body, and is DONE with the last ``http.response.trailers``.
``http.response.early_hint`` (103) is sent while the head is not on the wire yet (START, STARTED, STARTED_T).

Anything out of order, of the wrong type or unknown raises :class:`ASGIError` from ``send()``, naming the field.
When the app fails, :meth:`run` answers 500 if nothing was sent yet, else closes the connection, and logs the
exception once with the request line.  ``receive`` and ``send`` are the coroutines ASGI asks for; the only thing
they await is a waiter or a drain that the stream (the driver) provides, so this module needs no event loop and is
tested with a fake stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Generator, Iterable, Mapping
from typing import Any, Final, Protocol

from mypy_extensions import mypyc_attr

from ..protocol.events import ProtocolError, Request
from .awaiting import awaiting
from .errors import ASGIError, ClientDisconnected
from .scope import ConnectionInfo, http_scope
from .types import (
    ASGIApp,
    HTTPDisconnectEvent,
    HTTPRequestEvent,
    HTTPScope,
)

__all__ = ["ASGIApp", "HTTPExchange", "Message", "Stream", "escape_log"]

logger: Final = logging.getLogger("tidegate.error")
access_logger: Final = logging.getLogger("tidegate.access")

#: an untyped message, for code not yet on :mod:`tidegate.asgi.types` (the runtime's lifespan runner)
Message = dict[str, Any]

# Response states.  _GONE: the response cannot be completed (the client disconnected before it was, or it was cut);
# _REFUSED: the server answered the request itself (a body over the limit, a stalled body) and the app's response
# is not wanted.  _STARTED_T, _STREAMING_T and _TRAILERS mirror _STARTED, _STREAMING for a response with trailers,
# so the plain path never tests for them.
_START: Final = 0
_STARTED: Final = 1
_STREAMING: Final = 2
_STARTED_T: Final = 3
_STREAMING_T: Final = 4
_TRAILERS: Final = 5
_DONE: Final = 6
_GONE: Final = 7
_REFUSED: Final = 8
_NO_LIMIT: Final = 1 << 62
#: Fields a trailer section may not carry (RFC 9110 §6.5.1): framing, routing, connection control, authentication
#: and cookies, caching and conditional controls, and what says how to process the content.
FORBIDDEN_TRAILERS: Final = frozenset({
    b"content-length", b"transfer-encoding", b"trailer", b"te", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"upgrade", b"authorization", b"proxy-authorization", b"www-authenticate",
    b"proxy-authenticate", b"authentication-info", b"set-cookie", b"cookie", b"content-type", b"content-encoding",
    b"content-range", b"content-location", b"cache-control", b"expires", b"pragma", b"age", b"date", b"location",
    b"retry-after", b"vary", b"expect", b"max-forwards", b"range", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range",
})
#: body pieces smaller than this are joined while they wait for the app (see HTTPExchange.on_data)
_SMALL_PIECE: Final = 1024



class Waiter(Protocol):
    def done(self) -> bool: ...
    def set_result(self, result: None) -> None: ...
    def __await__(self) -> Generator[Any, None, Any]: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the HTTP/3 driver's module is not compiled
class Stream:
    """What the exchange needs from the connection carrying it: each driver's stream is one.  A base class rather
    than a Protocol, so that the compiled exchange calls a compiled driver's methods directly, not by name."""

    __slots__ = ("reading_paused", "write_paused")

    #: the driver stopped reading for this exchange (its buffered body is at the limit); resume_reading() resumes
    reading_paused: bool
    #: what was sent is not all written yet: drain() waits for it
    write_paused: bool

    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def send_data(self, data: bytes, end: bool) -> None:
        raise NotImplementedError

    def response_done(self) -> None:
        raise NotImplementedError

    def response_cut(self) -> None:
        raise NotImplementedError

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def send_error(self, status: int) -> None:
        raise NotImplementedError

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def send_file(self, fd: int, offset: int, count: int, end: bool) -> Awaitable[None]:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def drain(self) -> Awaitable[None]:
        raise NotImplementedError

    def create_waiter(self) -> Waiter:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError


class Waiting:
    """What both exchanges share: the one waiter an app's ``receive()`` sleeps on, woken by the driver's news."""

    __slots__ = ("_waiter",)
    _waiter: Waiter | None  # set by each exchange's __init__ (no super() call per request)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class HTTPExchange(Waiting):
    """One request and its response."""

    __slots__ = (
        "_body_left",
        "_chunks",
        "_end_delivered",
        "_eof",
        "_expect_continue",
        "_info",
        "_more_body",
        "_request",
        "_scope",
        "_state",
        "_trailers",
        "buffered",
        "bytes_sent",
        "status",
        "stream",
    )

    def __init__(self, stream: Stream, scope: HTTPScope | None = None, expect_continue: bool = False,
                 body_limit: int = 0, request: Request | None = None, info: ConnectionInfo | None = None) -> None:
        """A ``scope`` made already (and whether the client waits for ``100 Continue``), or the ``request`` that
        came on the connection ``info`` describes: the drivers' way, its scope made when it is first asked for (see
        :attr:`scope`) and the rest read from the request."""
        self.stream = stream
        self._scope = scope
        self._request = request
        self._info = info
        if request is not None:
            expect_continue = request.expect_continue
        self._waiter = None
        self._state = _START
        # request body bytes still allowed (--limit-request-body; 0: no limit)
        self._body_left = body_limit or _NO_LIMIT
        self._chunks: list[bytes | bytearray] = []
        self._more_body = True
        self._end_delivered = False
        self._eof = False
        self._expect_continue = expect_continue
        #: request body bytes received and not yet handed to the app
        self.buffered = 0
        #: response status and body bytes, for the access log
        self.status = 0
        self.bytes_sent = 0

    @property
    def scope(self) -> HTTPScope:
        """The request's scope.  Made from the request when the app starts (or when something else asks first),
        not when the request is parsed: a read that brings a thousand requests parses them all before any app runs,
        and their scopes, made then, would be a thousand dicts that leave the CPU's caches before they are used."""
        scope = self._scope
        if scope is None:
            request = self._request
            info = self._info
            assert request is not None and info is not None, "an exchange has a scope or a request"
            scope = self._scope = http_scope(request, info)
        return scope

    # ------------------------------------------------------------------ from the driver

    def on_data(self, data: bytes | bytearray) -> bool:
        """A piece of the request body; False (the piece is dropped) when the body would pass its size limit: the
        driver then refuses the request (413) and tells the app it is gone (:meth:`on_disconnect`)."""
        size = len(data)
        left = self._body_left - size
        if left < 0:
            return False
        self._body_left = left
        chunks = self._chunks
        if size < _SMALL_PIECE and chunks:
            # small pieces (a body sent a byte at a time) are joined: the buffer costs its bytes, not a piece each
            last = chunks[-1]
            if type(last) is bytearray:
                last += data
            elif len(last) < _SMALL_PIECE:
                chunks[-1] = bytearray(last) + data
            else:
                chunks.append(data)
        else:
            chunks.append(data)
        self.buffered += size
        self._wake()
        return True

    def on_end(self) -> None:
        self._more_body = False
        self._wake()

    def reopen_body(self) -> None:
        """The end of the body was announced before its bytes (the parser skips an upgrade request's body)."""
        self._more_body = True
        self._wake()

    def on_eof(self) -> None:
        """The client sends nothing more: a ``receive()`` past what it sent reports it gone (and closes)."""
        self._eof = True
        self._wake()

    def on_disconnect(self) -> None:
        if self._state < _DONE:
            self._state = _GONE
        self._wake()

    def on_refused(self) -> None:
        """The driver answered the request itself (and recorded it): the app hears ``http.disconnect``, its
        ``send()`` calls fail quietly."""
        if self._state < _DONE:
            self._state = _REFUSED
        self._wake()

    @property
    def request_complete(self) -> bool:
        return not self._more_body


    # ------------------------------------------------------------------ to the app

    async def receive(self) -> HTTPRequestEvent | HTTPDisconnectEvent:
        if self._expect_continue:
            # the app's first receive() is its go-ahead: 100 Continue, if the client still waits for one
            self._expect_continue = False
            if self._state == _START and self._more_body and not self._chunks and not self._eof:
                self.stream.send_informational(100, [])
        while True:
            chunks = self._chunks
            if chunks:
                body = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                stream = self.stream
                if stream.reading_paused:
                    stream.resume_reading()
                more = self._more_body
                if not more:
                    self._end_delivered = True
                return {"type": "http.request", "body": body, "more_body": more}
            if not self._more_body and not self._end_delivered:
                self._end_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._state >= _DONE:
                return {"type": "http.disconnect"}
            if self._eof:
                # a browser tab closed: the app waits for more from a client that will say nothing more
                self._state = _GONE
                self.stream.abort()
                return {"type": "http.disconnect"}
            waiter = self.stream.create_waiter()
            self._waiter = waiter
            await awaiting(waiter)

    async def send(self, message: Any) -> None:
        # ``message`` is what the app sent (ASGISendEvent when it is right): each field is checked where it is read,
        # and its values are typed Any so that the compiled build checks exactly what the pure one does.  Read as a
        # dict: the compiled build then looks its fields up directly, not through a method found by name.
        msg: dict[str, Any] = message if type(message) is dict else _as_message(message)
        try:
            kind = msg["type"]
        except KeyError:
            raise ASGIError(f"a message must be a dict with a 'type' key, not {message!r}") from None
        state = self._state
        if kind == "http.response.body" and (state == _STREAMING or state == _STARTED):
            body = msg.get("body", b"")
            if type(body) is not bytes:
                body = _as_bytes(body, "'body'")
            stream = self.stream
            more = msg.get("more_body", False)
            if more and not body and state == _STREAMING:
                return  # nothing to send (the head went out with the first piece)
            self._state = _STREAMING if more else _DONE
            self.bytes_sent += len(body)
            try:
                stream.send_data(body, not more)
            except ProtocolError:
                stream.abort()
                raise
            if more:  # the head goes out at once, even before the first event
                if stream.write_paused:
                    await stream.drain()
                return
            stream.response_done()
            self._wake()
            if stream.write_paused:
                await self._drain_complete()
            return
        if state >= _GONE:
            raise ClientDisconnected("the client has disconnected")
        if kind == "http.response.start":
            if state != _START:
                raise ASGIError("'http.response.start' sent twice")
            status = msg.get("status")
            if type(status) is not int:
                raise ASGIError(f"'status' must be an int, not {status!r}")
            self.stream.send_head(status, msg.get("headers", ()))
            self.status = status
            self._state = _STARTED_T if msg.get("trailers") else _STARTED
        elif kind == "http.response.pathsend" or kind == "http.response.zerocopysend":
            await self._send_file(msg, kind, state)
        elif kind == "http.response.body" and (state == _STARTED_T or state == _STREAMING_T):
            await self._send_body_before_trailers(msg, state)
        elif kind == "http.response.trailers":
            await self._send_trailers(msg, state)
        elif kind == "http.response.body":
            raise ASGIError("'http.response.body' sent before 'http.response.start'" if state == _START
                            else "'http.response.body' sent after the response was complete")
        elif kind == "http.response.early_hint":
            # asgiref extensions.rst: any time before the final body, the response start included (its head is
            # held until the first body); once a body piece put the head on the wire, a hint can no longer go
            # before it and is ignored, as the spec lets a server do
            if state >= _DONE:
                raise ASGIError(f"{kind!r} sent after the response was complete")
            links = msg.get("links", ())
            try:
                hints = [(b"link", _as_bytes(link, "'links' items")) for link in links]
            except TypeError:
                raise ASGIError(f"'links' must be an iterable of bytes, not {links!r}") from None
            if state == _START or state == _STARTED or state == _STARTED_T:
                self.stream.send_informational(103, hints)
        else:
            raise ASGIError(f"unknown message type {kind!r} for an HTTP connection")

    async def _send_file(self, message: Any, kind: str, state: int) -> None:
        """``http.response.pathsend`` (a whole file by its path, the last of the body) and
        ``http.response.zerocopysend`` (a file's bytes from an open file or descriptor; ``offset`` and ``count``
        optional, ``more_body`` as for a body): the stream sends the bytes without reading them into Python where it
        can (``sendfile``), else in pieces, with back-pressure either way."""
        if state != _STARTED and state != _STREAMING:
            raise ASGIError(f"{kind!r} sent before 'http.response.start'" if state == _START
                            else f"{kind!r} in a response with trailers is not supported" if state < _DONE
                            else f"{kind!r} sent after the response was complete")
        if kind == "http.response.pathsend":
            path = message.get("path")
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ASGIError(f"'path' must be an absolute path (a str), not {path!r}")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                await self._send_file_bytes(fd, 0, size, False)
            finally:
                os.close(fd)
            return
        file = message.get("file")
        if isinstance(file, int) and not isinstance(file, bool):
            fd = file
        else:
            fileno = getattr(file, "fileno", None)
            if fileno is None:
                raise ASGIError(f"'file' must be an open file or a file descriptor, not {file!r}")
            fd = fileno()
        given_offset = _whole(message.get("offset"), "offset")
        given_count = _whole(message.get("count"), "count")
        more = bool(message.get("more_body", False))
        advance = given_offset is None  # from the file's position, which moves past what was sent
        offset = os.lseek(fd, 0, os.SEEK_CUR) if given_offset is None else given_offset
        count = max(os.fstat(fd).st_size - offset, 0) if given_count is None else given_count
        await self._send_file_bytes(fd, offset, count, more)
        if advance:
            os.lseek(fd, offset + count, os.SEEK_SET)

    async def _send_file_bytes(self, fd: int, offset: int, count: int, more: bool) -> None:
        self._state = _STREAMING
        self.bytes_sent += count
        stream = self.stream
        try:
            await stream.send_file(fd, offset, count, not more)
        except ProtocolError:
            stream.abort()
            raise
        if more:
            return
        if self._state != _STREAMING:
            raise ClientDisconnected("the client has disconnected")
        self._state = _DONE
        stream.response_done()
        self._wake()
        if stream.write_paused:
            await self._drain_complete()

    async def _send_body_before_trailers(self, message: Any, state: int) -> None:
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = _as_bytes(body, "'body'")
        more = message.get("more_body", False)
        self._state = _STREAMING_T if more else _TRAILERS
        self.bytes_sent += len(body)
        stream = self.stream
        if body or state == _STARTED_T:
            try:
                stream.send_data(body, False)  # the trailers end the stream
            except ProtocolError:
                stream.abort()
                raise
        if not more:
            self._trailers: list[tuple[bytes, bytes]] = []
        if stream.write_paused:
            await stream.drain()

    async def _send_trailers(self, message: Any, state: int) -> None:
        if state != _TRAILERS:
            raise ASGIError("'http.response.trailers' sent before the last body" if state in (_STARTED_T, _STREAMING_T)
                            else "'http.response.trailers' needs 'trailers': True in 'http.response.start'"
                            if state < _DONE else "'http.response.trailers' sent after the response was complete")
        headers = message.get("headers", ())
        try:
            self._trailers.extend((_as_bytes(n, "trailer names"), _as_bytes(v, "trailer values")) for n, v in headers)
        except (TypeError, ValueError):
            raise ASGIError(f"'headers' must be an iterable of [name, value] byte strings, not {headers!r}") from None
        for name, _ in self._trailers:
            if name.lower() in FORBIDDEN_TRAILERS or name[:1] == b":":
                self._state = _GONE
                self.stream.abort()  # the body cannot end well: the client sees it cut
                raise ASGIError(f"{name!r} may not be sent in trailers (RFC 9110 §6.5.1): the response was cut")
        if message.get("more_trailers", False):
            return
        self._state = _DONE
        # sent only to a client that said it takes them (TE: trailers); the body ends either way
        trailers = self._trailers if "http.response.trailers" in self.scope["extensions"] else []
        stream = self.stream
        try:
            stream.send_trailers(trailers)
        except ProtocolError:
            stream.abort()
            raise
        stream.response_done()
        self._wake()
        if stream.write_paused:
            await self._drain_complete()

    async def _drain_complete(self) -> None:
        """The response is complete: wait while the client takes it (back-pressure), but a client gone meanwhile
        is no failure of the last ``send()`` -- the app's code after it (background tasks, cleanup) still runs."""
        try:
            await self.stream.drain()
        except ClientDisconnected:
            pass

    # ------------------------------------------------------------------ running the app

    async def run(self, app: ASGIApp) -> None:
        """Call the app; turn its failures into a 500 or a closed connection, logged once.  Every exchange ends
        recorded once: complete (``response_done``), refused by the driver, or else cut (``response_cut``)."""
        try:
            await awaiting(app(self.scope, self.receive, self.send))
        except ClientDisconnected:
            logger.debug("client disconnected while %s was being answered", self._request_line())
        except Exception as exc:
            self._fail("Exception in ASGI application", exc)
        else:
            if self._state == _START:
                self._fail("ASGI application returned without starting a response", None)
            elif self._state < _DONE:
                self._fail("ASGI application returned without completing the response", None)
        finally:
            state = self._state
            if state != _DONE and state != _REFUSED:
                self._state = _REFUSED  # recorded once, whatever the app does after (cancelled at shutdown)
                self.stream.response_cut()

    def _fail(self, what: str, exc: BaseException | None) -> None:
        logger.error("%s while handling %s", what, self._request_line(), exc_info=exc)
        if self._state >= _DONE:
            # complete (its connection may already carry the next request) or gone: nothing to answer or close
            return
        if self._state == _START or self._state == _STARTED or self._state == _STARTED_T:
            # nothing is on the wire yet (a started response's head waits for its first body): answer 500
            self._state = _DONE
            self.status = 500
            self.stream.send_error(500)
        else:
            self._state = _GONE
            self.stream.abort()
        self._wake()

    def _request_line(self) -> str:
        scope = self.scope
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        target = path + ("?" + query.decode("latin-1") if query else "")
        return escape_log(f"{scope.get('method', '?')} {target}")


def _as_message(message: object) -> dict[str, Any]:
    """A message the app sent that is not a dict: a copy of it if it is a mapping, else refused."""
    if isinstance(message, Mapping):
        return dict(message)
    raise ASGIError(f"a message must be a dict with a 'type' key, not {message!r}")


def _whole(value: object, field: str) -> int | None:
    """An optional non-negative int field."""
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ASGIError(f"{field!r} must be a non-negative int, not {value!r}")
    return value


def _as_bytes(value: object, field: str = "") -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if field:
        raise ASGIError(f"{field} must be bytes, not {type(value).__name__}")
    raise ASGIError(f"expected bytes, not {type(value).__name__}")


def escape_log(text: str) -> str:
    """Escape control characters so request data cannot forge log lines (CVE-2020-7694)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

"""ASGI scopes and messages as typed dictionaries (asgiref www.rst, lifespan.rst, extensions.rst; spec 2.4).

Only types: a ``TypedDict`` is a plain ``dict`` at run time, so the exchanges build and read these at no cost.
Keys the spec makes optional are optional here too (a private ``…Base`` class holds the required ones, the way
``NotRequired`` is spelt before Python 3.11).  The scopes are the ones this server builds, so ``headers`` is the
list it made and ``state`` is always there.

The application itself is typed loosely (:data:`ASGIApp`): frameworks type their ``scope`` as a
``MutableMapping``, which a ``TypedDict`` is not, so a stricter type would refuse Starlette or Django.  What the
server hands the application is typed exactly: :data:`Scope`, :data:`Receive`, :data:`Send`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypedDict

__all__ = [
    "ASGIApp",
    "ASGIReceiveEvent",
    "ASGISendEvent",
    "ASGIVersions",
    "HTTPDisconnectEvent",
    "HTTPRequestEvent",
    "HTTPResponseBodyEvent",
    "HTTPResponseEarlyHintEvent",
    "HTTPResponsePathsendEvent",
    "HTTPResponseStartEvent",
    "HTTPResponseTrailersEvent",
    "HTTPResponseZerocopysendEvent",
    "HTTPScope",
    "Headers",
    "LifespanScope",
    "LifespanShutdownCompleteEvent",
    "LifespanShutdownEvent",
    "LifespanShutdownFailedEvent",
    "LifespanStartupCompleteEvent",
    "LifespanStartupEvent",
    "LifespanStartupFailedEvent",
    "Receive",
    "Scope",
    "Send",
    "WebSocketAcceptEvent",
    "WebSocketCloseEvent",
    "WebSocketConnectEvent",
    "WebSocketDisconnectEvent",
    "WebSocketReceiveEvent",
    "WebSocketResponseBodyEvent",
    "WebSocketResponseStartEvent",
    "WebSocketScope",
    "WebSocketSendEvent",
]

Headers = Iterable[tuple[bytes, bytes]]


# ---------------------------------------------------------------------------------------------------- scopes

class ASGIVersions(TypedDict):
    version: str
    spec_version: str


class _ConnectionScope(TypedDict):
    """What the ``http`` and ``websocket`` scopes share."""

    asgi: ASGIVersions
    http_version: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    state: dict[str, Any]
    extensions: dict[str, dict[str, object]]


class HTTPScope(_ConnectionScope):
    type: Literal["http"]
    method: str


class WebSocketScope(_ConnectionScope):
    type: Literal["websocket"]
    subprotocols: list[str]


class _LifespanScopeBase(TypedDict):
    type: Literal["lifespan"]
    asgi: ASGIVersions


class LifespanScope(_LifespanScopeBase, total=False):
    state: dict[str, Any]


Scope = HTTPScope | WebSocketScope | LifespanScope


# ---------------------------------------------------------------------------------------------------- http

class HTTPRequestEvent(TypedDict):
    type: Literal["http.request"]
    body: bytes
    more_body: bool


class HTTPDisconnectEvent(TypedDict):
    type: Literal["http.disconnect"]


class _HTTPResponseStartBase(TypedDict):
    type: Literal["http.response.start"]
    status: int


class HTTPResponseStartEvent(_HTTPResponseStartBase, total=False):
    headers: Headers
    trailers: bool


class _HTTPResponseBodyBase(TypedDict):
    type: Literal["http.response.body"]


class HTTPResponseBodyEvent(_HTTPResponseBodyBase, total=False):
    body: bytes
    more_body: bool


class _HTTPResponseTrailersBase(TypedDict):
    type: Literal["http.response.trailers"]


class HTTPResponseTrailersEvent(_HTTPResponseTrailersBase, total=False):
    headers: Headers
    more_trailers: bool


class HTTPResponseEarlyHintEvent(TypedDict):
    type: Literal["http.response.early_hint"]
    links: Iterable[bytes]


class HTTPResponsePathsendEvent(TypedDict):
    type: Literal["http.response.pathsend"]
    path: str


class _HTTPResponseZerocopysendBase(TypedDict):
    type: Literal["http.response.zerocopysend"]
    file: Any  # an open file (with fileno()) or a file descriptor


class HTTPResponseZerocopysendEvent(_HTTPResponseZerocopysendBase, total=False):
    offset: int
    count: int
    more_body: bool


# ---------------------------------------------------------------------------------------------------- websocket

class WebSocketConnectEvent(TypedDict):
    type: Literal["websocket.connect"]


class _WebSocketReceiveBase(TypedDict):
    type: Literal["websocket.receive"]


class WebSocketReceiveEvent(_WebSocketReceiveBase, total=False):
    bytes: bytes | None
    text: str | None


class WebSocketDisconnectEvent(TypedDict):
    type: Literal["websocket.disconnect"]
    code: int
    reason: str


class _WebSocketAcceptBase(TypedDict):
    type: Literal["websocket.accept"]


class WebSocketAcceptEvent(_WebSocketAcceptBase, total=False):
    subprotocol: str | None
    headers: Headers


class _WebSocketSendBase(TypedDict):
    type: Literal["websocket.send"]


class WebSocketSendEvent(_WebSocketSendBase, total=False):
    bytes: bytes | None
    text: str | None


class _WebSocketCloseBase(TypedDict):
    type: Literal["websocket.close"]


class WebSocketCloseEvent(_WebSocketCloseBase, total=False):
    code: int
    reason: str | None


class _WebSocketResponseStartBase(TypedDict):
    type: Literal["websocket.http.response.start"]
    status: int


class WebSocketResponseStartEvent(_WebSocketResponseStartBase, total=False):
    headers: Headers


class _WebSocketResponseBodyBase(TypedDict):
    type: Literal["websocket.http.response.body"]


class WebSocketResponseBodyEvent(_WebSocketResponseBodyBase, total=False):
    body: bytes
    more_body: bool


# ---------------------------------------------------------------------------------------------------- lifespan

class LifespanStartupEvent(TypedDict):
    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    type: Literal["lifespan.shutdown"]


class LifespanStartupCompleteEvent(TypedDict):
    type: Literal["lifespan.startup.complete"]


class _LifespanStartupFailedBase(TypedDict):
    type: Literal["lifespan.startup.failed"]


class LifespanStartupFailedEvent(_LifespanStartupFailedBase, total=False):
    message: str


class LifespanShutdownCompleteEvent(TypedDict):
    type: Literal["lifespan.shutdown.complete"]


class _LifespanShutdownFailedBase(TypedDict):
    type: Literal["lifespan.shutdown.failed"]


class LifespanShutdownFailedEvent(_LifespanShutdownFailedBase, total=False):
    message: str


# ---------------------------------------------------------------------------------------------------- callables

ASGIReceiveEvent = (HTTPRequestEvent | HTTPDisconnectEvent | WebSocketConnectEvent | WebSocketReceiveEvent
                    | WebSocketDisconnectEvent | LifespanStartupEvent | LifespanShutdownEvent)

ASGISendEvent = (HTTPResponseStartEvent | HTTPResponseBodyEvent | HTTPResponseTrailersEvent
                 | HTTPResponseEarlyHintEvent | HTTPResponsePathsendEvent | HTTPResponseZerocopysendEvent
                 | WebSocketAcceptEvent | WebSocketSendEvent | WebSocketCloseEvent
                 | WebSocketResponseStartEvent | WebSocketResponseBodyEvent | LifespanStartupCompleteEvent
                 | LifespanStartupFailedEvent | LifespanShutdownCompleteEvent | LifespanShutdownFailedEvent)

Receive = Callable[[], Awaitable[ASGIReceiveEvent]]
Send = Callable[[ASGISendEvent], Awaitable[None]]

#: An ASGI 3 application, ``app(scope, receive, send)``, however it types its arguments (see the module text).
ASGIApp = Callable[..., Awaitable[None]]

"""``--log-level trace``: every ASGI message between the server and the app, one line each, on the ``tidegate.asgi``
logger at level TRACE.

The server puts :class:`TraceMiddleware` around the app only when that logger is enabled for TRACE as it starts
(:func:`tracing`), so a server that does not trace runs no code of this module.  A line names the connection's
client, the scope (``"GET /path?query"``, ``"WebSocket /path"`` or ``lifespan``) and the scope's number, then what
happened::

    127.0.0.1:50412 - "GET /items?page=2" #3 scope {'type': 'http', 'http_version': '1.1', ...}
    127.0.0.1:50412 - "GET /items?page=2" #3 receive {'type': 'http.request', 'body': <0 bytes>, 'more_body': False}
    127.0.0.1:50412 - "GET /items?page=2" #3 send {'type': 'http.response.start', 'status': 200, 'headers': [...]}
    127.0.0.1:50412 - "GET /items?page=2" #3 send {'type': 'http.response.body', 'body': <1024 bytes>}
    127.0.0.1:50412 - "GET /items?page=2" #3 app returned

Bodies and WebSocket payloads are given by their size only, the values of the headers that carry credentials
(``authorization``, ``proxy-authorization``, ``cookie``, ``set-cookie``) are hidden, and request data is escaped
(``repr`` for the messages, :func:`~tidegate.asgi.http.escape_log` for the path), so that a client cannot forge log
lines.  The app's receive and send callables are wrapped, never replaced: what the app sends reaches the server
unchanged, and an iterable of headers that is not a list or tuple is not iterated here (only its type is shown).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

from ..asgi.http import escape_log
from ..asgi.types import ASGIApp
from ..log import TRACE

__all__ = ["TraceMiddleware", "logger", "message_text", "tracing"]

logger = logging.getLogger("tidegate.asgi")

#: header fields whose values are not logged
HIDDEN = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})


def tracing() -> bool:
    """Whether the ``tidegate.asgi`` logger records TRACE now (``--log-level trace``, or a ``--log-config`` that
    sets that logger's level to 5)."""
    return logger.isEnabledFor(TRACE)


def _headers_text(headers: Any) -> str:
    if not isinstance(headers, (list, tuple)):
        return f"<{type(headers).__name__}>"
    parts = []
    for pair in headers:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            name = pair[0]
            key = name.lower() if isinstance(name, bytes) else name.lower().encode() if isinstance(name, str) else b""
            value = "<hidden>" if key in HIDDEN else repr(pair[1])
            parts.append(f"({name!r}, {value})")
        else:
            parts.append(repr(pair))
    return f"[{', '.join(parts)}]"


def _value_text(key: Any, value: Any) -> str:
    if key in ("body", "bytes") and isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if key == "text" and isinstance(value, str):
        return f"<{len(value)} chars>"
    if key == "headers":
        return _headers_text(value)
    if key == "state" and isinstance(value, Mapping):
        return f"<{len(value)} items>"
    if key == "extensions" and isinstance(value, Mapping):
        return repr(sorted(map(str, value)))
    return repr(value)


def message_text(message: Any) -> str:
    """A message (or scope) for a log line: ``{'type': 'http.response.body', 'body': <1024 bytes>, ...}``."""
    if not isinstance(message, Mapping):
        return repr(message)
    return "{" + ", ".join(f"{key!r}: {_value_text(key, value)}" for key, value in message.items()) + "}"


def _label(scope: Any, number: int) -> str:
    """What every line of a scope begins with: its client, its request and its number."""
    if not isinstance(scope, Mapping):
        return f"#{number}"
    kind = scope.get("type")
    if kind == "lifespan":
        return f"lifespan #{number}"
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if isinstance(client, (list, tuple)) and len(client) >= 2 else "-"
    path = str(scope.get("path", ""))
    query = scope.get("query_string")
    if query:
        path += "?" + (query.decode("latin-1") if isinstance(query, bytes) else str(query))
    what = "WebSocket" if kind == "websocket" else str(scope.get("method", kind))
    return escape_log(f'{who} - "{what} {path}" #{number}')


class TraceMiddleware:
    """Log every message the app receives and sends, the scope it is called with and how it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._numbers = itertools.count(1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        label = _label(scope, next(self._numbers))
        log = logger.log
        log(TRACE, "%s scope %s", label, message_text(scope))

        async def traced_receive() -> Any:
            message = await receive()
            log(TRACE, "%s receive %s", label, message_text(message))
            return message

        async def traced_send(message: Any) -> None:
            log(TRACE, "%s send %s", label, message_text(message))
            await send(message)

        try:
            await self.app(scope, traced_receive, traced_send)
        except BaseException as exc:
            detail = escape_log(str(exc))
            log(TRACE, "%s app raised %s%s", label, type(exc).__name__, f": {detail}" if detail else "")
            raise
        log(TRACE, "%s app returned", label)

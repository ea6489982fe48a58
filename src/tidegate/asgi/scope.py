"""Request head + connection facts → the ASGI ``http`` (and ``websocket``) scope, per asgiref's www.rst."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote_to_bytes

from ..protocol.events import Request
from .types import ASGIVersions, HTTPScope, WebSocketScope

__all__ = ["ConnectionInfo", "http_scope", "split_target", "websocket_scope"]

ASGI_VERSION: Final[ASGIVersions] = {"version": "3.0", "spec_version": "2.4"}

#: a scope's ``extensions``: each extension's name and its (free-form) fields
Extensions = dict[str, dict[str, object]]

_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                           "CONNECT")}


class ConnectionInfo:
    """What every request on one connection shares: addresses, scheme, mount point, lifespan state."""

    __slots__ = ("client", "extensions", "http_extensions", "root_path", "root_path_bytes", "scheme", "server",
                 "state")

    def __init__(self, client: tuple[str, int] | None, server: tuple[str, int | None] | None, scheme: str,
                 root_path: str = "", state: dict[str, Any] | None = None,
                 extensions: Extensions | None = None) -> None:
        self.client = client
        self.server = server
        self.scheme = scheme
        self.root_path = root_path
        self.root_path_bytes = root_path.encode("utf-8")
        self.state = state if state is not None else {}
        self.extensions = extensions if extensions is not None else {}
        #: ``extensions`` of an http scope: made at the first request (see :meth:`make_http_extensions`)
        self.http_extensions: Extensions | None = None

    def make_http_extensions(self, trailers: bool) -> Extensions:
        """``extensions`` plus the HTTP response extensions: early hints, files by path and by descriptor
        (``pathsend``, ``zerocopysend``) always, trailers for a client that takes them (``TE: trailers``)."""
        extensions: Extensions = {**self.extensions, "http.response.early_hint": {}, "http.response.pathsend": {},
                                  "http.response.zerocopysend": {}}
        if not trailers:
            self.http_extensions = extensions
            return extensions
        return {**extensions, "http.response.trailers": {}}


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target → (raw path, query string).  Absolute-form targets (RFC 9112 §3.2.2) keep their path; a
    fragment (which a request target cannot carry, but some clients send) is dropped."""
    if target[:1] != b"/":
        if target == b"*":
            return b"*", b""
        scheme_end = target.find(b"://")
        if scheme_end > 0:
            slash = target.find(b"/", scheme_end + 3)
            question = target.find(b"?", scheme_end + 3)
            if slash < 0 or (0 <= question < slash):
                target = b"/" + (target[question:] if question >= 0 else b"")
            else:
                target = target[slash:]
    fragment = target.find(b"#")
    if fragment >= 0:
        target = target[:fragment]
    question = target.find(b"?")
    if question < 0:
        return target, b""
    return target[:question], target[question + 1:]


# Byte tests below use int needles (``63 in target`` for b"?"): with a bytes needle, bytes.__contains__ first tries
# it as an int and discards the TypeError, which costs ten times more.
_QUESTION: Final = 0x3F  # "?"
_HASH: Final = 0x23  # "#"
_PERCENT: Final = 0x25  # "%"


def decode_path(raw_path: bytes) -> str:
    if _PERCENT not in raw_path and raw_path.isascii():
        return raw_path.decode("ascii")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


#: an http scope's keys, in the order apps have always seen them; every value but the first two is set per request
_HTTP_SCOPE: Final[HTTPScope] = {
    "type": "http", "asgi": ASGI_VERSION, "http_version": "", "method": "", "scheme": "", "path": "", "raw_path": b"",
    "query_string": b"", "root_path": "", "headers": [], "client": None, "server": None, "state": {},
    "extensions": {},
}


def http_scope(request: Request, info: ConnectionInfo) -> HTTPScope:
    target = request.target
    if target[:1] == b"/" and _QUESTION not in target and _HASH not in target:
        raw_path, query = target, b""
    else:
        raw_path, query = split_target(target)
    if _PERCENT not in raw_path and raw_path.isascii():
        path = raw_path.decode("ascii")
    else:
        path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
    method = _METHODS.get(request.method) or request.method.decode("ascii")
    extensions = info.http_extensions
    if extensions is None or request.trailers:
        extensions = info.make_http_extensions(request.trailers)
    root = info.root_path
    scope = _HTTP_SCOPE.copy()  # its keys, in order: a copy and values set, not fourteen keys inserted
    scope["http_version"] = request.http_version
    scope["method"] = method
    scope["scheme"] = info.scheme
    scope["path"] = root + path if root else path
    scope["raw_path"] = info.root_path_bytes + raw_path if root else raw_path
    scope["query_string"] = query
    scope["root_path"] = root
    scope["headers"] = request.headers
    scope["client"] = info.client
    scope["server"] = info.server
    scope["state"] = info.state.copy()
    scope["extensions"] = extensions
    return scope


def websocket_scope(request: Request, info: ConnectionInfo) -> WebSocketScope:
    """The ``websocket`` scope for a handshake request (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT).

    ``extensions`` advertises the denial response (asgiref extensions.rst): the app may answer the handshake with
    an HTTP response of its own.  Built here rather than from the http scope: the session keeps its scope as long
    as it is open, so it holds nothing an http scope would and it would not (the response extensions).
    """
    raw_path, query = split_target(request.target)  # (http_scope inlines both for its common case: per request)
    path = decode_path(raw_path)
    subprotocols: list[str] = []
    for name, value in request.headers:
        if name == b"sec-websocket-protocol":
            subprotocols += [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]
    root = info.root_path
    return {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version,
        "scheme": "wss" if info.scheme == "https" else "ws",
        "path": root + path if root else path,
        "raw_path": info.root_path_bytes + raw_path if root else raw_path,
        "query_string": query,
        "root_path": root,
        "headers": request.headers,
        "client": info.client,
        "server": info.server,
        "subprotocols": subprotocols,
        "state": info.state.copy(),
        "extensions": {**info.extensions, "websocket.http.response": {}},
    }

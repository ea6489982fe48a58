"""Choosing the driver of a connection: the only module that knows every driver.

- TLS: the protocol ALPN negotiated (:func:`connection_factory`, :func:`alpn_protocols`);
- cleartext: HTTP/1.1, which hands its transport over on the HTTP/2 preface (prior knowledge), on
  ``Upgrade: h2c`` (RFC 7540 §3.2) and on ``Upgrade: websocket`` (:func:`handlers`);
- ``--http 2``: HTTP/2 only;
- ``--http3``: HTTP/3 on QUIC endpoints of its own (:func:`quic_server`, :mod:`~tidegate.runtime.h3`).

A new protocol plugs in here: a driver module that imports :mod:`~tidegate.runtime.context` only, and a line in
:func:`connection_factory` (a listener of its own, an ALPN token) or in :func:`handlers` (an ``Upgrade`` token).
The drivers never import each other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import sys
from collections.abc import Callable
from typing import Final, Protocol

from ..asgi.http import escape_log
from ..config import Config, ConfigError
from ..protocol.events import Request
from .context import Handover, PrefaceHandler, ServerContext, UpgradeHandler, client_text
from .h1 import H1Driver
from .h2 import H2Driver
from .udp import QuicListeners
from .ws import WebSocketDriver

__all__ = ["QuicServing", "alpn_protocols", "connection_factory", "handlers", "quic_server"]

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*=*")
#: whether this Python can serve HTTP/3: the aioquic releases it is tested with need 3.11 (see pyproject.toml)
HTTP3_PYTHON: Final = sys.version_info >= (3, 11)

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
# Request fields of an h2c upgrade that belong to the HTTP/1.1 connection, not to the request on stream 1.
_UPGRADE_FIELDS = frozenset({b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"proxy-connection",
                             b"transfer-encoding"})


def _body_length(request: Request) -> int:
    """The body an upgrade request declares: its content-length, -1 for a transfer-encoding, else 0."""
    length = 0
    for name, value in request.headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            return -1
    return length


def upgrade_websocket(h1: Handover, request: Request, trailing: bytes) -> None:
    """``Upgrade: websocket``: hand the HTTP/1.1 connection to a WebSocket driver (which answers the handshake
    once the app has decided).  A handshake carries no body: one that declares one is refused, since its bytes
    would be read as frames here and as the request's body by a proxy (RFC 9112 §6)."""
    if _body_length(request):
        h1.refuse(400, "a WebSocket handshake has no body", request)
        return
    if h1.ctx.debug is not None:
        h1.ctx.debug.protocol(client_text(h1.info), f"WebSocket over HTTP/1.1 ({_request_text(request)})")
    h1.hand_over(WebSocketDriver(h1.ctx, h1.info, request), trailing)


def prior_knowledge(h1: Handover, data: bytes) -> None:
    """A cleartext connection opened with the HTTP/2 preface: hand it to an HTTP/2 driver."""
    if h1.ctx.debug is not None:
        h1.ctx.debug.protocol(client_text(h1.info), "HTTP/2 with prior knowledge")
    h1.hand_over(H2Driver(h1.ctx), data)


def upgrade_h2c(h1: Handover, request: Request, trailing: bytes) -> None:
    """``Upgrade: h2c`` (RFC 7540 §3.2): answer 101, then the request on stream 1 over HTTP/2."""
    settings = [value for name, value in request.headers if name == b"http2-settings"]
    body_length = _body_length(request)
    if body_length < 0:
        # the parser took the body for bytes after the upgrade: they cannot be read as a request
        h1.refuse(400, "an h2c upgrade request's body needs a content-length", request)
        return
    payload = None
    if len(settings) == 1 and _BASE64URL.fullmatch(settings[0]):
        try:
            payload = base64.urlsafe_b64decode(settings[0] + b"=" * (-len(settings[0]) % 4))
        except (binascii.Error, ValueError):
            payload = None
    if payload is None or len(payload) % 6:
        if body_length:
            h1.refuse(400, "invalid HTTP2-Settings", request)
        else:
            h1.decline_upgrade(request, trailing)  # RFC 7540 §3.2.1: no upgrade without one valid HTTP2-Settings
        return
    headers = [(name, value) for name, value in request.headers if name not in _UPGRADE_FIELDS]
    upgraded = Request(request.method, request.target, "2", headers, True, request.expect_continue, 1, None,
                       request.trailers)
    if h1.ctx.debug is not None:
        h1.ctx.debug.protocol(client_text(h1.info), f"HTTP/2 by h2c upgrade ({_request_text(request)})")
    h1.hand_over(H2Driver(h1.ctx, (upgraded, payload, body_length)), trailing, head=_SWITCHING)


def _request_text(request: Request) -> str:
    return escape_log(f"{request.method.decode('latin-1')} {request.target.decode('latin-1')}")


def handlers(config: Config) -> tuple[dict[bytes, UpgradeHandler], PrefaceHandler | None]:
    """The ``Upgrade`` tokens an HTTP/1.1 connection speaks, and the handler of the HTTP/2 preface on a cleartext
    one (the ways into HTTP/2 that ``--http`` allows).  WebSocket over HTTP/2 (RFC 8441) is offered where it is
    spoken over HTTP/1.1."""
    upgrades: dict[bytes, UpgradeHandler] = {}
    if config.websocket.implementation != "none":
        upgrades[b"websocket"] = upgrade_websocket
    preface: PrefaceHandler | None = None
    if config.protocols.http == "auto":
        upgrades[b"h2c"] = upgrade_h2c
        preface = prior_knowledge
    return upgrades, preface


class _ALPNChooser(asyncio.Protocol):
    """A TLS connection's first protocol: once the handshake is done, pick the driver ALPN negotiated."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        mode = self.ctx.config.protocols.http
        h2 = mode == "2" or (alpn == "h2" and mode == "auto")
        driver: asyncio.Protocol = H2Driver(self.ctx) if h2 else H1Driver(self.ctx).as_protocol()
        debug = self.ctx.debug
        if debug is not None:
            name = "HTTP/2" if h2 else "HTTP/1.1"
            debug.protocol(debug.opened(transport), f"{name} by ALPN" if alpn else f"{name} (no ALPN)")
        transport.set_protocol(driver)
        driver.connection_made(transport)


class _Opening(asyncio.Protocol):
    """A cleartext connection's first protocol while the server logs at debug level: log it, then hand it to its
    driver (without debug logging a listener makes the driver directly)."""

    def __init__(self, ctx: ServerContext, h2: bool) -> None:
        self.ctx = ctx
        self.h2 = h2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ctx = self.ctx
        assert ctx.debug is not None
        client = ctx.debug.opened(transport)
        driver: asyncio.Protocol
        if self.h2:
            ctx.debug.protocol(client, "HTTP/2 with prior knowledge (--http 2)")
            driver = H2Driver(ctx)
        else:
            ctx.debug.protocol(client, "HTTP/1.1")
            driver = H1Driver(ctx).as_protocol()
        transport.set_protocol(driver)
        driver.connection_made(transport)


class QuicServing(Protocol):
    """HTTP/3's QUIC endpoints (:class:`tidegate.runtime.h3.QuicServer`), as the server starts and stops them."""

    async def start(self, listeners: QuicListeners) -> None: ...
    def stop_accepting(self) -> None: ...
    def close(self) -> None: ...


def quic_server(ctx: ServerContext) -> QuicServing:
    """HTTP/3 (``--http3``): its QUIC endpoints, not started yet.  aioquic is imported here, and only here: without
    ``--http3`` tidegate runs without it."""
    if not HTTP3_PYTHON:
        raise ConfigError(f"--http3 needs Python 3.11 or later (the aioquic releases it is tested with); this is "
                          f"{sys.version_info[0]}.{sys.version_info[1]}")
    try:
        from .h3 import QuicServer
    except ImportError as exc:
        raise ConfigError(f"--http3 needs the http3 extra: pip install 'tidegate[http3]' ({exc})") from None
    return QuicServer(ctx)


def alpn_protocols(mode: str) -> list[str]:
    """The ALPN protocols a TLS listener offers for ``--http`` ``mode``, preferred first."""
    return {"1": ["http/1.1"], "2": ["h2"]}.get(mode, ["h2", "http/1.1"])


def connection_factory(ctx: ServerContext, tls: bool) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for a listener: by ALPN over TLS, else HTTP/1.1 (which may hand over) or HTTP/2."""
    if tls:
        return lambda: _ALPNChooser(ctx)
    if ctx.debug is not None:
        h2 = ctx.config.protocols.http == "2"
        return lambda: _Opening(ctx, h2)
    if ctx.config.protocols.http == "2":
        return lambda: H2Driver(ctx)
    return lambda: H1Driver(ctx).as_protocol()

"""``--proxy-protocol``: the PROXY header read off each accepted socket before anything else (TLS included).

The header is read from the raw socket, before a transport exists: a peek shows what has come, and exactly the
header's bytes are consumed, so what follows it (a TLS ClientHello, an HTTP/2 preface, a request) stays in the
socket for the transport made afterwards.  Only peers in ``--forwarded-allow-ips`` may send one; any other peer's
connection is closed unread.  A missing, malformed or late header (``--timeout-request-header``) closes the
connection.  The client the header names is the connection's client address for every protocol it comes to speak.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..middleware.proxy_headers import TrustedHosts
from ..protocol.proxy import MAX_V2_LENGTH, InvalidProxyHeader, ProxyHeader, parse
from .context import ServerContext

__all__ = ["ProxyProtocol"]

logger = logging.getLogger("tidegate.error")

_PEEK = 16 + MAX_V2_LENGTH  # the longest header


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class ProxyProtocol:
    """Opens accepted sockets whose first bytes are a PROXY header."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.trusted = TrustedHosts(ctx.config.proxy.forwarded_allow_ips)
        self.timeout = ctx.config.timeouts.request_header
        self._reading: set[socket.socket] = set()  # the sockets whose header is awaited

    async def open(self, conn: socket.socket, factory: Callable[[], asyncio.Protocol], options: dict[str, Any]) -> None:
        """Read ``conn``'s header, then make its transport (``options``: TLS) with a protocol from ``factory``.
        Raises when the connection is to be closed (the caller closes it)."""
        try:
            peer = "unix socket peer" if conn.family == socket.AF_UNIX else str(conn.getpeername()[0])
        except OSError as exc:
            raise ConnectionError("gone before its PROXY header") from exc
        if not self._trusted(conn, peer):
            logger.info("%s is not in --forwarded-allow-ips: its PROXY protocol connection is closed", peer)
            raise ConnectionRefusedError(f"{peer} is not trusted with a PROXY header")
        self._reading.add(conn)
        try:
            header = await asyncio.wait_for(self._read(conn), self.timeout)
        except InvalidProxyHeader as exc:
            logger.info("%s - invalid PROXY protocol header (%s): connection closed", peer, exc)
            raise
        except (TimeoutError, asyncio.TimeoutError):
            logger.info("%s - no complete PROXY protocol header in %gs: connection closed", peer, self.timeout)
            raise
        finally:
            self._reading.discard(conn)
        if conn.fileno() < 0:
            raise ConnectionAbortedError("closed by the server's shutdown")
        assert self.ctx.proxied is not None
        self.ctx.proxied[conn.fileno()] = header.client  # read by connection_info() as the driver starts
        await self.loop.connect_accepted_socket(factory, conn, **options)

    def _trusted(self, conn: socket.socket, peer: str) -> bool:
        if conn.family == socket.AF_UNIX:
            return self.trusted.unix or self.trusted.any
        return peer in self.trusted

    async def _read(self, conn: socket.socket) -> ProxyHeader:
        taken = b""
        while True:
            await self._readable(conn)
            try:
                data = conn.recv(_PEEK, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                raise ConnectionResetError("closed before its PROXY header was complete")
            header = parse(taken + data)
            # every byte of an incomplete header belongs to it (and parse bounds it): consume them all; of a
            # complete one, exactly its own
            wanted = len(data) if header is None else header.length - len(taken)
            if len(conn.recv(wanted)) != wanted:  # peeked, so there
                raise ConnectionResetError("the PROXY header's bytes could not be read")
            if header is not None:
                return header
            taken += data

    async def _readable(self, conn: socket.socket) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(conn, _settle, ready)
        try:
            await ready
        finally:
            if conn.fileno() >= 0:
                self.loop.remove_reader(conn)

    def close(self) -> None:
        """The server stops: close the connections whose header has not come (their tasks end on their own)."""
        for conn in self._reading:
            self.loop.remove_reader(conn)
            conn.close()
        self._reading.clear()

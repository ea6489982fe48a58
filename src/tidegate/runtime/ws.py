"""The WebSocket driver over HTTP/1.1: takes over the connection after ``Upgrade: websocket``.

It owns the transport and its write path, and carries one :class:`~tidegate.runtime.websocket.WebSocketChannel`
(the session, the app, the timers, the bounds): it is that channel's :class:`~tidegate.runtime.websocket.Carrier`.
Frames collect in the write buffer and leave in one write at the end of the loop iteration (or at once past
64 KiB), so the replies to a burst of messages cost one system call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from ..asgi.scope import ConnectionInfo
from ..protocol.events import Request
from ..protocol.http1 import H1Connection, switching_protocols
from ..protocol.websocket import CLOSED, CONNECTING
from .context import ServerContext, client_text, cut
from .websocket import WebSocketChannel
from .writes import WriteBuffer

__all__ = ["WebSocketDriver"]

logger: Final = logging.getLogger("tidegate.error")


class WebSocketDriver(asyncio.Protocol):
    transport: asyncio.Transport  # set by connection_made
    write: Callable[[bytes], None]

    __slots__ = ("_denial", "_lost", "channel", "ctx", "info", "label", "request", "transport", "write", "writes")

    def __init__(self, ctx: ServerContext, info: ConnectionInfo, request: Request) -> None:
        self.ctx = ctx
        self.info = info
        self.request = request
        self.label = ""
        self.writes = writes = WriteBuffer(ctx.loop, ctx.timeouts.write, self._on_paused, "WebSocket ", ctx.flushes)
        #: the carrier's write: frames go straight to the write buffer
        self.write = writes.write
        self._denial: H1Connection | None = None
        self._lost = False
        self.channel = WebSocketChannel(ctx, info, request, self)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.writes.attach(transport)
        self.ctx.registry.add(self, admit=False)  # handed over by an HTTP/1.1 connection already admitted
        self.channel.start()
        task = self.channel.task
        if task is not None:
            task.add_done_callback(self._app_done)

    def data_received(self, data: bytes) -> None:
        self.channel.receive(data)

    def eof_received(self) -> bool | None:
        # A client that half-closes without a close frame is gone: close our side too, at once if bytes still
        # wait for it (a closing transport would wait for it to take them, and a sender with it).
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ctx.debug is not None:
            state = self.channel.session.state
            why = ("after the closing handshake" if state == CLOSED else "handshake not accepted"
                   if state == CONNECTING else "without a closing handshake")
            self.ctx.debug.closed(self.transport, exc, why)
        self._lost = True
        self.writes.connection_lost()
        self.channel.lost()
        self._release()

    def pause_writing(self) -> None:
        self.writes.pause()

    def resume_writing(self) -> None:
        self.writes.resume()
        self.channel.resume_reading()

    # ------------------------------------------------------------------ lifetime

    def _app_done(self, task: asyncio.Task[None]) -> None:
        self._release()

    def _release(self) -> None:
        """Leave the server's registry once both the connection and the app are finished."""
        task = self.channel.task
        if self._lost and (task is None or task.done()):
            self.ctx.registry.discard(self)
            self.channel.detach()

    def shutdown(self) -> None:
        self.channel.shutdown()

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cancel the app and drop the connection; return the task cancelled."""
        return cut(self.transport, self.channel.task)

    def drain(self) -> Awaitable[None]:
        return self.writes.drain()

    # ------------------------------------------------------------------ Carrier (used by the channel)

    @property
    def write_paused(self) -> bool:
        return self.writes.paused

    def _on_paused(self, paused: bool) -> None:
        self.channel.write_paused = paused

    def output_full(self) -> bool:
        return self.writes.paused

    def flush(self) -> None:
        self.writes.flush()

    def accept(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        writes = self.writes
        writes.write(switching_protocols(status, headers, self.ctx.defaults))
        writes.flush()

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
        conn = H1Connection(self.ctx.defaults, self.writes.write)
        if headers:
            conn.close_after_response()
            conn.start_response(self.request, status, [*headers, (b"content-type", b"text/plain; charset=utf-8")])
            conn.send_body((detail + "\n").encode(), True)
        else:
            self.writes.write(conn.error_response(status, detail))
        self.writes.close()

    def deny_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        conn = H1Connection(self.ctx.defaults, self.writes.write)
        conn.close_after_response()
        conn.start_response(self.request, status, headers)
        self._denial = conn

    def deny_body(self, data: bytes, end: bool) -> None:
        assert self._denial is not None
        self._denial.send_body(data, end)
        if end:
            self.writes.close()

    def pause_reading(self) -> None:
        if not self._lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._lost:
            self.transport.resume_reading()

    def finish(self) -> None:
        # the closing handshake is complete (or failed): the server closes the TCP connection first
        self.writes.close()

    def abandon(self) -> None:
        self.writes.close()

    def __repr__(self) -> str:
        return f"<WebSocketDriver {client_text(self.info)} {self.request.target!r}>"

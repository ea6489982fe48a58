"""The WebSocket driver: takes over an HTTP/1.1 connection after ``Upgrade: websocket``.

It owns the transport, the app task, the timers (the app's answer to the handshake, keepalive ping, pong deadline,
closing-handshake deadline) and back-pressure both ways; it feeds bytes to the sans-IO
:class:`~tidegate.protocol.websocket.WebSocketSession` and routes its events to the
:class:`~tidegate.asgi.websocket.WebSocketExchange`, whose :class:`~tidegate.asgi.websocket.WebSocketStream` it is.

Frames the app sends collect in one buffer and leave in one write at the end of the loop iteration (or at once past
64 KiB), so the replies to a burst of messages cost one system call.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Iterable

from ..asgi.http import escape_log
from ..asgi.scope import ConnectionInfo, websocket_scope
from ..asgi.websocket import WebSocketExchange
from ..protocol.events import Request
from ..protocol.http1 import H1Connection, status_line
from ..protocol.websocket import CONNECTING, OPEN, Close, Pong, WebSocketSession
from .context import ServerContext, client_text
from .writes import WriteBuffer

__all__ = ["WebSocketDriver"]

logger = logging.getLogger("tidegate.error")
access_logger = logging.getLogger("tidegate.access")

# Bytes a client may send before its handshake is answered (it should send none) before reading pauses.
_EARLY_LIMIT = 65536


class WebSocketDriver(asyncio.Protocol):
    __slots__ = (
        "_close_timer",
        "_denial",
        "_early",
        "_early_bytes",
        "_handshake_timer",
        "_lost",
        "_ping_count",
        "_ping_payload",
        "_ping_timer",
        "_pong_timer",
        "ctx",
        "exchange",
        "info",
        "loop",
        "reading_paused",
        "request",
        "send_bytes",
        "send_text",
        "session",
        "shutting_down",
        "task",
        "transport",
        "writes",
    )

    def __init__(self, ctx: ServerContext, info: ConnectionInfo, request: Request) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.info = info
        self.request = request
        settings = ctx.websocket
        self.writes = writes = WriteBuffer(ctx.loop, ctx.timeouts.write, self._write_stuck)
        self.session = WebSocketSession(request, max_size=settings.max_size,
                                        per_message_deflate=settings.per_message_deflate, write=writes.write)
        # the exchange's send_text/send_bytes go straight to the session (one call less per message)
        self.send_text = self.session.send_text
        self.send_bytes = self.session.send_bytes
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.exchange: WebSocketExchange | None = None
        self.task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._denial: H1Connection | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_count = 0
        self._lost = False
        self.reading_paused = False
        self.shutting_down = False

    @property
    def write_paused(self) -> bool:
        return self.writes.paused

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writes.attach(self.transport)
        self.ctx.registry.add(self)
        rejection = self.session.rejection
        if rejection is not None:
            logger.info("WebSocket handshake from %s refused: %s", self._client_text(), rejection.detail)
            self._log_access(rejection.status)
            self._respond(rejection.status, rejection.headers, rejection.detail)
            return
        exchange = WebSocketExchange(self, websocket_scope(self.request, self.info), self.ctx.limits.request_buffer)
        self.exchange = exchange
        self.task = self.loop.create_task(exchange.run(self.ctx.app))
        self.task.add_done_callback(self._app_done)
        self._handshake_timer = self.loop.call_later(self.ctx.timeouts.ws_handshake,
                                                     self._handshake_overdue)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session.state == CONNECTING:
            self._early.append(data)
            self._early_bytes += len(data)
            if self._early_bytes > _EARLY_LIMIT and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        exchange = self.exchange
        if exchange is None:
            return
        for event in session.receive_data(data):
            kind = type(event)
            if kind is str or kind is bytes:
                exchange.on_message(event)  # type: ignore[arg-type]
            elif kind is Close:
                self._on_close(event)  # type: ignore[arg-type]
                return
            elif kind is Pong and event.payload == self._ping_payload:  # type: ignore[union-attr]
                self._pong_received()
        if (exchange.over_limit or self.writes.paused) and not self.reading_paused:
            # the app has not taken what came, or the client does not take what we send (our answers to its
            # pings included): read no more until it does
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # A client that half-closes without a close frame is gone: close our side too.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_timers()
        self.writes.connection_lost()
        if self.exchange is not None:
            self.exchange.on_close(1006)
        self._release()

    def pause_writing(self) -> None:
        self.writes.pause()

    def resume_writing(self) -> None:
        self.writes.resume()
        self.resume_reading()

    def _write_stuck(self) -> None:
        """--timeout-write passed with the client taking none of what waits for it."""
        if not self._lost:
            logger.info("WebSocket client %s has not read for %gs: dropping the connection", self._client_text(),
                        self.ctx.timeouts.write)
            self.transport.abort()

    # ------------------------------------------------------------------ session events

    def _on_close(self, event: Close) -> None:
        """The client's close frame (echoed by the session), or a failure the session closed for."""
        if event.error:
            logger.info("WebSocket from %s closed with %d: %s", self._client_text(), event.code,
                        escape_log(event.reason))
        assert self.exchange is not None
        self.exchange.on_close(event.code, "" if event.error else event.reason)
        self._stop_timers()
        # the closing handshake is complete (or failed): the server closes the TCP connection first
        self._close()

    def _pong_received(self) -> None:
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None

    # ------------------------------------------------------------------ timers

    def _start_keepalive(self) -> None:
        interval = self.ctx.websocket.ping_interval
        if interval > 0:
            self._ping_timer = self.loop.call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        settings = self.ctx.websocket
        self._ping_timer = None
        if self.session.state != OPEN or self._lost:
            return
        # once per interval, release the compression state (rebuilt from its history by the next message)
        self.session.compact()
        if self._ping_payload is None:
            self._ping_count += 1
            payload = struct.pack("!I", self._ping_count & 0xFFFFFFFF)
            self._ping_payload = payload
            self.session.ping(payload)
            self.writes.flush()
            if settings.ping_timeout > 0:
                self._pong_timer = self.loop.call_later(settings.ping_timeout, self._pong_overdue)
        self._ping_timer = self.loop.call_later(settings.ping_interval, self._keepalive)

    def _pong_overdue(self) -> None:
        self._pong_timer = None
        if self._lost or self.session.state != OPEN:
            return
        logger.info("WebSocket from %s closed: no pong within %.1fs", self._client_text(),
                    self.ctx.websocket.ping_timeout)
        self.session.fail(1011, "keepalive ping timeout")
        if self.exchange is not None:
            self.exchange.on_close(1006)
        self._stop_timers()
        self._close()

    def _await_close(self) -> None:
        """We sent a close frame: give the client ``ws_close_timeout`` to answer with its own."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        if self._close_timer is None and not self._lost:
            self._close_timer = self.loop.call_later(self.ctx.websocket.close_timeout,
                                                     self._close_overdue)

    def _close_overdue(self) -> None:
        self._close_timer = None
        if self.exchange is not None:
            self.exchange.on_close(1006)
        self._close()

    def _handshake_overdue(self) -> None:
        """--timeout-ws-handshake: the app neither accepted nor refused the WebSocket in time."""
        self._handshake_timer = None
        if self._lost or self.session.state != CONNECTING or self._denial is not None:
            return
        logger.info("WebSocket from %s not accepted nor refused by the app within %gs: answering 503",
                    self._client_text(), self.ctx.timeouts.ws_handshake)
        if self.exchange is not None:
            self.exchange.on_close(1006)  # the app hears websocket.disconnect; its accept() would fail
        self.send_error(503)

    def _handshake_answered(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _stop_timers(self) -> None:
        for name in ("_ping_timer", "_pong_timer", "_close_timer", "_handshake_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # ------------------------------------------------------------------ lifetime

    def _app_done(self, task: asyncio.Task[None]) -> None:
        self._release()

    def _release(self) -> None:
        """Leave the server's registry once both the connection and the app are finished."""
        if self._lost and (self.task is None or self.task.done()):
            self.ctx.registry.discard(self)

    def shutdown(self) -> None:
        """Graceful shutdown: the app gets websocket.disconnect (1001), then the client a close frame (1001)."""
        self.shutting_down = True
        if self.session.state == OPEN:
            self._go_away()
        # before the handshake is answered the app decides; an accept is followed at once by the close

    def _go_away(self) -> None:
        if self.exchange is not None:
            self.exchange.on_close(1001, "server shutting down")
        self.session.send_close(1001, "server shutting down")
        self._await_close()

    def force_close(self) -> list[asyncio.Task[None]]:
        """Shutdown ran out of time: cancel the app and drop the connection; return the task cancelled."""
        task = self.task
        self.transport.abort()
        if task is not None and task.cancel():
            return [task]
        return []

    # ------------------------------------------------------------------ WebSocketStream (used by the exchange)

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        status, response = self.session.accept(subprotocol, headers)
        self._handshake_answered()
        defaults = self.ctx.defaults
        has_server = has_date = False
        parts = [status_line(status)]
        for name, value in response:
            lname = name.lower()
            if lname == b"server":
                has_server = True
            elif lname == b"date":
                has_date = True
            parts += (name, b": ", value, b"\r\n")
        if not has_server:
            parts.append(defaults.server)
        if not has_date:
            parts.append(defaults.date)
        parts.append(defaults.extra)
        parts.append(b"\r\n")
        writes = self.writes
        writes.write(b"".join(parts))
        writes.flush()
        self._log_access(status)
        if self._early:
            early = b"".join(self._early)
            self._early.clear()
            self._early_bytes = 0
            self.data_received(early)
            if self.reading_paused and self.exchange is not None and not self.exchange.over_limit:
                self.resume_reading()
        if self.session.state != OPEN:
            return  # the early bytes closed it
        self._start_keepalive()
        if self.shutting_down:
            self._go_away()

    # send_text / send_bytes are the session's own (see __init__)

    def close(self, code: int, reason: str) -> None:
        self.session.send_close(code, reason)
        self._await_close()

    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The denial response's head (an HTTP response instead of the upgrade)."""
        conn = H1Connection(self.ctx.defaults, self.writes.write)
        conn.keep_alive = False
        conn.start_response(self.request, status, list(headers))
        self.session.reject()
        self._handshake_answered()
        self._denial = conn
        self._log_access(status)

    def send_data(self, data: bytes, end: bool) -> None:
        assert self._denial is not None
        self._denial.send_body(data, end)
        if end:
            self._close()

    def send_error(self, status: int) -> None:
        self.session.reject()
        self._handshake_answered()
        self._log_access(status)
        self._respond(status, [], "")

    def abort(self) -> None:
        self._close()

    def drain(self) -> Awaitable[None]:
        return self.writes.drain()

    def _close(self) -> None:
        """Close once what is queued is written; past --timeout-write for that, drop the connection."""
        self.writes.close()

    def create_waiter(self) -> asyncio.Future[None]:
        return self.loop.create_future()

    def resume_reading(self) -> None:
        """Read again once neither the app's queue nor the client's unread output is over its bound."""
        if (self.reading_paused and not self._lost and not self.writes.paused
                and (self.exchange is None or not self.exchange.over_limit)):
            self.reading_paused = False
            self.transport.resume_reading()

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
        """Answer the handshake with a short HTTP error and close."""
        conn = H1Connection(self.ctx.defaults, self.writes.write)
        if headers:
            body = (detail + "\n").encode()
            conn.keep_alive = False
            conn.start_response(self.request, status, [*headers, (b"content-type", b"text/plain; charset=utf-8")])
            conn.send_body(body, True)
        else:
            self.writes.write(conn.error_response(status, detail))
        self._close()

    # ------------------------------------------------------------------ logging

    def _log_access(self, status: int) -> None:
        if self.ctx.logging.access_log:
            scope = self.exchange.scope if self.exchange is not None else None
            target = self.request.target.decode("latin-1") if scope is None else (
                scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""))
            access_logger.info('%s - "WebSocket %s" %d', self._client_text(), escape_log(target), status)

    def _client_text(self) -> str:
        return client_text(self.info)

    def __repr__(self) -> str:
        return f"<WebSocketDriver {self._client_text()} {self.request.target!r}>"

"""One WebSocket channel, whatever carries it: an HTTP/1.1 connection after ``Upgrade: websocket``
(:mod:`~tidegate.runtime.ws`) or an HTTP/2 stream after an extended CONNECT (:mod:`~tidegate.runtime.h2`).

The channel owns the sans-IO :class:`~tidegate.protocol.websocket.WebSocketSession`, the app's
:class:`~tidegate.asgi.websocket.WebSocketExchange` (whose :class:`~tidegate.asgi.websocket.WebSocketStream` it is)
and every timer: the app's answer to the handshake (``--timeout-ws-handshake``), the keepalive ping and its pong
deadline (``--ws-ping-interval``, ``--ws-ping-timeout``) and the closing handshake (``--ws-close-timeout``).  It
bounds what it holds both ways: reading pauses while the app has not taken what came, and while the client has not
taken what is sent to it (our answers to its pings included).

What differs between carriers is a :class:`Carrier`: how bytes go out, how the handshake is answered or refused,
how reading pauses, how the channel ends cleanly (``finish``) or not (``abandon``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from ..asgi.http import escape_log
from ..asgi.scope import ConnectionInfo, websocket_scope
from ..asgi.websocket import WebSocketExchange
from ..protocol.events import Request
from ..protocol.websocket import CLOSED, CONNECTING, OPEN, Close, Pong, WebSocketSession
from .context import ServerContext, client_text

__all__ = ["Carrier", "WebSocketChannel"]

logger: Final = logging.getLogger("tidegate.error")
access_logger: Final = logging.getLogger("tidegate.access")

# Bytes a client may send before its handshake is answered (it should send none) before reading pauses.
EARLY_LIMIT: Final = 65536


class Carrier(Protocol):
    """What a WebSocket channel needs from the connection or stream that carries it."""

    #: how the access log names the carrier ("" for HTTP/1.1, " HTTP/2" ...)
    label: str

    @property
    def write(self) -> Callable[[bytes], None]:
        """Where frame bytes for the client go (the session's write)."""

    def output_full(self) -> bool:
        """Whether what waits for the client is over its bound: reading pauses until it is not."""

    def flush(self) -> None:
        """Put what was written on its way now."""

    def accept(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer the handshake: the WebSocket is open."""

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
        """Answer the handshake with an HTTP error response, and end."""

    def deny_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The head of the app's denial response (an HTTP response instead of the WebSocket)."""

    def deny_body(self, data: bytes, end: bool) -> None:
        """A piece of the app's denial response; ``end``: the last."""

    def pause_reading(self) -> None:
        """Take no more bytes from the client for now."""

    def resume_reading(self) -> None:
        """Take bytes from the client again."""

    def finish(self) -> None:
        """The closing handshake is complete (or failed with a close frame sent): end cleanly."""

    def abandon(self) -> None:
        """The session cannot end cleanly (no pong, no answer to our close): cut it."""

    def drain(self) -> Awaitable[None]:
        """Wait while the client is slow to take what is sent; raise ClientDisconnected once it is gone."""


class WebSocketChannel:
    """One WebSocket session between a client and the app, over any carrier."""

    __deletable__ = ("carrier",)  # (mypyc) let go of by detach()

    __slots__ = ("_close_timer", "_early", "_failing", "_handshake_timer", "_holding", "_ping_count",
                 "_ping_payload",
                 "_ping_timer", "_pong_timer", "carrier", "ctx", "exchange", "gone", "info", "reading_paused",
                 "request", "send_bytes", "send_text", "session", "shutting_down", "task", "write_paused")

    def __init__(self, ctx: ServerContext, info: ConnectionInfo, request: Request, carrier: Carrier) -> None:
        self.ctx = ctx
        self.info = info
        self.request = request
        self.carrier = carrier
        settings = ctx.websocket
        self.session = WebSocketSession(request, max_size=settings.max_size,
                                        per_message_deflate=settings.per_message_deflate, write=carrier.write)
        # a protocol error after valid messages in the same read: they are answered first (see _failed)
        self.session.defer_failures = True
        # the exchange's send_text/send_bytes go straight to the session (one call less per message)
        self.send_text = self.session.send_text
        self.send_bytes = self.session.send_bytes
        self.exchange: WebSocketExchange | None = None
        self.task: asyncio.Task[None] | None = None
        #: bytes from the client held unparsed: before the handshake is answered, and while our output to the client
        #: is over its bound (then reading goes on, so that a client that leaves is seen, up to EARLY_LIMIT bytes)
        self._holding = True
        self._early = bytearray()
        #: the client's protocol error, waiting for the app to take the messages that came before it
        self._failing: Close | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_count = 0
        self.reading_paused = False
        #: send() waits (drain) before the app goes on: set by the carrier as the client takes its bytes or not
        self.write_paused = False
        self.shutting_down = False
        #: the carrier is gone (connection lost, stream reset): nothing more goes out
        self.gone = False

    def start(self) -> None:
        """The handshake request is here: refuse it (invalid), or run the app, which accepts or denies it."""
        rejection = self.session.rejection
        if rejection is not None:
            logger.info("WebSocket handshake from %s refused: %s", client_text(self.info), rejection.detail)
            self._log_access(rejection.status)
            self.carrier.refuse(rejection.status, rejection.headers, rejection.detail)
            return
        ctx = self.ctx
        self.exchange = WebSocketExchange(self, websocket_scope(self.request, self.info), ctx.limits.request_buffer,
                                          ctx.websocket.max_queue)
        self.task = ctx.start_app(self.exchange.run(ctx.app))
        self._handshake_timer = ctx.loop.call_later(ctx.timeouts.ws_handshake, self._handshake_overdue)

    # ------------------------------------------------------------------ from the carrier

    def receive(self, data: bytes) -> None:
        """Bytes from the client."""
        if self._holding:
            early = self._early
            early += data  # parsed once the handshake is answered, or the client reads again
            if len(early) > EARLY_LIMIT:
                self._pause()
            return
        session = self.session
        exchange = self.exchange
        if exchange is None or session.state == CLOSED or self._failing is not None:
            return
        for event in session.receive_data(data):
            if isinstance(event, (str, bytes)):
                exchange.on_message(event)
            elif isinstance(event, Close):
                if event.error:
                    self._failed(event)
                else:
                    self._on_close(event)
                return
            elif isinstance(event, Pong) and event.payload == self._ping_payload:
                self._pong_received()
        if exchange.over_limit:
            self._pause()  # the app has not taken what came: read no more until it does
        elif self.carrier.output_full():
            # the client does not take what we send (our answers to its pings included): parse no more until it
            # does, and read no more than EARLY_LIMIT meanwhile
            self._holding = True

    def _pause(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.carrier.pause_reading()

    def resume_reading(self) -> None:
        """Parse and read again once neither the app's queue nor the client's unread output is over its bound
        (called by the exchange as the app takes messages, and by the carrier as the client takes bytes)."""
        if self.gone or self.session.state == CONNECTING or self.carrier.output_full():
            return
        if self._holding:
            self._release()
        if self.reading_paused and not self._holding and (self.exchange is None or not self.exchange.over_limit):
            self.reading_paused = False
            self.carrier.resume_reading()

    def _release(self) -> None:
        """Parse the bytes held meanwhile."""
        self._holding = False
        if self._early:
            early = bytes(self._early)
            self._early.clear()
            self.receive(early)

    def detach(self) -> None:
        """The carrier and the app are both finished: let go of the exchange and the carrier, which hold this
        channel (reference cycles the garbage collector would otherwise have to find).  Nothing is called after;
        a second call does nothing."""
        self.exchange = None
        try:
            del self.carrier
        except AttributeError:
            pass

    def lost(self) -> None:
        """The carrier is gone without a closing handshake."""
        if not self.gone:
            self.gone = True
            self._stop_timers()
            if self.exchange is not None:
                self.exchange.on_close(1006)

    def _failed(self, event: Close) -> None:
        """The client broke the protocol.  The messages it sent before are the app's to answer first (RFC 6455 lets
        an endpoint fail at once, but the answers owed come first): the connection fails once the app has taken
        them and asks for more, or after --ws-close-timeout."""
        exchange = self.exchange
        assert exchange is not None
        if not exchange.has_messages:
            self._fail_now(event)
            return
        self._failing = event
        self._pause()
        self._stop_timers()
        self._close_timer = self.ctx.loop.call_later(self.ctx.websocket.close_timeout, self._fail_now, event)

    def _fail_now(self, event: Close) -> None:
        self._failing = None
        if self.gone or self.session.state == CLOSED:
            return
        self.session.fail(event.code, event.reason)
        self._on_close(event)

    def _on_close(self, event: Close) -> None:
        """The client's close frame (echoed by the session), or a failure the session closed for."""
        if event.error:
            logger.info("WebSocket from %s closed with %d: %s", client_text(self.info), event.code,
                        escape_log(event.reason))
        assert self.exchange is not None
        self.exchange.on_close(event.code, "" if event.error else event.reason)
        self._stop_timers()
        self.carrier.finish()

    def _pong_received(self) -> None:
        self._ping_payload = None
        timer, self._pong_timer = self._pong_timer, None
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------------ timers

    def _start_keepalive(self) -> None:
        interval = self.ctx.websocket.ping_interval
        if interval > 0:
            self._ping_timer = self.ctx.loop.call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        settings = self.ctx.websocket
        loop = self.ctx.loop
        self._ping_timer = None
        if self.session.state != OPEN or self.gone:
            return
        # once per interval, release the compression state (rebuilt from its history by the next message)
        self.session.compact()
        if self._ping_payload is None:
            self._ping_count += 1
            self._ping_payload = payload = struct.pack("!I", self._ping_count & 0xFFFFFFFF)
            self.session.ping(payload)
            self.carrier.flush()
            if settings.ping_timeout > 0:
                self._pong_timer = loop.call_later(settings.ping_timeout, self._pong_overdue)
        self._ping_timer = loop.call_later(settings.ping_interval, self._keepalive)

    def _pong_overdue(self) -> None:
        self._pong_timer = None
        if self.gone or self.session.state != OPEN:
            return
        logger.info("WebSocket from %s closed: no pong within %.1fs", client_text(self.info),
                    self.ctx.websocket.ping_timeout)
        self.session.fail(1011, "keepalive ping timeout")
        self._abandon()

    def _await_close(self) -> None:
        """We sent a close frame: give the client ``--ws-close-timeout`` to answer with its own."""
        self._stop_timers()
        if not self.gone:
            self._close_timer = self.ctx.loop.call_later(self.ctx.websocket.close_timeout, self._abandon)

    def _abandon(self) -> None:
        """The session cannot end cleanly: the app is told, the carrier cut."""
        self._close_timer = None
        if self.exchange is not None:
            self.exchange.on_close(1006)
        self._stop_timers()
        self.carrier.abandon()

    def _handshake_overdue(self) -> None:
        """--timeout-ws-handshake: the app neither accepted nor refused the WebSocket in time."""
        self._handshake_timer = None
        if self.gone or self.session.state != CONNECTING:
            return
        logger.info("WebSocket from %s not accepted nor refused by the app within %gs: answering 503",
                    client_text(self.info), self.ctx.timeouts.ws_handshake)
        if self.exchange is not None:
            self.exchange.on_close(1006)  # the app hears websocket.disconnect; its accept() would fail
        self.send_error(503)

    def _handshake_answered(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _stop_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer, self._close_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._close_timer = self._handshake_timer = None

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Graceful shutdown: the app gets websocket.disconnect (1001), then the client a close frame (1001).  Before
        the handshake is answered the app decides; an accept is followed at once by the close."""
        self.shutting_down = True
        if self.session.state == OPEN:
            self._go_away()

    def _go_away(self) -> None:
        if self.exchange is not None:
            self.exchange.on_close(1001, "server shutting down")
        self.session.send_close(1001, "server shutting down")
        self._await_close()

    # ------------------------------------------------------------------ WebSocketStream (used by the exchange)

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        status, response = self.session.accept(subprotocol, headers)
        self._handshake_answered()
        self.carrier.accept(status, response)
        self._log_access(status, accepted=True)
        self._release()
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
        self.session.reject()
        self._handshake_answered()
        self.carrier.deny_head(status, list(headers))
        self._log_access(status)

    def send_data(self, data: bytes, end: bool) -> None:
        self.carrier.deny_body(data, end)

    def send_error(self, status: int) -> None:
        self.session.reject()
        self._handshake_answered()
        self._log_access(status)
        self.carrier.refuse(status, [], "")

    def abort(self) -> None:
        self._stop_timers()
        self.carrier.abandon()

    def drain(self) -> Awaitable[None]:
        return self.carrier.drain()

    def create_waiter(self) -> asyncio.Future[None]:
        failing = self._failing
        if failing is not None and self.exchange is not None and not self.exchange.has_messages:
            # the app took every message before the client's error, and asks for more: fail now (once it waits)
            self._stop_timers()
            self.ctx.loop.call_soon(self._fail_now, failing)
        return self.ctx.loop.create_future()

    # ------------------------------------------------------------------ logging

    def _log_access(self, status: int, accepted: bool = False) -> None:
        ctx = self.ctx
        if not accepted and ctx.metrics is not None:
            ctx.metrics.observe(status, 0.0)  # a refused handshake is a response (an accepted one, a session)
        if ctx.logging.access_log:
            exchange = self.exchange
            if exchange is None:
                target = self.request.target.decode("latin-1")
            else:
                scope = exchange.scope
                query = scope["query_string"]
                target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            access_logger.info('%s - "WebSocket %s%s" %d', client_text(self.info), escape_log(target),
                               self.carrier.label, status)


@mypyc_attr(allow_interpreted_subclasses=True)  # the HTTP/3 carrier's module is not compiled
class StreamCarrier:
    """What a WebSocket carried by one stream of a multiplexed connection (HTTP/2, HTTP/3) shares, whatever the
    protocol: the channel's send flag read as the stream's, the app started once the handshake request is here, the
    graceful shutdown, and the wake-up of a ``drain()``.  Each driver's carrier gives the rest: how its bytes go out,
    how the client's window is given back, when the stream is over (``_maybe_done``)."""

    __slots__ = ("_waiter", "channel", "task")
    channel: WebSocketChannel
    task: asyncio.Task[None] | None
    _waiter: asyncio.Future[None] | None

    @property
    def write_paused(self) -> bool:
        """The stream's data waits for the client: the app's send() waits (the channel's flag, which its exchange
        reads)."""
        return self.channel.write_paused

    @write_paused.setter
    def write_paused(self, paused: bool) -> None:
        self.channel.write_paused = paused

    def start(self) -> None:
        channel = self.channel
        channel.start()
        self.task = channel.task
        if self.task is not None:
            self.task.add_done_callback(lambda _: self._maybe_done())
        else:
            self._maybe_done()

    def _maybe_done(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        self.channel.shutdown()

    def wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.channel.resume_reading()

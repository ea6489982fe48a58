"""The timers of the WebSocket channel (over HTTP/1.1 and over HTTP/2) and of the HTTP/2 driver, on an injected clock:
the loop's time and timers are the test's (tasks and futures run on a real event loop), with the fake transport of
test_runtime_deadlines.  No test here sleeps or measures time.  The clients are real sans-IO peers: websockets'
``ClientProtocol`` for framing, h2's client connection for HTTP/2."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from websockets.frames import Frame, Opcode

from tidegate.asgi.scope import ConnectionInfo
from tidegate.config import Config
from tidegate.protocol.events import Request
from tidegate.runtime.context import ServerContext
from tidegate.runtime.h2 import H2Driver
from tidegate.runtime.negotiate import handlers
from tidegate.runtime.ws import WebSocketDriver

from .test_runtime_deadlines import Clock, Transport, run, settle

WS_REQUEST = Request(b"GET", b"/ws", "1.1", [(b"host", b"t"), (b"upgrade", b"websocket"), (b"connection", b"upgrade"),
                                            (b"sec-websocket-key", base64.b64encode(b"k" * 16)),
                                            (b"sec-websocket-version", b"13")], True, False, 0, b"websocket")


def context(app: Any, clock: Clock, **settings: Any) -> ServerContext:
    config = Config.from_flat(app="x:y", access_log=False, **settings)
    upgrades, preface = handlers(config)
    return ServerContext(app, config, clock, upgrades=upgrades, prior_knowledge=preface)  # type: ignore[arg-type]


def masked(opcode: Opcode, data: bytes = b"") -> bytes:
    return Frame(opcode, data).serialize(mask=True, extensions=[])


class WebSocketPeer:
    """One WebSocket as a test drives it: a fake transport under an HTTP/1.1 WebSocket driver, or an HTTP/2
    connection (h2's client) carrying it on stream 1."""

    def __init__(self, kind: str, app: Any, **settings: Any) -> None:
        loop = asyncio.get_running_loop()
        self.kind = kind
        self.clock = Clock(loop)
        self.ctx = context(app, self.clock, **settings)
        self.transport = Transport(loop)
        self.events: list[Any] = []
        if kind == "http/1.1":
            driver: Any = WebSocketDriver(self.ctx, ConnectionInfo(("127.0.0.1", 1), ("127.0.0.1", 80), "http"),
                                          WS_REQUEST)
            self.transport.protocol = driver
            driver.connection_made(self.transport)
        else:
            self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            self.h2.initiate_connection()
            driver = H2Driver(self.ctx)
            self.transport.protocol = driver
            driver.connection_made(self.transport)
            self._to_server()
            self._from_server()
            self.h2.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                     (b":path", b"/ws"), (b":authority", b"t"), (b"sec-websocket-version", b"13")])
            self._to_server()
        self.driver = driver
        self._seen = 0

    def _to_server(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.driver_receive(data)

    def driver_receive(self, data: bytes) -> None:
        self.transport.protocol.data_received(data)  # type: ignore[union-attr]

    def _from_server(self) -> bytes:
        """What the server wrote since the last look (for HTTP/2: the DATA of stream 1)."""
        data = self.transport.data
        new, self._seen = data[self._seen:] if hasattr(self, "_seen") else data, len(data)
        if self.kind == "http/1.1":
            return new
        out = b""
        for event in self.h2.receive_data(new):
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                out += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self._to_server()
        return out

    def read(self) -> bytes:
        return self._from_server()

    def send(self, data: bytes) -> None:
        if self.kind == "http/1.1":
            self.driver_receive(data)
        else:
            self.h2.send_data(1, data)
            self._to_server()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await settle()

    @property
    def ended(self) -> bool:
        """The WebSocket's carrier ended: the connection closed, or the stream ended or was reset."""
        if self.kind == "http/1.1":
            return self.transport.closed
        self._from_server()
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == 1
                   for e in self.events)


def echo_app(seen: list[Any]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                return

    return app


KINDS = ["http/1.1", "http/2"]


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked server frames in ``data`` (payloads < 126 bytes)."""
    out = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        assert size < 126
        out.append((opcode, data[2:2 + size]))
        data = data[2 + size:]
    return out


def after_head(data: bytes, kind: str) -> bytes:
    return data.partition(b"\r\n\r\n")[2] if kind == "http/1.1" else data


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_answers_no_ping_is_closed_1011_at_the_pong_deadline(kind: str) -> None:
    seen: list[Any] = []

    async def main() -> None:
        peer = WebSocketPeer(kind, echo_app(seen), ws_ping_interval=20, ws_ping_timeout=10)
        await settle()
        peer.read()  # the handshake's answer
        await peer.advance(19.99)
        assert peer.read() == b""
        await peer.advance(0.01)
        pings = frames(peer.read())
        assert [op for op, _ in pings] == [Opcode.PING.value]
        await peer.advance(9.99)
        assert not peer.ended
        await peer.advance(0.01)
        closing = frames(peer.read())
        assert closing and closing[0][0] == Opcode.CLOSE.value and closing[0][1][:2] == b"\x03\xf3"  # 1011
        assert peer.ended
        assert seen[-1] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_answers_pings_stays(kind: str) -> None:
    seen: list[Any] = []

    async def main() -> None:
        peer = WebSocketPeer(kind, echo_app(seen), ws_ping_interval=20, ws_ping_timeout=10)
        await settle()
        peer.read()
        await peer.advance(20)
        for _ in range(5):
            ((opcode, payload),) = frames(peer.read())
            assert opcode == Opcode.PING.value
            peer.send(masked(Opcode.PONG, payload))
            await peer.advance(10.01)  # past the pong deadline
            assert not peer.ended
            await peer.advance(9.99)  # the next ping is due
        assert seen == []

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_close_the_client_does_not_answer_ends_at_the_close_deadline(kind: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000})

    async def main() -> None:
        peer = WebSocketPeer(kind, app, ws_close_timeout=10, ws_ping_interval=0)
        await settle()
        closing = frames(after_head(peer.read(), kind))
        assert closing[-1][0] == Opcode.CLOSE.value
        await peer.advance(9.99)
        assert not peer.ended
        await peer.advance(0.01)
        assert peer.ended

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_protocol_error_behind_a_message_the_app_never_takes_fails_at_the_close_deadline(kind: str) -> None:
    # the messages before a client's protocol error are the app's to answer first; an app that never takes them
    # does not hold the failure past --ws-close-timeout
    taken: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        taken.append(await receive())
        await send({"type": "websocket.accept"})
        await asyncio.Event().wait()  # never receives again

    async def main() -> None:
        peer = WebSocketPeer(kind, app, ws_close_timeout=10, ws_ping_interval=0)
        await settle()
        peer.read()
        peer.send(masked(Opcode.TEXT, b"Hello") + bytes((0xA1, 0x80)) + b"mask")  # then reserved bits
        await settle()
        assert frames(peer.read()) == []  # the message waits for the app: no close yet
        await peer.advance(9.99)
        assert frames(peer.read()) == []
        await peer.advance(0.01)
        closing = frames(peer.read())
        assert closing and closing[0][0] == Opcode.CLOSE.value and closing[0][1][:2] == b"\x03\xea"  # 1002
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_an_app_that_neither_accepts_nor_refuses_is_answered_503_at_the_handshake_deadline(kind: str) -> None:
    outcome: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        outcome.append(await receive())  # the client's answer never comes: the deadline's disconnect does

    async def main() -> None:
        peer = WebSocketPeer(kind, app, timeout_ws_handshake=5)
        await settle()
        await peer.advance(4.99)
        assert peer.read() == b"" or kind == "http/2"
        assert not any(isinstance(e, h2.events.ResponseReceived) for e in peer.events)
        await peer.advance(0.01)
        if kind == "http/1.1":
            assert peer.read().startswith(b"HTTP/1.1 503 ")
        else:
            peer.read()
            (response,) = [e for e in peer.events if isinstance(e, h2.events.ResponseReceived)]
            assert dict(response.headers)[b":status"] == b"503"
        assert outcome == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]

    run(main)


# ---------------------------------------------------------------------------------------------------- HTTP/2


class H2Peer:
    """An HTTP/2 connection (h2's client) to an H2Driver on a fake transport and an injected clock."""

    def __init__(self, app: Any, **settings: Any) -> None:
        loop = asyncio.get_running_loop()
        self.clock = Clock(loop)
        self.ctx = context(app, self.clock, **settings)
        self.transport = Transport(loop)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.driver = H2Driver(self.ctx)
        self.transport.protocol = self.driver  # type: ignore[assignment]
        self.driver.connection_made(self.transport)  # type: ignore[arg-type]
        self.events: list[Any] = []
        self._seen = 0
        self.flush()

    def flush(self) -> None:
        """Exchange what each side has for the other."""
        data = self.client.data_to_send()
        if data:
            self.driver.data_received(data)
        new = self.transport.data[self._seen:]
        self._seen += len(new)
        if new:
            self.events += self.client.receive_data(new)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await settle()
        self.flush()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"t")]


def test_http2_an_idle_connection_gets_goaway_at_the_keep_alive_deadline() -> None:
    async def main() -> None:
        peer = H2Peer(hello, timeout_keep_alive=5)
        peer.client.send_headers(1, GET, end_stream=True)
        peer.flush()
        await settle()
        peer.flush()
        assert peer.of(h2.events.StreamEnded)
        await peer.advance(4.99)  # 5 s from the end of the last stream, not from the connection's start
        assert not peer.of(h2.events.ConnectionTerminated)
        await peer.advance(0.01)
        assert peer.of(h2.events.ConnectionTerminated) and peer.transport.eof_sent

    run(main)


def test_http2_a_body_the_app_waits_for_too_long_is_answered_408() -> None:
    outcome: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        outcome.append(await receive())
        outcome.append(await receive())

    async def main() -> None:
        peer = H2Peer(app, timeout_request_body=30)
        peer.client.send_headers(1, [(b":method", b"POST"), *GET[1:]])
        peer.client.send_data(1, b"part")
        peer.flush()
        await settle()
        await peer.advance(29.99)
        assert not peer.of(h2.events.ResponseReceived)
        await peer.advance(0.01)
        (response,) = peer.of(h2.events.ResponseReceived)
        assert dict(response.headers)[b":status"] == b"408"
        assert outcome == [{"type": "http.request", "body": b"part", "more_body": True}, {"type": "http.disconnect"}]

    run(main)


def test_http2_a_stream_whose_window_the_client_never_opens_is_reset_at_the_write_deadline() -> None:
    from tidegate.asgi.errors import ClientDisconnected

    outcome: list[str] = []

    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(10):
                await send({"type": "http.response.body", "body": b"x" * 100_000, "more_body": True})
        except ClientDisconnected:
            outcome.append("disconnected")

    async def main() -> None:
        peer = H2Peer(streamer, timeout_write=60)
        peer.client.send_headers(1, GET, end_stream=True)  # and never a WINDOW_UPDATE: 64 KiB is all it takes
        peer.flush()
        await settle()
        peer.flush()
        await peer.advance(59.99)
        assert not peer.of(h2.events.StreamReset)
        await peer.advance(0.01)
        assert [e.stream_id for e in peer.of(h2.events.StreamReset)] == [1]
        assert outcome == ["disconnected"]
        assert not peer.transport.aborted  # the stream, not the connection

    run(main)


def test_http2_a_connection_whose_client_takes_nothing_is_dropped_at_the_write_deadline() -> None:
    async def main() -> None:
        peer = H2Peer(hello, timeout_write=60)
        peer.transport.buffered = 1_000_000  # the kernel holds what the client does not take
        peer.driver.pause_writing()
        await peer.advance(59.99)
        assert not peer.transport.aborted
        peer.transport.buffered -= 1000  # it took a little: another period
        await peer.advance(60)
        assert not peer.transport.aborted
        await peer.advance(60)
        assert peer.transport.aborted

    run(main)


"""--timeout-write has one meaning on every transport: while bytes wait for the client, it must take some of them in
every period; a client that takes none for a whole period is dropped, a slow one that reads is not.  On an injected
clock (the loop's time and timers are the test's), with the fake transport of test_runtime_deadlines."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import pytest

from tidegate.asgi.errors import ClientDisconnected
from tidegate.asgi.scope import ConnectionInfo
from tidegate.config import Config
from tidegate.protocol.events import Request
from tidegate.runtime.context import ServerContext
from tidegate.runtime.h1 import H1Driver
from tidegate.runtime.ws import WebSocketDriver

from .test_runtime_deadlines import Clock, Transport, run, settle

WS_REQUEST = Request(b"GET", b"/ws", "1.1", [(b"host", b"t"), (b"upgrade", b"websocket"), (b"connection", b"upgrade"),
                                            (b"sec-websocket-key", base64.b64encode(b"k" * 16)),
                                            (b"sec-websocket-version", b"13")], True, False, 0, b"websocket")


# Each app sends at most this many pieces: once the transport no longer pauses, send() never waits.
PIECES = 50


def http_streamer(outcome: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(PIECES):
                await send({"type": "http.response.body", "body": b"x" * 100_000, "more_body": True})
        except ClientDisconnected:
            outcome.append("disconnected")

    return app


def ws_streamer(outcome: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            for _ in range(PIECES):
                await send({"type": "websocket.send", "bytes": b"x" * 100_000})
        except ClientDisconnected:
            outcome.append("disconnected")

    return app


def start_h1(state: ServerContext, transport: Transport) -> None:
    driver = H1Driver(state)
    transport.protocol = driver
    driver.connection_made(transport)  # type: ignore[arg-type]
    driver.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")


def start_ws(state: ServerContext, transport: Transport) -> None:
    driver = WebSocketDriver(state, ConnectionInfo(("127.0.0.1", 1234), ("127.0.0.1", 80), "http"), WS_REQUEST)
    transport.protocol = driver  # type: ignore[assignment]
    driver.connection_made(transport)  # type: ignore[arg-type]


TRANSPORTS: dict[str, tuple[Callable[[list[str]], Any], Callable[[ServerContext, Transport], None]]] = {
    "http/1.1": (http_streamer, start_h1),
    "websocket": (ws_streamer, start_ws),
}


@pytest.mark.parametrize("kind", list(TRANSPORTS))
def test_a_client_that_reads_slowly_gets_another_period_and_one_that_stops_is_dropped(kind: str) -> None:
    outcome: list[str] = []
    make_app, start = TRANSPORTS[kind]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock(loop)
        state = ServerContext(make_app(outcome), Config.from_flat(app="x:y", access_log=False, timeout_write=60),
                            clock)  # type: ignore[arg-type]
        transport = Transport(loop)
        transport.high_water = 0
        transport.buffered = 1_000_000  # what the kernel has not taken yet
        start(state, transport)
        await settle()
        assert transport.protocol is not None and transport.protocol.write_paused
        for _ in range(5):  # the client takes a little in every period: slow, not gone
            transport.buffered -= 1000
            clock.advance(60)
            await settle()
        assert not transport.aborted
        clock.advance(59.99)
        await settle()
        assert not transport.aborted
        clock.advance(0.01)  # a whole period without taking anything
        await settle()
        assert transport.aborted
        await settle()
        assert outcome == ["disconnected"]

    run(main)


@pytest.mark.parametrize("kind", list(TRANSPORTS))
def test_every_sender_waiting_on_a_paused_transport_wakes(kind: str) -> None:
    # any number of coroutines may wait for the client: none is forgotten when it reads again or is lost
    make_app, start = TRANSPORTS[kind]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock(loop)
        state = ServerContext(make_app([]), Config.from_flat(app="x:y", access_log=False), clock)  # type: ignore[arg-type]
        transport = Transport(loop)
        transport.high_water = 0
        start(state, transport)
        await settle()
        driver = transport.protocol
        assert driver is not None and driver.write_paused
        waits = [loop.create_task(driver.drain()) for _ in range(3)]
        await settle()
        assert not any(w.done() for w in waits)
        driver.resume_writing()
        await settle()
        assert all(w.done() and w.exception() is None for w in waits)
        driver.pause_writing()
        waits = [loop.create_task(driver.drain()) for _ in range(3)]
        await settle()
        driver.connection_lost(None)
        await settle()
        assert all(isinstance(w.exception(), ClientDisconnected) for w in waits)

    run(main)


def test_a_websocket_client_that_leaves_while_a_send_waits_is_dropped_at_once() -> None:
    # its FIN comes while bytes still wait for it: closing would wait for it to take them (it never will), and the
    # app's send() with it, until the write deadline
    outcome: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock(loop)
        ctx = ServerContext(ws_streamer(outcome), Config.from_flat(app="x:y", access_log=False), clock)  # type: ignore[arg-type]
        transport = Transport(loop)
        transport.high_water = 0
        transport.buffered = 1_000_000
        start_ws(ctx, transport)
        await settle()
        driver = transport.protocol
        assert driver is not None and driver.write_paused
        assert driver.eof_received() is None
        await settle()
        assert transport.aborted
        assert outcome == ["disconnected"]

    run(main)

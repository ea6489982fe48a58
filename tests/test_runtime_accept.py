"""The listeners take every connection waiting in the backlog each time the socket is readable: under load, a burst
of new connections must not wait loop iteration after loop iteration in the kernel's queue (their requests waited
with them: the multi-second p99 at a thousand connections, when uvloop's servers accepted one per iteration)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tidegate.config import Config
from tidegate.runtime.server import Listeners

WAIT = 10.0


def test_one_wakeup_accepts_the_whole_backlog() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    clients: list[socket.socket] = []
    opened: list[asyncio.BaseTransport] = []
    done = loop.create_future()

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport)
            if len(opened) == len(clients) and not done.done():
                done.set_result(None)

    try:
        listeners = Listeners(loop, Config.from_flat(app="x:y"))
        loop.run_until_complete(listeners.listen([listener], Recorder, None))
        # the handshakes complete in the kernel while the loop is not running: all 64 wait in the backlog
        clients += [socket.create_connection(listener.getsockname(), timeout=WAIT) for _ in range(64)]
        loop.run_until_complete(asyncio.sleep(0))  # one pass of the loop: the socket is readable once
        assert listeners._opening == 64 or len(opened) == 64  # every one taken (being opened, or opened)
        loop.run_until_complete(asyncio.wait_for(done, WAIT))
        assert len(opened) == 64
        listeners.close()
    finally:
        for transport in opened:
            transport.close()
        for client in clients:
            client.close()
        listener.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.mark.parametrize("settled", [True, False])
def test_a_connection_accepted_before_shutdown_is_opened_or_dropped_not_lost(settled: bool) -> None:
    # shutdown closes the listeners, then settles: what was accepted opens (and the drain that follows finds it),
    # or, when the shutdown is cut short, is dropped with its socket closed, never left half made
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    opened: list[asyncio.BaseTransport] = []

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport)

    client: socket.socket | None = None
    try:
        listeners = Listeners(loop, Config.from_flat(app="x:y"))
        loop.run_until_complete(listeners.listen([listener], Recorder, None))
        client = socket.create_connection(listener.getsockname(), timeout=WAIT)
        listeners._accept(listener)  # accepted: its transport is made by a task not yet run
        assert listeners._opening == 1 and not opened
        listeners.close()
        if settled:
            loop.run_until_complete(listeners.settle(WAIT))
            assert len(opened) == 1
        else:
            listeners.abandon()
            loop.run_until_complete(asyncio.sleep(0))
            assert not opened and listeners._opening == 0
            assert client.recv(1) == b""  # the server closed its side
    finally:
        for transport in opened:
            transport.close()
        if client is not None:
            client.close()
        listener.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

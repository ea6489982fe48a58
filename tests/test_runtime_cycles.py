"""No reference cycles left behind: a closed connection, an upgraded one and each request are freed by reference
counting alone, so the cyclic garbage collector finds nothing of the server's to collect.

A server with many connections keeps a loop pass of requests alive at once; what it leaves to the collector is
walked again and again (see ``--gc-threshold``), and memory it holds waits for the next collection.  Each test
serves on 127.0.0.1 in this process with the collector off, then asks it what it would have had to find.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gc
import os
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import uvloop

import tidegate
from tidegate.runtime.server import serve

from .ops_apps import app  # HTTP: a small JSON answer; WebSocket: an echo

ROUNDS = 40
TIMEOUT = 10.0


def servers_garbage(exercise: Callable[[int], Awaitable[None]]) -> collections.Counter[str]:
    """Serve, warm up, then run ``exercise(port)`` ROUNDS times with the collector off: the server's objects (those
    of tidegate's classes) the collector would have found in cycles."""

    async def main() -> collections.Counter[str]:
        stop = asyncio.Event()
        started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        config = tidegate.Config.from_flat(host="127.0.0.1", port=0, lifespan="off", access_log=False,
                                           log_level="warning")
        server = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait, on_started=started.set_result))
        port = (await asyncio.wait_for(started, TIMEOUT))[0].getsockname()[1]
        try:
            for _ in range(3):
                await asyncio.wait_for(exercise(port), TIMEOUT)
            gc.collect()
            gc.disable()
            try:
                for _ in range(ROUNDS):
                    await asyncio.wait_for(exercise(port), TIMEOUT)
                for _ in range(20):  # the server's side of each close runs in the loop passes after the client's
                    await asyncio.sleep(0)
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                found = collections.Counter(type(o).__qualname__ for o in gc.garbage
                                            if type(o).__module__.startswith("tidegate"))
            finally:
                gc.garbage.clear()
                gc.set_debug(0)
                gc.enable()
        finally:
            stop.set()
            await asyncio.wait_for(server, TIMEOUT)
        return found

    return uvloop.run(main())


async def http1_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # a keep-alive request, then the connection's last
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"}")  # the end of the JSON body
    writer.close()
    await writer.wait_closed()


async def websocket_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                 b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % key)
    await reader.readuntil(b"\r\n\r\n")
    mask = b"\x01\x02\x03\x04"
    writer.write(b"\x81\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi")))
    assert await reader.readexactly(4) == b"\x81\x02hi"
    writer.close()  # without a closing handshake: the server sees the connection lost
    await writer.wait_closed()


async def http2_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    ended = 0
    for stream_id in (1, 3):
        client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                        (b":authority", b"x")], end_stream=True)
    writer.write(client.data_to_send())
    while ended < 2:
        data = await reader.read(65536)
        assert data, "the server closed the connection"
        ended += sum(isinstance(event, h2.events.StreamEnded) for event in client.receive_data(data))
        writer.write(client.data_to_send())
    client.close_connection()
    writer.write(client.data_to_send())
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("exercise", [http1_connection, websocket_connection, http2_connection],
                         ids=["http1", "websocket", "http2"])
def test_nothing_is_left_to_the_cyclic_collector(exercise: Callable[[int], Awaitable[None]]) -> None:
    assert servers_garbage(exercise) == collections.Counter()

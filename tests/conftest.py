"""Shared fixtures: a real tidegate server on 127.0.0.1 port 0, run in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tidegate.config import Config
from tidegate.runner import new_event_loop
from tidegate.runtime.server import serve

START_TIMEOUT = 10.0


class ServerThread:
    """Serve ``app`` in a thread with its own event loop; ``port``/``url`` once started."""

    def __init__(self, app: Any, loop: str = "uvloop", **settings: Any) -> None:
        settings.setdefault("port", 0)
        settings.setdefault("access_log", False)
        settings.setdefault("lifespan", "off")
        settings.setdefault("app", "unused:app")
        self.config = Config.from_flat(loop=loop, **settings)
        self.app = app
        self.loop_kind = loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sockets: list[socket.socket] = []
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tidegate-test-server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        loop = new_event_loop(self.loop_kind)
        self.loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.app, self.config, shutdown_trigger=self._stop.wait, on_started=self._on_started)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()
            loop.close()

    def _on_started(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self._started.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise TimeoutError("the server did not start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the server did not stop")

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def run_server() -> Iterator[Any]:
    """``run_server(app, **settings)`` starts a server; every one started is stopped after the test."""
    servers: list[ServerThread] = []

    def start(app: Any, **settings: Any) -> ServerThread:
        server = ServerThread(app, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def raw_request(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes on a fresh connection; return everything read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)

"""Graceful shutdown end to end: stop accepting, close idle connections at once, let in-flight requests finish
within the deadline, cancel them past it, run lifespan shutdown, exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import pytest

from .apps import Gate
from .conftest import LogRecords, RawClient
from .test_e2e_http2 import H2Client


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def recorded_lifespan(events: list[str], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    events.append("lifespan shutdown")
    await send({"type": "lifespan.shutdown.complete"})


def gated_app(events: list[str], started: Gate, release: Gate, *, stream: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await recorded_lifespan(events, receive, send)
            return
        if scope["path"] != "/slow":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"fast"})
            return
        if stream:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        started.set()
        try:
            await release.wait(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        if not stream:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"slow"})
        events.append("slow answered")

    return app


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_in_flight_requests_finish_idle_connections_close_at_once(run_server: Any, loop: str) -> None:
    events: list[str] = []
    started, release = Gate(), Gate()
    server = run_server(gated_app(events, started, release), loop=loop, lifespan="on",
                        timeout_graceful_shutdown=30)
    port = server.port
    with RawClient(port) as idle, RawClient(port) as busy:
        idle.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        assert idle.read_response().body == b"fast"
        busy.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
        started.wait_sync()
        server.request_stop()
        assert idle.wait_closed() == b""  # at once: the slow request is still running
        assert refused(port)
        assert events == []
        release.set()
        response = busy.read_response()
        assert response.body == b"slow"
        assert response.header(b"connection") == b"close"
        assert busy.wait_closed() == b""
    server.stop()
    assert events == ["slow answered", "lifespan shutdown"]


@pytest.mark.parametrize("stream", [False, True])
def test_requests_past_the_deadline_are_cancelled(run_server: Any, loop: str, logs: LogRecords,
                                                  stream: bool) -> None:
    events: list[str] = []
    started, release = Gate(), Gate()
    server = run_server(gated_app(events, started, release, stream=stream), loop=loop, lifespan="on",
                        timeout_graceful_shutdown=0.2)
    with RawClient(server.port) as busy:
        busy.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
        started.wait_sync()
        server.request_stop()
        seen = busy.wait_closed()
    if stream:
        assert seen.startswith(b"HTTP/1.1 200 OK\r\n") and b"begun" in seen
        assert not seen.endswith(b"0\r\n\r\n")  # the client can tell the body was cut
    else:
        assert seen == b""
    server.stop()
    assert events == ["cancelled", "lifespan shutdown"]
    assert any(r.levelno == logging.WARNING and "graceful shutdown" in r.getMessage() for r in logs.records)
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


def leaving_app(events: list[str], left: Gate, release: Gate) -> Any:
    """An app whose client leaves mid-request: it hears http.disconnect, then cleans up until ``release``."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await recorded_lifespan(events, receive, send)
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        events.append("left")
        left.set()
        try:
            await release.wait(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("cleaned up")

    return app


def client_left(run_server: Any, loop: str, graceful: float, protocol: str = "http/1.1"
                ) -> tuple[Any, list[str], Gate]:
    """A server whose app heard its client leave mid-request and now cleans up until the Gate returned is set."""
    events: list[str] = []
    left, release = Gate(), Gate()
    server = run_server(leaving_app(events, left, release), loop=loop, lifespan="on",
                        timeout_graceful_shutdown=graceful)
    if protocol == "h2":
        h2 = H2Client(server.port)
        h2.request("/")
        h2.close()
    else:
        with RawClient(server.port) as client:
            client.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    left.wait_sync()
    return server, events, release


def test_shutdown_waits_for_an_app_whose_client_left(run_server: Any, loop: str, logs: LogRecords) -> None:
    server, events, release = client_left(run_server, loop, 30)
    server.request_stop()
    logs.wait_for(lambda r: r.getMessage().startswith("waiting for 0 connection(s) and 1 app(s) whose client had left"))
    release.set()
    server.stop()
    assert events == ["left", "cleaned up", "lifespan shutdown"]


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_an_app_whose_client_left_is_cancelled_past_the_deadline(run_server: Any, loop: str, logs: LogRecords,
                                                                 protocol: str) -> None:
    server, events, _ = client_left(run_server, loop, 0.2, protocol)
    server.stop()
    assert events == ["left", "cancelled", "lifespan shutdown"]  # cancelled, and unwound, before the server stopped
    assert any(r.levelno == logging.WARNING and "1 app(s) whose client had left" in r.getMessage()
               for r in logs.records)


def test_sigterm_drains_and_exits_0(server_process: Any) -> None:
    process = server_process("tests.apps:slow_body_app", "--port", "0", "--timeout-graceful-shutdown", "30")
    port = process.wait_serving()
    with RawClient(port) as idle, RawClient(port) as busy:
        idle.send(b"POST /idle HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok")
        assert idle.read_response().body == b"ok"
        busy.send(b"POST /busy HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nab")
        process.stdout.wait_for("request: /busy")
        process.signal(signal.SIGTERM)
        assert idle.wait_closed() == b""
        assert refused(port)
        busy.send(b"cde")
        response = busy.read_response()
        assert response.body == b"abcde"
        assert response.header(b"connection") == b"close"
        assert busy.wait_closed() == b""
    assert process.wait() == 0
    assert process.stdout.text().endswith("request: /busy\nlifespan: shutdown\n")


def test_sigterm_past_the_deadline_cancels_and_exits_0(server_process: Any) -> None:
    process = server_process("tests.apps:slow_body_app", "--port", "0", "--timeout-graceful-shutdown", "0.2")
    port = process.wait_serving()
    with RawClient(port) as busy:
        busy.send(b"POST /busy HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nab")
        process.stdout.wait_for("request: /busy")
        process.signal(signal.SIGTERM)
        assert busy.wait_closed() == b""
    assert process.wait() == 0
    assert process.stdout.text().endswith("request: /busy\napp: cancelled\nlifespan: shutdown\n")
    assert "graceful shutdown timed out" in process.stderr.text()


def test_a_second_signal_stops_at_once(server_process: Any) -> None:
    process = server_process("tests.apps:slow_body_app", "--port", "0", "--timeout-graceful-shutdown", "60")
    port = process.wait_serving()
    with RawClient(port) as busy:
        busy.send(b"POST /busy HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nab")
        process.stdout.wait_for("request: /busy")
        process.signal(signal.SIGINT)
        process.stderr.wait_for("shutting down")
        process.signal(signal.SIGINT)
        assert busy.wait_closed() == b""
    assert process.wait() == 0
    assert "lifespan: shutdown" in process.stdout.text()

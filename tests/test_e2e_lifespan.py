"""Lifespan end to end: in this process (``serve()``) and through the command line (exit codes, signals)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import httpx
import pytest

from tidegate.config import Config
from tidegate.runtime.lifespan import LifespanFailure
from tidegate.runtime.server import serve

from .apps import hello
from .conftest import LogRecords


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def recording_app(events: list[str], *, startup: str = "complete", shutdown: str = "complete") -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            events.append(f"scope {scope['asgi']['version']}")
            message = await receive()
            events.append(message["type"])
            if startup == "failed":
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            events.append(message["type"])
            if shutdown == "raise":
                raise RuntimeError("shutdown went wrong")
            if shutdown == "failed":
                await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
            return
        events.append(f"request {scope['state'].get('db')}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_startup_then_requests_then_shutdown(run_server: Any, loop: str) -> None:
    events: list[str] = []
    server = run_server(recording_app(events), loop=loop, lifespan="auto")
    assert httpx.get(server.url, timeout=5).text == "ok"
    server.stop()
    assert events == ["scope 3.0", "lifespan.startup", "request connected", "lifespan.shutdown"]


def test_auto_serves_an_app_that_raises_on_lifespan(run_server: Any, loop: str, logs: LogRecords) -> None:
    server = run_server(hello, loop=loop, lifespan="auto")  # hello asserts the scope type is http
    assert httpx.get(server.url, timeout=5).text == "Hello, world!"
    server.stop()
    notes = [r for r in logs.records if "lifespan" in r.getMessage().lower()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "AssertionError" in notes[0].getMessage()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


def test_off_never_calls_the_app_with_lifespan(run_server: Any) -> None:
    events: list[str] = []
    server = run_server(recording_app(events), lifespan="off")
    assert httpx.get(server.url, timeout=5).text == "ok"
    server.stop()
    assert events == ["request None"]


def test_on_makes_an_app_that_raises_fatal(run_server: Any, logs: LogRecords) -> None:
    with pytest.raises(LifespanFailure, match="AssertionError"):
        run_server(hello, lifespan="on")
    assert any(r.levelno == logging.ERROR and r.exc_info for r in logs.records)


def test_startup_failed_raises_with_the_apps_message(loop: str) -> None:
    events: list[str] = []
    served: list[Any] = []

    async def main() -> None:
        config = Config.from_flat(app="-", port=0, lifespan="auto", access_log=False)
        await serve(recording_app(events, startup="failed"), config, on_started=served.append)

    event_loop = asyncio.new_event_loop() if loop == "asyncio" else _uvloop_factory()  # (asyncio.Runner: 3.11+)
    try:
        with pytest.raises(LifespanFailure, match=r"^no database$"):
            event_loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        event_loop.close()
    assert not served  # nothing was ever bound or served
    assert events == ["scope 3.0", "lifespan.startup"]


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@pytest.mark.parametrize("shutdown", ["failed", "raise"])
def test_a_failed_shutdown_is_logged(run_server: Any, logs: LogRecords, shutdown: str) -> None:
    events: list[str] = []
    server = run_server(recording_app(events, shutdown=shutdown), lifespan="on")
    server.stop()
    assert events[-1] == "lifespan.shutdown"
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert ("could not flush" if shutdown == "failed" else "shutdown went wrong") in (
        record.getMessage() + str(record.exc_info[1] if record.exc_info else ""))


# ---------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(("how", "message"), [("fail", "the database is unreachable"),
                                              ("raise", "the cache would not warm up")])
def test_cli_startup_failure_exits_3_with_the_apps_message(server_process: Any, how: str, message: str) -> None:
    process = server_process("tests.apps:lifespan_app", "--port", "0", env={"LIFESPAN_TEST_STARTUP": how})
    assert process.wait() == 3
    assert message in process.stderr.text()
    assert "serving on" not in process.stderr.text()
    assert "lifespan: shutdown" not in process.stdout.text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_shutdown_runs_on_signals(server_process: Any, sig: int) -> None:
    process = server_process("tests.apps:lifespan_app", "--port", "0", "--lifespan", "on")
    process.wait_serving()
    process.stdout.wait_for("lifespan: startup")
    state = httpx.get(process.url + "/", timeout=5).json()["state"]
    assert state == {"greeting": "hello from lifespan"}
    process.signal(sig)
    assert process.wait() == 0
    assert "lifespan: shutdown" in process.stdout.text()
    assert "Traceback" not in process.stderr.text()


def test_cli_shutdown_runs_when_serving_fails(server_process: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = server_process("tests.apps:lifespan_app", "--port", str(port))
        code = process.wait()
    assert code != 0
    assert f"{port}" in process.stderr.text()  # the error names what could not be bound
    assert process.stdout.text() == "lifespan: startup\nlifespan: shutdown\n"


def test_cli_a_signal_during_a_hanging_startup_stops(server_process: Any) -> None:
    process = server_process("tests.apps:hanging_startup_app", "--port", "0")
    process.stdout.wait_for("lifespan: startup begun")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert "stopping before the server started" in process.stderr.text()
    assert "serving on" not in process.stderr.text()

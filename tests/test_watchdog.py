"""The blocked-loop detector: what it reports, once per incident, and that it costs nothing when off."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tidegate.runtime.watchdog import HINT, Watchdog, analyse, describe_scope

WAIT = 10.0
THRESHOLD = 0.2


class Reports(logging.Handler):
    """Collects the watchdog's warnings; ``seen`` is set by the first one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "event loop has been blocked" in message:
            self.messages.append(message)
            self.seen.set()

    def wait_and_reset(self) -> None:
        assert self.seen.wait(WAIT), "the watchdog reported nothing"
        self.seen.clear()


@pytest.fixture
def reports() -> Iterator[Reports]:
    handler = Reports()
    logger = logging.getLogger("tidegate.error")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def make_blocking_app(reports: Reports) -> Any:
    """An async app whose views block the event loop until the watchdog has reported, then a little longer."""

    def slow_query() -> None:  # what a synchronous database call looks like from the loop
        deadline = time.monotonic() + WAIT
        while not reports.seen.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(4 * THRESHOLD)  # still blocked: the same incident must not be reported twice

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            slow_query()
        elif scope["path"] == "/wait":
            reports.seen.wait(WAIT)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_reports_the_request_and_the_application_frame(run_server, reports):
    server = run_server(make_blocking_app(reports), warn_blocking=THRESHOLD)
    response = httpx.get(server.url + "/slow?q=1", timeout=WAIT)
    assert response.status_code == 200
    assert len(reports.messages) == 1, "one warning per incident"
    message = reports.messages[0]
    assert "while handling GET /slow?q=1 from 127.0.0.1:" in message
    assert f"--warn-blocking {THRESHOLD:g}" in message
    assert "Stuck in slow_query() at " + __file__ in message
    assert "time.sleep(0.05)" in message  # the source line the loop is stuck on
    assert "in app" in message and "slow_query()" in message  # the app frames above it, outermost first
    assert message.index(", in app") < message.index(", in slow_query")
    assert HINT in message and "sync_to_async" in message and "asyncio.to_thread" in message
    stack = message.split("Application stack")[1]
    assert "/tidegate/" not in stack.replace(__file__, "") and "asyncio" not in stack.split(HINT)[0]

    # the loop runs again: a later stall is a new incident
    reports.seen.clear()
    assert httpx.get(server.url + "/slow", timeout=WAIT).status_code == 200
    assert len(reports.messages) == 2
    assert httpx.get(server.url + "/fast", timeout=WAIT).status_code == 200
    assert len(reports.messages) == 2


def test_stuck_in_a_library_names_the_application_frame(run_server, reports):
    """The innermost frames are the standard library's (threading); the report points at the app's call."""
    server = run_server(make_blocking_app(reports), warn_blocking=THRESHOLD, lifespan="auto")
    assert httpx.get(server.url + "/wait", timeout=WAIT).status_code == 200
    message = reports.messages[0]
    assert "Stuck in app() at " + __file__ in message
    assert "threading.py" in message  # shown in the stack, innermost last
    assert message.index("in app") < message.index("threading.py")


def test_request_handled_in_a_task_of_its_own(run_server, reports):
    """Django runs each request in a new task: no exchange frame under it, the request object names it."""

    class Request:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

    async def view(request: Request) -> None:
        reports.seen.wait(WAIT)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.get_running_loop().create_task(view(Request(scope)))
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    server = run_server(app, warn_blocking=THRESHOLD)
    assert httpx.delete(server.url + "/items/7", timeout=WAIT).status_code == 204
    assert "while handling DELETE /items/7 from 127.0.0.1:" in reports.messages[0]
    assert "Stuck in view() at " + __file__ in reports.messages[0]


@pytest.mark.skipif(importlib.util.find_spec("tidegate.runtime.ws") is None,
                    reason="this build of tidegate does not serve WebSocket")
def test_reports_a_websocket_session(run_server, reports):
    from websockets.sync.client import connect

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        reports.seen.wait(WAIT)  # a blocking call while handling a message
        await send({"type": "websocket.send", "text": message["text"]})

    server = run_server(app, warn_blocking=THRESHOLD)
    with connect(server.url.replace("http://", "ws://") + "/live?room=1", open_timeout=WAIT) as ws:
        ws.send("ping")
        assert ws.recv(WAIT) == "ping"
    assert "while handling WebSocket /live?room=1 from 127.0.0.1:" in reports.messages[0]
    assert "Stuck in app() at " + __file__ in reports.messages[0]


@pytest.mark.skipif(importlib.util.find_spec("tidegate.runtime.h2") is None,
                    reason="this build of tidegate does not speak HTTP/2")
def test_reports_a_request_over_http2(run_server, reports):
    server = run_server(make_blocking_app(reports), warn_blocking=THRESHOLD)
    with httpx.Client(base_url=server.url, http1=False, http2=True, timeout=WAIT) as client:
        assert client.get("/wait?h=2").status_code == 200
    assert "while handling GET /wait?h=2 from 127.0.0.1:" in reports.messages[0]


def test_blocking_outside_a_request(run_server, reports):
    server = run_server(make_blocking_app(reports), warn_blocking=THRESHOLD)

    def blocking_callback() -> None:
        reports.seen.wait(WAIT)

    assert server.loop is not None
    server.loop.call_soon_threadsafe(blocking_callback)
    reports.wait_and_reset()
    assert "outside any request" in reports.messages[0]
    assert "Stuck in blocking_callback() at " + __file__ in reports.messages[0]
    assert httpx.get(server.url + "/fast", timeout=WAIT).status_code == 200


def test_off_by_default_installs_nothing(run_server):
    def watchdogs() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "tidegate-watchdog"]

    assert not watchdogs()
    def heartbeats(server: Any) -> list[Any]:
        return [h for h in list(server.loop._scheduled) if "_beat" in repr(h)]  # asyncio's timer heap

    server = run_server(make_blocking_app(Reports()), loop="asyncio")
    assert httpx.get(server.url + "/fast", timeout=WAIT).status_code == 200
    assert not watchdogs()
    assert heartbeats(server) == []
    on = run_server(make_blocking_app(Reports()), warn_blocking=5.0, loop="asyncio")
    assert httpx.get(on.url + "/fast", timeout=WAIT).status_code == 200
    assert len(watchdogs()) == 1
    assert len(heartbeats(on)) == 1
    on.stop()
    assert not watchdogs()


def test_no_report_while_the_loop_runs(run_server, reports):
    server = run_server(make_blocking_app(reports), warn_blocking=5.0, loop="asyncio")
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        for _ in range(50):
            assert client.get("/fast").status_code == 200
    assert reports.messages == []


class FakeClockWatchdog(Watchdog):
    def __init__(self, threshold: float) -> None:
        self.now = 0.0
        super().__init__(None, threshold, clock=lambda: self.now)  # type: ignore[arg-type]
        self.reports: list[float] = []

    def report(self, blocked_for: float) -> None:
        self.reports.append(blocked_for)


def test_once_per_incident_with_a_fake_clock():
    dog = FakeClockWatchdog(1.0)
    assert dog.period == 0.25 and dog.last_beat == 0.0
    # the next beat is due at 0.25; a stall counts from then
    assert dog.check(1.0) == pytest.approx(0.25)
    assert dog.reports == []
    assert dog.check(1.25) == dog.period  # 1.0 s late: reported
    assert dog.reports == [pytest.approx(1.0)]
    for now in (1.5, 2.0, 10.0):
        assert dog.check(now) == dog.period  # the same incident: not again
    assert len(dog.reports) == 1
    dog.last_beat = 10.0  # the loop ran again
    assert dog.check(10.1) == pytest.approx(1.0 - (10.1 - 10.0 - 0.25))
    assert dog.check(11.3) == dog.period
    assert len(dog.reports) == 2 and dog.incidents == 2


def test_period_follows_the_threshold():
    assert FakeClockWatchdog(0.2).period == pytest.approx(0.05)
    assert FakeClockWatchdog(60.0).period == 1.0
    assert FakeClockWatchdog(0.001).period == 0.005


def test_describe_scope():
    assert describe_scope({"type": "http", "method": "POST", "path": "/a\nb", "query_string": b"x=1",
                           "client": ("::1", 5)}) == "POST /a\\nb?x=1 from ::1:5"
    assert describe_scope({"type": "websocket", "path": "/ws", "client": None}) == "WebSocket /ws"
    assert describe_scope({"type": "lifespan"}) is None
    assert describe_scope(None) is None


def test_analyse_without_a_request():
    handling, frames = analyse(None)
    assert handling == "outside any request" and frames == []
    import sys
    handling, frames = analyse(sys._getframe())
    assert handling == "outside any request"
    assert frames[-1].f_code.co_name == "test_analyse_without_a_request"

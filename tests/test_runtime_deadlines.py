"""The HTTP/1.1 driver's per-phase deadlines, on an injected clock: a fake transport, and a loop whose time and
timers are the test's (tasks and futures run on a real event loop).  No test here sleeps or measures time.

End to end, with short configured timeouts: test_e2e_limits.py."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidegate.asgi.errors import ClientDisconnected
from tidegate.config import Config
from tidegate.runtime.context import ServerContext
from tidegate.runtime.h1 import LINGER, H1Driver


class Timer:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The loop the driver sees: ``time()`` and timers are virtual, the rest is the running event loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 1000.0
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.armed = 0  # timers created
        self.cancelled = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        self.armed += 1
        timer = Timer(when, callback, args)
        original = timer.cancel

        def cancel() -> None:
            self.cancelled += 1
            original()

        timer.cancel = cancel  # type: ignore[method-assign]
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> asyncio.Handle:
        return self.loop.call_soon(callback, *args)

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.loop.create_task(coro)

    def create_future(self) -> asyncio.Future[Any]:
        return self.loop.create_future()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, running the timers that come due, in order, each at its own time."""
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback(*timer.args)
        self.now = target

    def pending(self) -> list[float]:
        return sorted(when for when, _, timer in self._timers if not timer.cancelled)


class Transport:
    """Records what the driver does to its connection; ``buffered`` stands for bytes the client has not taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: H1Driver | None = None
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_sent = False
        self.reading = True
        self.buffered = 0
        #: past this many bytes written, the transport tells its protocol to pause writing (a client not reading)
        self.high_water: int | None = None
        self._lost = False

    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def write(self, data: bytes) -> None:
        assert not self.eof_sent
        self.written.append(bytes(data))
        if self.high_water is not None and sum(map(len, self.written)) > self.high_water:
            self.high_water = None
            assert self.protocol is not None
            self.protocol.pause_writing()

    def writelines(self, items: list[bytes]) -> None:
        for item in items:
            self.write(item)

    def close(self) -> None:
        self.closed = True
        if not self.buffered:
            self._lose()

    def abort(self) -> None:
        self.aborted = self.closed = True
        self._lose()

    def _lose(self) -> None:
        if not self._lost and self.protocol is not None:
            self._lost = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_sent = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def settle() -> None:
    """Let the app tasks and callbacks that are ready run (on the real loop; no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Harness:
    def __init__(self, app: Any, **settings: Any) -> None:
        loop = asyncio.get_running_loop()
        self.clock = Clock(loop)
        self.state = ServerContext(app, Config.from_flat(app="x:y", access_log=False, **settings), self.clock)  # type: ignore[arg-type]
        self.transport = Transport(loop)
        self.driver = self.connect()

    def connect(self) -> H1Driver:
        driver = H1Driver(self.state)
        self.transport.protocol = driver
        driver.connection_made(self.transport)  # type: ignore[arg-type]
        return driver

    def send(self, data: bytes) -> None:
        self.driver.data_received(data)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await settle()

    @property
    def lost(self) -> bool:
        return self.driver not in self.state.connections


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------------------------------------------- idle and head


def test_an_idle_connection_closes_quietly_at_the_keep_alive_deadline() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5)
        await h.advance(4.99)
        assert not h.transport.closed
        await h.advance(0.01)
        assert h.transport.closed and h.transport.data == b"" and h.lost

    run(main)


def test_keep_alive_runs_from_the_end_of_the_last_response() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5)
        await h.advance(3)
        h.send(GET)
        await settle()
        assert status_of(h.transport.data) == 200
        await h.advance(4.99)  # 8 s after the connection opened, 4.99 after the response
        assert not h.transport.closed
        await h.advance(0.01)
        assert h.transport.closed and h.transport.data.count(b"HTTP/1.1") == 1

    run(main)


def test_a_waiting_keep_alive_connection_holds_no_exchange_and_still_knows_it_served_one() -> None:
    # an idle connection does not keep its last request's exchange, scope and task (0.9 KiB each); the HTTP/2
    # preface is still refused once a request has come (prior knowledge is for a connection's first bytes only)
    async def main() -> None:
        h = Harness(hello)
        h.send(GET)
        await settle()
        assert status_of(h.transport.data) == 200
        assert h.driver._last is None and h.driver.current is None and h.driver.task is None
        h.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        await settle()
        assert b"HTTP/1.1 505 " in h.transport.data

    run(main)


def test_a_head_trickled_byte_by_byte_gets_408_at_the_header_deadline() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5, timeout_request_header=30)
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
        await h.advance(1)
        h.send(head[:1])  # the head's first byte, 1 s in: its deadline is 31 s
        for byte in range(1, 30):  # a byte a second does not push the deadline back
            await h.advance(1)
            h.send(head[byte:byte + 1])
            assert h.transport.data == b""
        await h.advance(0.99)
        assert h.transport.data == b""
        await h.advance(0.01)
        assert status_of(h.transport.data) == 408
        assert b"connection: close" in h.transport.data
        assert h.transport.eof_sent  # the answer is followed by a FIN; the connection lingers, then closes
        await h.advance(LINGER)
        assert h.lost

    run(main)


def test_the_header_deadline_is_per_head() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=100, timeout_request_header=10)
        for _ in range(3):  # each head takes 9 s: none is late
            h.send(GET[:5])
            await h.advance(9)
            h.send(GET[5:])
            await settle()
        assert h.transport.data.count(b"HTTP/1.1 200") == 3
        h.send(GET[:5])
        await h.advance(10)
        assert status_of(h.transport.data.split(b"ok")[-1]) == 408

    run(main)


def test_a_header_timeout_shorter_than_keep_alive_is_kept() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5, timeout_request_header=1)
        await h.advance(0.5)
        h.send(b"GET / HT")
        await h.advance(0.99)
        assert h.transport.data == b""
        await h.advance(0.01)
        assert status_of(h.transport.data) == 408

    run(main)


def test_empty_lines_do_not_begin_a_head() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5, timeout_request_header=30)
        await h.advance(1)
        h.send(b"\r\n")
        await h.advance(4)
        assert h.transport.closed and h.transport.data == b""  # idle: closed quietly at the keep-alive deadline

    run(main)


def test_a_pipelined_head_cut_short_is_timed_from_the_end_of_the_response_before_it() -> None:
    release = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def main() -> None:
        h = Harness(slow, timeout_keep_alive=5, timeout_request_header=30)
        h.send(GET + b"GET / HTTP/1.1\r\n")  # a request and the start of the next head
        await h.advance(100)  # the app takes its time: no deadline runs meanwhile
        assert h.transport.data == b""
        release.set()
        await settle()
        assert h.transport.data.count(b"HTTP/1.1 200") == 1
        await h.advance(29.99)
        assert h.transport.data.count(b"HTTP/1.1") == 1
        await h.advance(0.01)
        assert status_of(h.transport.data.split(b"ok", 1)[1]) == 408

    run(main)


def test_no_timer_per_request() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_keep_alive=5)
        for _ in range(1000):
            h.send(GET)
            await settle()
        assert h.transport.data.count(b"HTTP/1.1 200") == 1000
        assert h.clock.armed == 1 and h.clock.cancelled == 0  # one timer, armed when the connection opened
        await h.advance(5)
        assert h.transport.closed

    run(main)


# ---------------------------------------------------------------------------------------------------- pipelining


def test_a_flood_of_pipelined_requests_stays_bounded_in_the_driver() -> None:
    release = asyncio.Event()
    answered = [0]

    async def blocked(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)
        answered[0] += 1

    async def main() -> None:
        h = Harness(blocked, limit_pipeline_depth=16)
        count = 10_000
        h.send(GET * count)  # one read of 270 KB: far more requests than may be queued
        await settle()
        assert not h.transport.reading  # reading paused: the kernel holds what else comes
        bound = 16 + 65536 // len(GET) + 1  # at most one parsed slice past the depth
        assert len(h.driver.pipeline) <= bound
        assert h.driver.conn.held
        release.set()
        longest = 0
        for _ in range(count * 4):
            await asyncio.sleep(0)
            longest = max(longest, len(h.driver.pipeline))
            if answered[0] == count and h.transport.data.count(b"HTTP/1.1 200") == count:
                break  # every app answered, and its response left at the end of its loop pass
        assert answered[0] == count and h.transport.data.count(b"HTTP/1.1 200") == count
        assert longest <= bound

    run(main)


# ---------------------------------------------------------------------------------------------------- body


def body_reader(received: list[dict[str, Any]], respond_first: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if message["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})

    return app


POST = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"


def test_a_stalled_body_gets_408_and_the_app_hears_disconnect() -> None:
    async def main() -> None:
        received: list[dict[str, Any]] = []
        h = Harness(body_reader(received), timeout_request_body=60)
        h.send(POST + b"abc")
        await settle()
        await h.advance(59)  # the app waits for the rest from its second receive(), 0 s in
        h.send(b"de")  # a piece: the wait starts again from the next receive()
        await settle()
        await h.advance(59.99)
        assert h.transport.data == b""
        await h.advance(0.01)
        assert [m["type"] for m in received] == ["http.request", "http.request", "http.disconnect"]
        assert status_of(h.transport.data) == 408

    run(main)


def test_a_stalled_body_after_the_response_started_closes_the_connection() -> None:
    async def main() -> None:
        received: list[dict[str, Any]] = []
        h = Harness(body_reader(received, respond_first=True), timeout_request_body=10)
        h.send(POST + b"abc")
        await settle()
        await h.advance(10)
        assert received[-1] == {"type": "http.disconnect"}
        assert b"408" not in h.transport.data and b"started" in h.transport.data
        assert h.transport.closed

    run(main)


def test_no_body_deadline_while_the_app_does_not_read() -> None:
    proceed = asyncio.Event()

    async def busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await proceed.wait()  # working on something else before reading the body
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        h = Harness(busy, timeout_request_body=10)
        h.send(POST + b"abc")
        await h.advance(1000)
        assert not h.transport.closed
        proceed.set()
        await settle()
        h.send(b"defghij")
        await settle()
        assert h.transport.data.endswith(b"abcdefghij")

    run(main)


# ---------------------------------------------------------------------------------------------------- write


def test_a_client_that_stops_reading_is_dropped_at_the_write_deadline() -> None:
    outcome: list[str] = []

    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 100_000, "more_body": True})
        except ClientDisconnected:
            outcome.append("disconnected")

    async def main() -> None:
        h = Harness(streamer, timeout_write=60)
        h.transport.high_water = 300_000  # then the transport's buffer is full: send() waits
        h.send(GET)
        await settle()
        assert h.driver.write_paused
        await h.advance(59.99)
        assert not h.transport.aborted
        await h.advance(0.01)
        assert h.transport.aborted
        await settle()
        assert outcome == ["disconnected"]

    run(main)


def test_the_write_deadline_is_per_wait() -> None:
    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(10):
            await send({"type": "http.response.body", "body": b"x" * 100_000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        h = Harness(streamer, timeout_write=60)
        h.transport.high_water = 150_000
        h.send(GET)
        await settle()
        for i in range(4):  # the client takes the bytes every 50 s: slow, not stuck
            assert h.driver.write_paused
            await h.advance(50)
            # then it reads at once, the last time
            h.transport.high_water = None if i == 3 else sum(map(len, h.transport.written)) + 150_000
            h.driver.resume_writing()
            await settle()
        assert not h.transport.aborted
        assert h.transport.data.endswith(b"0\r\n\r\n")

    run(main)


def test_a_client_that_reads_slowly_is_not_dropped() -> None:
    outcome: list[str] = []

    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True})
            outcome.append("sent")
        except ClientDisconnected:
            outcome.append("disconnected")

    async def main() -> None:
        h = Harness(streamer, timeout_write=60)
        h.transport.high_water = 0
        h.transport.buffered = 1_000_000  # what the kernel has not taken yet
        h.send(GET)
        await settle()
        assert h.driver.write_paused
        for _ in range(5):  # the client takes a little in every period: it is slow, not gone
            h.transport.buffered -= 1000
            await h.advance(60)
        assert not h.transport.aborted
        await h.advance(60)  # a whole period without taking anything
        assert h.transport.aborted
        await settle()
        assert outcome == ["disconnected"]

    run(main)


def test_closing_with_bytes_the_client_takes_slowly_goes_on() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_write=60)
        h.transport.buffered = 1000
        h.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await settle()
        for _ in range(3):
            h.transport.buffered -= 100
            await h.advance(60)
        assert not h.transport.aborted
        await h.advance(60)
        assert h.transport.aborted

    run(main)


def test_closing_with_bytes_the_client_does_not_take_is_cut_at_the_write_deadline() -> None:
    async def main() -> None:
        h = Harness(hello, timeout_write=60)
        h.transport.buffered = 1000  # written, not taken by the client
        h.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await settle()
        assert h.transport.closed and not h.lost
        await h.advance(59.99)
        assert not h.transport.aborted
        await h.advance(0.01)
        assert h.transport.aborted and h.lost

    run(main)


# ---------------------------------------------------------------------------------------------------- errors


def test_after_an_error_the_connection_lingers_until_the_client_closes() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        assert status_of(h.transport.data) == 400 and h.transport.eof_sent and not h.transport.closed
        h.send(b"more bytes the client had sent: read and dropped")
        assert h.driver.eof_received() is None  # the client is done: the transport closes
        h.transport.close()
        await settle()
        assert h.lost

    run(main)


def test_lingering_ends_at_its_deadline() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.send(b"GET / HTTP/1.1\r\n\r\n")
        await h.advance(LINGER - 0.01)
        assert not h.transport.closed
        await h.advance(0.01)
        assert h.transport.aborted and h.lost

    run(main)


# ---------------------------------------------------------------------------------------------------- concurrency


def test_requests_past_the_concurrency_limit_get_503() -> None:
    release = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def main() -> None:
        h = Harness(slow, limit_concurrency=1)
        h.send(GET)
        await settle()
        assert h.state.registry.in_flight == 1
        other = Transport(asyncio.get_running_loop())
        second = H1Driver(h.state)
        other.protocol = second
        second.connection_made(other)  # type: ignore[arg-type]
        second.data_received(GET + GET)
        await settle()
        assert status_of(other.data) == 503 and b"\r\nretry-after: 1\r\n" in other.data
        assert other.data.count(b"HTTP/1.1") == 1  # the request after it on that connection is not started
        release.set()
        await settle()
        assert status_of(h.transport.data) == 200 and h.state.registry.in_flight == 0
        h.send(GET)
        await settle()
        assert h.transport.data.count(b"HTTP/1.1 200") == 2

    run(main)


def test_an_app_that_fails_releases_its_place() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        h = Harness(failing, limit_concurrency=1)
        for _ in range(3):
            h.send(GET)
            await settle()
            if h.transport.closed:
                break
        assert status_of(h.transport.data) == 500 and h.state.registry.in_flight == 0

    run(main)


@pytest.mark.parametrize("setting", ["timeout_request_header", "timeout_request_body", "timeout_write",
                                     "timeout_tls_handshake", "timeout_ws_handshake"])
def test_timeouts_must_be_positive(setting: str) -> None:
    from tidegate.config import ConfigError

    with pytest.raises(ConfigError, match=setting):
        Config.from_flat(**{setting: 0})

"""Behind a load balancer: --health-path, --shutdown-delay, and workers recycled by memory (--workers-max-rss) and
age (--workers-lifetime)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tidegate.config import Config, ConfigError
from tidegate.runtime.health import HealthCheck
from tidegate.runtime.server import serve
from tidegate.supervisor.recycle import MIB, Recycler, jittered, rss_from_statm

from .ops_helpers import TIMEOUT, Proc, get, serving_url, wait_until
from .test_e2e_http2 import H2Client, status

APP = "tests.ops_apps:app"

#: an app that keeps about 5 MiB more each time /leak is asked for, and says how much it holds
LEAKY = '''
import os

kept = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/leak":
        kept.append(b"x" * (5 << 20))  # filled, so resident
    with open("/proc/self/statm") as file:
        rss = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    body = b'{"pid": %d, "rss": %d}' % (os.getpid(), rss)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


class Counting:
    """An app that counts its calls."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"app"})


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args: str, app: str = APP, cwd: Path | None = None) -> Proc:
        extra = {"cwd": cwd} if cwd is not None else {}
        proc = Proc([app, "--port", "0", "--timeout-graceful-shutdown", "5", *args], **extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def worker_ready(proc: Proc, start: int = 0) -> int:
    return int(proc.wait_for(r"worker \d+ \(pid (\d+)\) ready", start=start).group(1))


# ---------------------------------------------------------------------------------------------------- pure logic


def test_the_health_path_matches_its_target_with_or_without_a_query():
    check = HealthCheck(Config.from_flat(health_path="/healthz").health)
    assert check.matches(b"/healthz") and check.matches(b"/healthz?probe=1")
    assert not check.matches(b"/healthz/") and not check.matches(b"/health") and not check.matches(b"/healthzz")
    assert check.ready
    check.draining()
    assert not check.ready


@pytest.mark.parametrize("path", ["healthz", "/a b", "/h?x", "/h#x", "/é"])
def test_a_health_path_must_be_a_plain_absolute_path(path):
    with pytest.raises(ConfigError, match="health_path"):
        Config.from_flat(health_path=path)


@pytest.mark.parametrize(("setting", "value"), [("workers_max_rss", 0), ("workers_lifetime", -1.0),
                                                 ("shutdown_delay", -1.0)])
def test_recycling_and_delay_settings_are_bounded(setting, value):
    with pytest.raises(ConfigError, match=setting):
        Config.from_flat(**{setting: value})


def test_rss_from_statm_and_the_lifetime_jitter():
    assert rss_from_statm("9000 2500 600 300 0 1200 0\n", 4096) == 2500 * 4096
    assert jittered(100.0, 0.0) == 100.0
    assert jittered(100.0, 0.5) == 105.0
    assert 100.0 <= jittered(100.0, 0.999) < 110.0


def test_the_recycler_retires_once_over_the_memory_limit_or_past_the_lifetime():
    async def run(settings: dict[str, Any], readings: list[int]) -> list[str]:
        loop = asyncio.get_running_loop()
        reasons: list[str] = []
        retired = loop.create_future()

        def retire(reason: str) -> None:
            reasons.append(reason)
            retired.set_result(None)

        samples = iter(readings)
        recycler = Recycler(loop, Config.from_flat(**settings).workers, retire, rss=lambda: next(samples),
                            draw=lambda: 0.0)
        recycler.start()
        await asyncio.wait_for(retired, TIMEOUT)
        recycler._fire("again")  # once only
        recycler.stop()
        return reasons

    # the first reading at start (is /proc readable?), the second at the first check
    reasons = asyncio.run(run({"workers_max_rss": 100}, [10 * MIB, 101 * MIB]))
    assert reasons == ["memory 101 MiB over --workers-max-rss 100 MiB"]
    reasons = asyncio.run(run({"workers_lifetime": 0.05}, []))
    assert reasons == ["served 0.1s (--workers-lifetime)"]


# ---------------------------------------------------------------------------------------------------- health path


@pytest.mark.parametrize("recorded", [False, True], ids=["default", "health-log"])
def test_the_health_path_is_answered_over_http1_and_http2_without_the_app(run_server, logs, recorded):
    app = Counting()
    server = run_server(app, health_path="/healthz", access_log=True, health_log=recorded)
    with httpx.Client(timeout=TIMEOUT) as client:
        for target in ("/healthz", "/healthz?from=lb", "/healthz"):  # one keep-alive connection
            response = client.get(server.url + target)
            assert (response.status_code, response.text) == (200, "ok\n")
            assert response.headers["cache-control"] == "no-store"
        head = client.head(server.url + "/healthz")
        assert (head.status_code, head.content) == (200, b"")
        assert client.post(server.url + "/healthz").status_code == 405
        assert client.get(server.url + "/").text == "app"
    h2 = H2Client(server.port)
    try:
        stream = h2.request("/healthz")
        headers, body = h2.response(stream)
        assert (status(headers), body) == (200, b"ok\n")
        headers, body = h2.response(h2.request("/"))
        assert body == b"app"
    finally:
        h2.close()
    assert app.paths == ["/", "/"]
    logs.wait_for(lambda r: r.name == "tidegate.access" and '"GET / HTTP/2" 200' in r.getMessage())
    lines = logs.messages("tidegate.access")
    health_lines = [line for line in lines if "/healthz" in line]
    assert len(health_lines) == (6 if recorded else 0), lines
    assert len(lines) - len(health_lines) == 2


def test_the_health_path_is_answered_on_an_h2c_upgrade(run_server):
    app = Counting()
    server = run_server(app, health_path="/healthz")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = client.initiate_upgrade_connection()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(client.data_to_send())
        events = client.receive_data(rest)
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            chunk = sock.recv(65536)
            assert chunk
            events += client.receive_data(chunk)
            sock.sendall(client.data_to_send())
    [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert status(response.headers) == 200
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"ok\n"
    assert app.paths == []


def test_without_a_health_path_the_app_answers_it(run_server):
    app = Counting()
    server = run_server(app)
    assert get(server.url + "/healthz").text == "app"
    assert app.paths == ["/healthz"]


def test_the_health_path_passes_the_concurrency_limit_and_is_not_counted_by_max_requests():
    app = Holding()
    counted = 0

    def count() -> bool:  # the hook --max-requests counts with
        nonlocal counted
        counted += 1
        return False

    with ServerWithHook(app, count, health_path="/healthz", limit_concurrency=1) as server, \
            httpx.Client(timeout=TIMEOUT) as held:
        holder = threading.Thread(target=held.get, args=(server.url + "/",), daemon=True)
        holder.start()
        assert app.entered.wait(TIMEOUT)
        # the one request allowed is in progress: another is refused, the health path still answers
        assert get(server.url + "/").status_code == 503
        assert get(server.url + "/healthz").status_code == 200
        server.call(app.release.set)
        holder.join(TIMEOUT)
    assert counted == 1


class Holding:
    """An app whose requests wait until ``release`` is set (from the server's loop)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


class ServerWithHook:
    """A server in a thread whose ``on_request`` hook (the one --max-requests uses) is ``count``."""

    def __init__(self, app: Any, count: Any, **settings: Any) -> None:
        self.config = Config.from_flat(port=0, access_log=False, lifespan="off", **settings)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

        def started(sockets: list[Any]) -> None:
            self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
            self._started.set()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(app, self.config, shutdown_trigger=self._stop.wait, on_started=started, on_request=count)

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)

    def call(self, function: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(function)

    def __enter__(self) -> ServerWithHook:
        self._thread.start()
        assert self._started.wait(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.call(self._stop.set)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()


# ---------------------------------------------------------------------------------------------------- shutdown delay


@pytest.mark.parametrize("workers", [None, "1"], ids=["single process", "worker"])
def test_sigterm_with_a_shutdown_delay_serves_on_while_the_health_path_answers_503(procs, workers):
    args = ["--health-path", "/healthz", "--shutdown-delay", "4"]
    proc = procs(*args, *(["--workers", workers] if workers else []))
    url = serving_url(proc)
    if workers:
        worker_ready(proc)
    assert get(url + "/healthz").status_code == 200
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"shutting down in 4s \(--shutdown-delay\); serving meanwhile, the health path answering 503")
    # new connections are still accepted during the delay: the health path says 503, the app still answers
    response = get(url + "/healthz")
    assert (response.status_code, response.text) == (503, "draining\n")
    assert get(url + "/").status_code == 200
    assert proc.wait() == 0
    lines = proc.output.splitlines()
    delay = next(i for i, line in enumerate(lines) if "--shutdown-delay" in line)
    assert any(line.endswith("shutting down") for line in lines[delay:]), proc.output
    if workers:
        assert "supervisor stopped" in proc.output


def test_a_replaced_worker_stops_without_the_shutdown_delay(procs):
    # SIGTTOU retires one of two workers: the other serves on, so no delay (and no 503) for the one leaving
    proc = procs("--workers", "2", "--health-path", "/healthz", "--shutdown-delay", "60")
    url = serving_url(proc)
    worker_ready(proc)
    mark = proc.mark()
    proc.signal(signal.SIGTTOU)
    proc.wait_for(r"worker \d+ \(pid \d+\) exited with code 0", start=mark, timeout=15)
    assert "--shutdown-delay" not in proc.output
    assert get(url + "/healthz").status_code == 200
    assert proc.stop(signal.SIGQUIT) == 0  # at once, delay or not


# ---------------------------------------------------------------------------------------------------- recycling


def test_a_worker_over_max_rss_is_replaced_without_a_failed_request(procs, tmp_path):
    (tmp_path / "leaky.py").write_text(LEAKY)
    limit = 80  # MiB; a worker starts near 35
    proc = procs("--workers", "1", "--workers-max-rss", str(limit), "--app-dir", str(tmp_path), app="leaky:app")
    url = serving_url(proc)
    first = worker_ready(proc)
    seen = []

    def leak_until_replaced() -> int | None:
        # leak until over the limit, then plain requests until another worker answers
        data = get(url + ("/leak" if not seen or seen[-1]["rss"] <= limit * MIB else "/")).raise_for_status().json()
        seen.append(data)
        return data["pid"] if data["pid"] != first else None

    second = wait_until(leak_until_replaced, timeout=TIMEOUT)
    assert all(data["rss"] < 2 * limit * MIB for data in seen)
    proc.wait_for(rf"worker {first}: memory \d+ MiB over --workers-max-rss {limit} MiB; retiring")
    proc.wait_for(rf"worker \d+ \(pid {first}\) retiring \(memory \d+ MiB over --workers-max-rss")
    proc.wait_for(rf"worker \d+ \(pid {first}\) exited with code 0")
    proc.wait_for(rf"worker \d+ \(pid {second}\) ready")
    assert proc.stop() == 0


def test_workers_lifetime_retires_and_replaces_the_worker(procs):
    proc = procs("--workers", "1", "--workers-lifetime", "2")
    url = serving_url(proc)
    first = worker_ready(proc)
    errors = []

    def served_by_another() -> int | None:
        try:
            pid = get(url + "/").raise_for_status().json()["pid"]
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
            return None
        return pid if pid != first else None

    second = wait_until(served_by_another, timeout=TIMEOUT)
    assert errors == []
    proc.wait_for(rf"worker {first}: served 2\.\ds \(--workers-lifetime\); retiring")
    proc.wait_for(rf"worker \d+ \(pid {first}\) exited with code 0")
    proc.wait_for(rf"worker \d+ \(pid {second}\) ready")
    assert proc.stop() == 0


def test_recycling_settings_alone_start_the_supervisor():
    from tidegate.launch import uses_supervisor

    assert uses_supervisor(Config.from_flat(workers_max_rss=512))
    assert uses_supervisor(Config.from_flat(workers_lifetime=3600.0))
    assert not uses_supervisor(Config.from_flat(health_path="/healthz", shutdown_delay=5.0))

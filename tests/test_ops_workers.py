"""Worker processes under the supervisor, with real processes and real signals."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .ops_helpers import Proc, get, serving_url, wait_until

APP = "tests.ops_apps:app"


def ready_pids(proc: Proc, count: int, *, start: int = 0) -> list[int]:
    pids = []
    mark = start
    for _ in range(count):
        match = proc.wait_for(r"worker \d+ \(pid (\d+)\) ready", start=mark)
        pids.append(int(match.group(1)))
        mark = proc.lines.index(match.string, mark) + 1
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


class Load:
    """Requests on fresh connections, one after another, from a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pids: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._between = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._go.is_set():
                self._between.set()
                self._go.wait(30)
                self._between.clear()
                continue
            try:
                response = get(self.url + "/")
                response.raise_for_status()
                self.pids.append(response.json()["pid"])
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))

    @contextmanager
    def between_requests(self) -> Iterator[None]:
        """Hold the load once its request in flight is answered; it goes on when the block ends."""
        self._go.clear()
        try:
            assert self._between.wait(30), "the request in flight was not answered"
            yield
        finally:
            self._go.set()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def supervisor():
    procs: list[Proc] = []

    def start(*args: str, app: str = APP) -> Proc:
        proc = Proc([app, "--port", "0", "--timeout-graceful-shutdown", "5", *args])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def test_workers_serve_and_stop_gracefully(supervisor):
    proc = supervisor("--workers", "2")
    url = serving_url(proc)
    pids = ready_pids(proc, 2)
    assert len(set(pids)) == 2 and proc.pid not in pids
    assert get(url + "/").json()["pid"] in pids
    # an in-flight request finishes after SIGTERM
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=get(url + "/slow?1")))
    mark = proc.mark()
    slow.start()
    proc.wait_for("ops-app slow", start=mark)
    proc.signal(signal.SIGTERM)
    slow.join(20)
    assert result["r"].status_code == 200
    assert proc.wait() == 0
    # every worker ran its lifespan shutdown
    for pid in pids:
        assert f"ops-app shutdown {pid}" in proc.output
    assert "supervisor stopped" in proc.output


def test_sigint_stops_too_and_a_second_signal_stops_at_once(supervisor):
    proc = supervisor("--workers", "1")
    url = serving_url(proc)
    ready_pids(proc, 1)
    threading.Thread(target=lambda: _quiet_get(url + "/slow?60"), daemon=True).start()
    proc.wait_for("ops-app slow")
    proc.signal(signal.SIGINT)
    proc.wait_for("stopping the workers gracefully")
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0
    assert "stopping the workers now" in proc.output
    assert "ops-app shutdown" in proc.output  # lifespan shutdown runs on the fast path too


def test_a_killed_worker_is_replaced_while_the_others_serve(supervisor):
    proc = supervisor("--workers", "2")
    url = serving_url(proc)
    victim, survivor = ready_pids(proc, 2)
    mark = proc.mark()
    with Load(url) as load:
        wait_until(lambda: len(load.pids) >= 5)
        # killed between two requests: a request the victim was answering could only fail, and that says
        # nothing about the others (the workers share the listening socket: no waiting connection is lost)
        with load.between_requests():
            os.kill(victim, signal.SIGKILL)
            proc.wait_for(rf"worker \d+ \(pid {victim}\) exited with signal 9", start=mark)
        # the replacement is started right away, not after a delay
        exited = proc.wait_for(rf"pid {victim}\) exited", start=mark).string
        started = proc.wait_for(r"started worker 3", start=mark).string
        # the supervisor's next line (workers' own lines interleave on the shared stream)
        supervisor_lines = [line for line in proc.lines if "supervisor" in line]
        assert supervisor_lines.index(started) == supervisor_lines.index(exited) + 1
        (new,) = ready_pids(proc, 1, start=mark)
        served = len(load.pids)
        wait_until(lambda: len(load.pids) >= served + 5)
    assert load.errors == []
    assert new not in (victim, survivor) and alive(survivor)
    assert proc.stop() == 0


def test_a_worker_whose_loop_hangs_is_killed_and_replaced(supervisor):
    proc = supervisor("--workers", "2", "--timeout-worker-healthcheck", "1")
    url = serving_url(proc)
    pids = ready_pids(proc, 2)
    mark = proc.mark()
    threading.Thread(target=lambda: _quiet_get(url + "/block?60"), daemon=True).start()
    blocked = int(proc.wait_for(r"ops-app block (\d+)", start=mark).group(1))
    assert blocked in pids
    proc.wait_for(rf"worker \d+ \(pid {blocked}\) has not answered for", start=mark)
    proc.wait_for(rf"pid {blocked}\) exited with signal 9", start=mark)
    ready_pids(proc, 1, start=mark)
    # the other worker was left alone and everything still answers
    assert all(alive(pid) for pid in pids if pid != blocked)
    assert get(url + "/").status_code == 200
    assert proc.stop() == 0


def _quiet_get(url: str) -> None:
    try:
        get(url, timeout=70)
    except httpx.HTTPError:
        pass


def test_sighup_rolls_the_workers_without_refusing_a_connection(supervisor):
    proc = supervisor("--workers", "2")
    url = serving_url(proc)
    old = ready_pids(proc, 2)
    mark = proc.mark()
    with Load(url) as load:
        wait_until(lambda: len(load.pids) >= 5)
        proc.signal(signal.SIGHUP)
        new = ready_pids(proc, 2, start=mark)
        proc.wait_for("rolling restart done", start=mark)
        for pid in old:
            proc.wait_for(rf"pid {pid}\) exited with code 0", start=mark)
        wait_until(lambda: set(load.pids[-5:]) <= set(new))
    assert load.errors == []
    assert set(new).isdisjoint(old)
    for pid in old:
        assert f"ops-app shutdown {pid}" in proc.output
    assert proc.stop() == 0


def test_sighup_with_a_broken_app_keeps_the_running_workers(supervisor, tmp_path):
    module = tmp_path / "flaky_app.py"
    module.write_text("from tests.ops_apps import app\n")
    proc = supervisor("--workers", "1", "--app-dir", str(tmp_path), app="flaky_app:app")
    url = serving_url(proc)
    (old,) = ready_pids(proc, 1)
    module.write_text("this is not python\n")
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for("a new worker failed to start; keeping the running ones", start=mark)
    assert get(url + "/").json()["pid"] == old
    assert proc.stop() == 0


def test_sigttin_and_sigttou_add_and_remove_a_worker(supervisor):
    proc = supervisor("--workers", "1")
    serving_url(proc)
    (first,) = ready_pids(proc, 1)
    mark = proc.mark()
    proc.signal(signal.SIGTTIN)
    proc.wait_for("SIGTTIN, 2 worker", start=mark)
    (second,) = ready_pids(proc, 1, start=mark)
    mark = proc.mark()
    proc.signal(signal.SIGTTOU)
    proc.wait_for("SIGTTOU, 1 worker", start=mark)
    # the oldest one goes, gracefully
    proc.wait_for(rf"pid {first}\) exited with code 0", start=mark)
    assert alive(second)
    mark = proc.mark()
    proc.signal(signal.SIGTTOU)
    proc.wait_for("SIGTTOU ignored", start=mark)
    assert proc.stop() == 0


def test_max_requests_retires_workers_gracefully(supervisor):
    proc = supervisor("--workers", "1", "--max-requests", "3", "--max-requests-jitter", "1")
    url = serving_url(proc)
    ready_pids(proc, 1)
    pids = []
    for _ in range(9):
        response = get(url + "/")
        assert response.status_code == 200
        pids.append(response.json()["pid"])
    counts = Counter(pids)
    assert len(counts) >= 2
    assert all(n <= 4 for n in counts.values()), counts
    assert proc.count("reached --max-requests; retiring") >= 1
    assert proc.stop() == 0


def test_max_requests_counts_http2_requests(supervisor):
    proc = supervisor("--workers", "1", "--max-requests", "3")
    url = serving_url(proc)
    ready_pids(proc, 1)
    mark = proc.mark()
    with httpx.Client(http1=False, http2=True, timeout=10) as client:  # h2c with prior knowledge
        for _ in range(2):
            response = client.get(url + "/")
            assert response.status_code == 200
            assert response.http_version == "HTTP/2"
    assert proc.count("reached --max-requests; retiring") == 0
    # the third request (over HTTP/1.1: h2's client library cannot read a response behind a GOAWAY) retires it
    response = get(url + "/")
    assert response.status_code == 200
    proc.wait_for("reached --max-requests; retiring", start=mark)
    assert proc.stop() == 0


def test_the_last_response_before_retiring_closes_its_connection(supervisor):
    proc = supervisor("--workers", "1", "--max-requests", "2")
    url = serving_url(proc)
    ready_pids(proc, 1)
    with httpx.Client(timeout=10) as client:
        first = client.get(url + "/")
        second = client.get(url + "/")
    assert "close" not in first.headers.get("connection", "")
    assert second.headers["connection"] == "close"
    assert proc.stop() == 0


def test_an_app_that_cannot_be_imported_stops_the_supervisor(supervisor):
    proc = supervisor("--workers", "2", app="tests.ops_apps:nope")
    assert proc.wait() == 1
    assert "attribute 'nope' not found" in proc.output
    assert "the worker could not start; stopping" in proc.output


def test_a_failed_lifespan_startup_stops_the_supervisor(supervisor, tmp_path):
    (tmp_path / "fails.py").write_text(
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'lifespan.startup.failed', 'message': 'no database'})\n")
    proc = supervisor("--workers", "1", "--app-dir", str(tmp_path), app="fails:app")
    assert proc.wait() == 3
    assert "no database" in proc.output


def test_workers_stop_when_the_supervisor_is_killed(supervisor):
    proc = supervisor("--workers", "2")
    serving_url(proc)
    pids = ready_pids(proc, 2)
    proc.signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in pids))


def test_max_requests_alone_runs_one_supervised_worker(supervisor):
    proc = supervisor("--max-requests", "2")
    url = serving_url(proc)
    ready_pids(proc, 1)
    pids = {get(url + "/").json()["pid"] for _ in range(4)}
    assert len(pids) >= 2 and proc.pid not in pids
    assert proc.stop() == 0


def test_a_worker_stuck_while_draining_is_killed(supervisor):
    proc = supervisor("--workers", "1", "--timeout-graceful-shutdown", "0.5", "--timeout-worker-healthcheck", "30")
    url = serving_url(proc)
    (stuck,) = ready_pids(proc, 1)
    mark = proc.mark()
    threading.Thread(target=lambda: _quiet_get(url + "/block?60"), daemon=True).start()
    proc.wait_for("ops-app block", start=mark)
    proc.signal(signal.SIGHUP)  # a new worker comes up; the old one cannot drain with its loop blocked
    proc.wait_for(rf"pid {stuck}\) is still draining", start=mark)
    proc.wait_for(rf"pid {stuck}\) exited with signal 9", start=mark)
    assert get(url + "/").status_code == 200
    assert proc.stop() == 0


def test_a_tls_file_a_worker_cannot_load_stops_the_server_with_a_usage_error(tmp_path):
    # the supervisor does not read the certificate; each worker does, and says why it cannot, without a traceback
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--workers", "1", "--ssl-certfile", str(bad)])
    try:
        proc.wait_for(re.escape(str(bad)))
        assert proc.proc.wait(timeout=30) == 2
    finally:
        proc.stop()
    assert "Traceback" not in proc.output

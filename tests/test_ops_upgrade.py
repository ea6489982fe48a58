"""SIGUSR2, binary upgrade: a new supervisor starts on the inherited listening sockets, the old one drains; no
connection is refused and no request fails across it, under load."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tidegate.supervisor.upgrade import INHERIT_FDS, INHERIT_PID, take_inheritance

from .ops_helpers import TIMEOUT, Proc, free_port, get, serving_url, wait_until

APP = "tests.ops_apps:app"


# ---------------------------------------------------------------------------------------------- helpers


def gone(pid: int) -> bool:
    """``pid`` has exited (a process that is not our child may stay a zombie until its new parent reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def ready_pids(proc: Proc, count: int, *, start: int) -> list[int]:
    """The pids of the next ``count`` workers logged as ready from line ``start`` on."""
    pids = []
    for _ in range(count):
        match = proc.wait_for(r"worker \d+ \(pid (\d+)\) ready", start=start)
        pids.append(int(match.group(1)))
        start = proc.lines.index(match.string, start) + 1
    return pids


class Load:
    """GET / from a few threads until stopped (or ``cap`` requests): clients that keep their connection alive and
    clients that open a fresh connection for every request.

    A request is failed when no 200 response comes for it.  A connection refused is a failure and never retried.
    A keep-alive client retries a request once on a new connection when the server closed the connection without
    any response to it (a draining worker closes its idle connections): RFC 9112 §9.3.1 lets a client retry an
    idempotent request then, as browsers and most HTTP libraries do; those retries are counted apart."""

    def __init__(self, url: str, *, keep_alive: int = 2, fresh: int = 2, cap: int = 20_000) -> None:
        self.url = url
        self.cap = cap
        self.sent = 0
        self.failures: list[str] = []
        self.refused = 0
        self.retried = 0
        self.retry_reasons: Counter[str] = Counter()
        self.pids: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keep_alive)]
        self._threads += [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]

    @property
    def failed(self) -> int:
        return len(self.failures)

    def _count(self, pid: int | None, failure: str | None = None, *, refused: bool = False,
               retried: bool = False) -> bool:
        with self._lock:
            self.sent += 1
            if pid is not None:
                self.pids[pid] += 1
            if failure is not None:
                self.failures.append(failure)
            self.refused += refused
            self.retried += retried
            return self.sent < self.cap

    def _run(self, keep_alive: bool) -> None:
        client = httpx.Client(timeout=10, headers={} if keep_alive else {"connection": "close"})
        try:
            while not self._stop.is_set():
                retried = False
                while True:
                    try:
                        response = client.get(self.url + "/")
                    except httpx.ConnectError as exc:
                        more = self._count(None, f"connect: {exc!r}", refused=True)
                    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                        if keep_alive and not retried:
                            retried = True  # closed before any response: once more, on a new connection
                            with self._lock:
                                self.retry_reasons[type(exc).__name__] += 1
                            continue
                        more = self._count(None, f"{exc!r}", retried=retried)
                    except httpx.HTTPError as exc:
                        more = self._count(None, f"{exc!r}", retried=retried)
                    else:
                        ok = response.status_code == 200
                        more = self._count(response.json()["pid"] if ok else None,
                                           None if ok else f"status {response.status_code}", retried=retried)
                    break
                if not more:
                    return
        finally:
            client.close()

    def wait_for(self, sent: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.sent >= sent or not any(t.is_alive() for t in self._threads), timeout)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def report(self) -> str:
        return (f"requests sent {self.sent}, failed {self.failed} (connections refused {self.refused}; retried "
                f"once on a new connection after a draining worker closed an idle keep-alive connection: "
                f"{self.retried}{' ' + str(dict(self.retry_reasons)) if self.retry_reasons else ''})")


@pytest.fixture
def processes():
    """Start tidegate; every process started (the new generations too, by pid) is stopped at the end."""
    procs: list[Proc] = []
    pids: list[int] = []

    def start(*args: str) -> Proc:
        proc = Proc([*args, "--timeout-graceful-shutdown", "5"])
        procs.append(proc)
        return proc

    yield start, pids
    for pid in pids:
        if not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                wait_until(lambda pid=pid: gone(pid), 10)
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for proc in procs:
        proc.kill()


def upgrade(proc: Proc, pids: list[int]) -> tuple[int, int]:
    """Send SIGUSR2 to ``proc``'s supervisor; return the new supervisor's pid (also added to ``pids``, to be
    stopped) and the log line index from which its lines come."""
    mark = proc.mark()
    os.kill(proc.pid, signal.SIGUSR2)
    new = int(proc.wait_for(r"SIGUSR2, started a new generation \(pid (\d+)\)", start=mark).group(1))
    pids.append(new)
    return new, mark


def stop_by_pid(proc: Proc, pid: int) -> None:
    """Stop a supervisor that is not ``proc`` itself (a new generation), by pid, and wait for it and its workers."""
    mark = proc.mark()
    os.kill(pid, signal.SIGTERM)
    proc.wait_for("supervisor stopped", start=mark)
    wait_until(lambda: gone(pid))
    proc.wait()  # its workers are gone too once the log stream ends


# ---------------------------------------------------------------------------------------------- upgrades


@pytest.mark.timeout(120)
def test_sigusr2_upgrades_under_load_without_a_refused_connection_or_a_failed_request(processes, tmp_path, capsys):
    start, pids = processes
    pid_file = tmp_path / "tidegate.pid"
    proc = start(APP, "--workers", "2", "--port", "0", "--pid", str(pid_file))
    url = serving_url(proc)
    old_workers = ready_pids(proc, 2, start=0)
    assert pid_file.read_text().strip() == str(proc.pid)

    with Load(url) as load:
        load.wait_for(200)
        new, mark = upgrade(proc, pids)
        proc.wait_for(rf"supervisor {new}: new generation, on the listening sockets of supervisor {proc.pid}",
                      start=mark)
        new_workers = ready_pids(proc, 2, start=mark)
        proc.wait_for(rf"the new generation \(pid {new}\) is ready; this one \(pid {proc.pid}\) stops accepting",
                      start=mark)
        assert proc.proc.wait(TIMEOUT) == 0  # the old supervisor has drained its workers and exited
        for pid in old_workers:
            wait_until(lambda pid=pid: gone(pid))
        load.wait_for(max(2000, load.sent + 300))
    with capsys.disabled():
        print(f"\nbinary upgrade under load: {load.report()}")

    assert load.failed == 0 and load.refused == 0, "\n".join(load.failures[:20])
    assert load.sent >= 2000
    served = set(load.pids)
    # the old generation served, then the new one, on the same address
    assert served & set(old_workers) and served & set(new_workers)
    assert served <= set(old_workers) | set(new_workers)
    assert not gone(new) and all(not gone(pid) for pid in new_workers)
    assert get(url + "/").json()["pid"] in new_workers
    # the pid file names the new supervisor; it is removed when that one stops
    assert pid_file.read_text().strip() == str(new)
    stop_by_pid(proc, new)
    assert not pid_file.exists()


@pytest.mark.timeout(120)
def test_a_new_generation_that_fails_to_start_leaves_the_old_one_serving(processes, tmp_path, capsys):
    start, pids = processes
    app_dir = tmp_path / "apps"
    app_dir.mkdir()
    module = app_dir / "upgradable.py"
    module.write_text("from tests.ops_apps import app\n")
    pid_file = tmp_path / "tidegate.pid"
    proc = start("upgradable:app", "--app-dir", str(app_dir), "--workers", "2", "--port", "0",
                 "--pid", str(pid_file))
    url = serving_url(proc)
    old_workers = ready_pids(proc, 2, start=0)

    module.write_text("raise ImportError('this release is broken')\n")
    with Load(url, keep_alive=1, fresh=1) as load:
        load.wait_for(50)
        new, mark = upgrade(proc, pids)
        line = proc.wait_for(rf"the new generation \(pid {new}\) exited with code 1 before it was ready", start=mark)
        assert "ERROR" in line.string
        assert "this release is broken" in proc.output
        wait_until(lambda: gone(new))
        sent = load.sent
        load.wait_for(sent + 100)
    with capsys.disabled():
        print(f"\nfailed binary upgrade under load: {load.report()}")
    assert load.failed == 0, "\n".join(load.failures[:20])
    # the old supervisor and its workers serve on, and the pid file names it again
    assert proc.proc.poll() is None
    assert set(load.pids) <= set(old_workers)
    assert get(url + "/").json()["pid"] in old_workers
    assert pid_file.read_text().strip() == str(proc.pid)

    # once the release is fixed, the next SIGUSR2 upgrades
    module.write_text("from tests.ops_apps import app  # fixed\n")
    new, mark = upgrade(proc, pids)
    new_workers = ready_pids(proc, 2, start=mark)
    assert proc.proc.wait(TIMEOUT) == 0
    wait_until(lambda: get(url + "/").json()["pid"] in new_workers)
    assert pid_file.read_text().strip() == str(new)
    stop_by_pid(proc, new)


def test_an_upgraded_generation_upgrades_again_and_the_metrics_endpoint_moves_too(processes, tmp_path):
    start, pids = processes
    pid_file = tmp_path / "tidegate.pid"
    metrics = f"http://127.0.0.1:{free_port()}/metrics"
    proc = start(APP, "--workers", "1", "--port", "0", "--pid", str(pid_file),
                 "--metrics-bind", metrics.removeprefix("http://").removesuffix("/metrics"))
    url = serving_url(proc)
    ready_pids(proc, 1, start=0)
    second, mark = upgrade(proc, pids)
    ready_pids(proc, 1, start=mark)
    assert proc.proc.wait(TIMEOUT) == 0
    wait_until(lambda: pid_file.read_text().strip() == str(second))

    mark = proc.mark()
    os.kill(second, signal.SIGUSR2)
    third = int(proc.wait_for(r"SIGUSR2, started a new generation \(pid (\d+)\)", start=mark).group(1))
    pids.append(third)
    proc.wait_for(rf"supervisor {third}: new generation, on the listening sockets of supervisor {second}", start=mark)
    (worker,) = ready_pids(proc, 1, start=mark)
    wait_until(lambda: gone(second))
    assert get(url + "/").json()["pid"] == worker
    assert "tidegate_workers 1" in get(metrics).text
    assert pid_file.read_text().strip() == str(third)
    stop_by_pid(proc, third)
    assert not pid_file.exists()


def test_sigusr2_without_the_supervisor_is_logged_and_ignored(processes):
    start, _ = processes
    proc = start(APP, "--port", "0")
    url = serving_url(proc)
    mark = proc.mark()
    proc.signal(signal.SIGUSR2)
    proc.wait_for(r"SIGUSR2 ignored: a binary upgrade needs the supervisor \(run with --workers 1\)", start=mark)
    assert get(url + "/").status_code == 200
    assert proc.stop() == 0


def test_a_second_sigusr2_while_the_new_generation_starts_is_ignored(processes, tmp_path):
    start, pids = processes
    gate = tmp_path / "open"
    gate.touch()
    (tmp_path / "gated.py").write_text(
        "import os, time\n"
        f"deadline = time.monotonic() + {TIMEOUT}\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "from tests.ops_apps import app\n")
    proc = start("gated:app", "--app-dir", str(tmp_path), "--workers", "1", "--port", "0")
    serving_url(proc)
    ready_pids(proc, 1, start=0)
    gate.unlink()  # the new generation's worker waits in its import until the gate opens again
    new, mark = upgrade(proc, pids)
    proc.wait_for(r"supervisor: started worker 1 \(pid \d+\)", start=mark)
    os.kill(proc.pid, signal.SIGUSR2)
    proc.wait_for(rf"SIGUSR2 ignored: the new generation \(pid {new}\) is still starting", start=mark)
    gate.touch()
    assert proc.proc.wait(TIMEOUT) == 0
    assert proc.count("started a new generation") == 1
    stop_by_pid(proc, new)


# ---------------------------------------------------------------------------------------------- inheritance


def test_sockets_handed_to_another_process_are_not_taken():
    environ = {INHERIT_FDS: "listen:3,ready:4", INHERIT_PID: str(os.getpid())}  # our pid, not our parent's
    assert take_inheritance(environ) is None
    assert environ == {}  # removed, so that no process started later takes them either


def test_inherited_sockets_are_adopted_in_order():
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    metrics = socket.create_server(("127.0.0.1", 0))
    read_fd, write_fd = os.pipe()
    names = [sock.getsockname() for sock in listeners]
    environ = {INHERIT_FDS: f"listen:{listeners[0].detach()},listen:{listeners[1].detach()},"
                            f"metrics:{metrics.fileno()},ready:{write_fd}",
               INHERIT_PID: str(os.getppid())}
    inheritance = take_inheritance(environ)
    try:
        assert inheritance is not None and environ == {}
        assert [sock.getsockname() for sock in inheritance.listeners] == names
        assert inheritance.metrics is not None and inheritance.metrics.fileno() == metrics.fileno()
        assert inheritance.ready == write_fd and inheritance.parent == os.getppid()
    finally:
        if inheritance is not None:
            for sock in inheritance.listeners:
                sock.close()
            if inheritance.metrics is not None:
                inheritance.metrics.detach()
        metrics.close()
        os.close(read_fd)
        os.close(write_fd)

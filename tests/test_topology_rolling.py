"""A rolling deploy behind nginx (docs/topologies/nginx.conf) with no failed request.

Under a bounded load (a pool of HTTP clients, some requests slow enough to be in flight at any moment, and 50
WebSockets), instance A is restarted, then B: SIGTERM, the old process drains and exits, a new one starts on the
same port and its health path answers.  While an instance is down nginx gets "connection refused" and sends the
request to the other one (``proxy_next_upstream error``); the draining instance finishes the requests in flight
and closes its WebSockets with 1001, and their clients reconnect through nginx to a live instance."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .ops_helpers import free_port, wait_until
from .topology_helpers import PKI, WAIT, nginx, tidegate

SOCKETS = 50
WORKERS = 6
MAX_REQUESTS = 30000  # the load is bounded: it stops once both restarts are done, or at this many
ARGS = ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1", "--health-path", "/healthz"]


def instance(port: int) -> Any:
    proc = tidegate(port, *ARGS)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=WAIT).status_code == 200, timeout=WAIT)
    return proc


class Load:
    """HTTP clients sending requests through nginx until told to stop; every failure is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(WORKERS)
        self._runs = [self._pool.submit(self._run, number) for number in range(WORKERS)]

    def _run(self, number: int) -> None:
        with httpx.Client(timeout=WAIT, trust_env=False) as http:
            count = 0
            while not self.stopping.is_set():
                with self._lock:
                    if self.sent >= MAX_REQUESTS:
                        return
                    self.sent += 1
                count += 1
                # one worker in six sends slow requests: some are always in flight when an instance stops
                path = "/slow?0.3" if number == 0 else "/"
                try:
                    response = http.get(self.url + path)
                    if response.status_code != 200:
                        raise AssertionError(f"{response.status_code} {response.text[:200]}")
                    pid = response.json()["pid"]
                except Exception as exc:  # every failure is a finding
                    with self._lock:
                        self.failures.append(f"{path}: {exc!r}")
                else:
                    with self._lock:
                        self.pids.add(pid)

    def served(self) -> set[int]:
        with self._lock:
            return set(self.pids)

    def count(self) -> int:
        with self._lock:
            return self.sent

    def stop(self) -> None:
        self.stopping.set()
        for run in self._runs:
            run.result(WAIT)
        self._pool.shutdown()


class Sockets:
    """WebSockets through nginx; each one closed by the server reconnects, noting the close code."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.closes: list[tuple[int, int | None, int]] = []  # (old pid, close code, new pid)
        self.failures: list[str] = []
        self.current: dict[int, int] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(number,), daemon=True) for number in range(SOCKETS)]
        for thread in self._threads:
            thread.start()

    def _connect(self) -> tuple[Any, int]:
        from websockets.sync.client import connect

        deadline = time.monotonic() + WAIT
        while True:
            try:
                ws = connect(f"ws://{self.host}:{self.port}/ws", proxy=None, open_timeout=WAIT).__enter__()
                return ws, json.loads(ws.recv(WAIT))["pid"]
            except Exception as exc:  # refused, reset, closed: retried until the deadline
                if time.monotonic() > deadline:
                    raise AssertionError(f"no WebSocket within {WAIT}s: {exc!r}") from exc
                time.sleep(0.05)

    def _run(self, number: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            ws, pid = self._connect()
            with self._lock:
                self.current[number] = pid
            while not self.stopping.is_set():
                try:
                    ws.recv(0.2)
                except TimeoutError:
                    continue
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else None
                    ws, new = self._connect()
                    with self._lock:
                        self.closes.append((pid, code, new))
                        self.current[number] = new
                    pid = new
            ws.close()
        except Exception as exc:
            with self._lock:
                self.failures.append(repr(exc))

    def connected(self) -> dict[int, int]:
        with self._lock:
            return dict(self.current)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(WAIT)


@pytest.fixture
def topology(tmp_path: Any) -> Iterator[dict[str, Any]]:
    ports = [free_port(), free_port()]
    instances: dict[str, Any] = {}
    try:
        for name, port in zip("ab", ports, strict=True):
            instances[name] = instance(port)
        with nginx(tmp_path, PKI(tmp_path), ports) as (_, http_port, _):
            yield {"ports": dict(zip("ab", ports, strict=True)), "instances": instances, "http_port": http_port}
    finally:
        for proc in instances.values():
            proc.stop()


def restart(topology: dict[str, Any], name: str) -> tuple[int, int]:
    """SIGTERM the instance, wait for it to drain and exit, start a new one on its port; (old pid, new pid)."""
    old = topology["instances"][name]
    old.signal(signal.SIGTERM)
    assert old.wait(WAIT + 10) == 0, old.output
    new = instance(topology["ports"][name])
    topology["instances"][name] = new
    return old.pid, new.pid


@pytest.mark.timeout(150)
def test_rolling_restart_fails_no_request(topology: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{topology['http_port']}"
    first = {name: proc.pid for name, proc in topology["instances"].items()}
    sockets = Sockets("127.0.0.1", topology["http_port"])
    load = Load(url)
    try:
        wait_until(lambda: len(sockets.connected()) == SOCKETS, timeout=WAIT)
        assert set(sockets.connected().values()) == set(first.values())  # spread over both
        wait_until(lambda: load.count() >= 300, timeout=WAIT)
        pids = {}
        for name in "ab":
            pids[name] = restart(topology, name)
            # every WebSocket of the old process has reconnected, to a live instance
            wait_until(lambda name=name: pids[name][0] not in sockets.connected().values(), timeout=WAIT)
            # the new process is back in rotation (nginx tries it again fail_timeout after its last failure)
            # before the next instance goes: else a request the other one cannot take has nowhere to go
            wait_until(lambda name=name: pids[name][1] in load.served(), timeout=WAIT)
            before = load.count()
            wait_until(lambda before=before: load.count() >= before + 200, timeout=WAIT)
    finally:
        load.stop()
        sockets.stop()
    print(f"rolling deploy: requests sent {load.sent}, failed {len(load.failures)}; "
          f"{SOCKETS} WebSockets, {len(sockets.closes)} closed by a draining instance and reconnected")
    assert not load.failures, load.failures[:10]
    assert not sockets.failures, sockets.failures[:10]
    # the old processes served, and so do the new ones
    assert {first["a"], first["b"], pids["a"][1], pids["b"][1]} <= load.served()
    # every WebSocket was closed by a draining instance at least once (its first process stopped), each time with
    # 1001, and reconnected to another process; all are now on the new ones
    assert all(code == 1001 for _, code, _ in sockets.closes), sockets.closes
    assert all(old != new for old, _, new in sockets.closes)
    assert len(sockets.closes) >= SOCKETS
    assert {old for old, _, _ in sockets.closes} == {first["a"], first["b"]}
    assert set(sockets.connected().values()) <= {pids["a"][1], pids["b"][1]}
    assert len(sockets.connected()) == SOCKETS


def test_a_port_without_a_process_is_refused_and_nginx_retries_the_other(topology: dict[str, Any]) -> None:
    """What the deploy relies on: between the old process and the new one the port refuses connections (no
    listener), which nginx takes as "try the next upstream" for an idempotent request."""
    a = topology["instances"]["a"]
    a.signal(signal.SIGTERM)
    assert a.wait(WAIT) == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", topology["ports"]["a"]), 2):
        pass
    url = f"http://127.0.0.1:{topology['http_port']}/"
    with httpx.Client(timeout=WAIT, trust_env=False) as http:
        pids = {http.get(url).json()["pid"] for _ in range(10)}
    assert pids == {topology["instances"]["b"].pid}
    topology["instances"]["a"] = instance(topology["ports"]["a"])

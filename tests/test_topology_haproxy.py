"""HAProxy in front of two tidegate instances, run from docs/topologies/haproxy.cfg (the file the docs show).

HAProxy passes TCP through and sends each connection's client in a PROXY protocol header (version 2 to instance
A, version 1 to B); tidegate runs with ``--proxy-protocol``, so the app sees the client's address and port.
HAProxy's health check asks tidegate's ``--health-path``; on SIGTERM an instance answers it 503 for
``--shutdown-delay`` while still serving, and HAProxy takes it out of rotation before it stops listening."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from .ops_helpers import free_port, wait_until
from .topology_helpers import WAIT, docs_show, haproxy, haproxy_servers, tidegate

CLIENT = "127.0.0.2"
# the instances' health check; the haproxy.cfg check asks the same path
HEALTH = ["--health-path", "/healthz"]


def instance(port: int) -> Any:
    return tidegate(port, "--proxy-protocol", "--forwarded-allow-ips", "127.0.0.1", *HEALTH, "--shutdown-delay", "3")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("haproxy")
    ports = [free_port(), free_port()]
    instances = {}
    try:
        for name, port in zip("ab", ports, strict=True):
            instances[name] = instance(port)
        with haproxy(tmp_path, ports) as (daemon, port, admin):
            wait_until(lambda: haproxy_servers(admin) == {"a": "UP", "b": "UP"}, timeout=WAIT)
            yield {"apps": ports, "instances": instances, "haproxy": daemon, "port": port, "admin": admin}
    finally:
        for proc in instances.values():
            proc.stop()


def ask(port: int, path: str = "/") -> tuple[dict[str, Any], tuple[str, int]]:
    """A request from 127.0.0.2 through HAProxy: what the app saw, and the client's own address."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(CLIENT, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data
        return json.loads(body), sock.getsockname()


def test_the_docs_show_the_config_this_test_runs() -> None:
    assert docs_show("haproxy.cfg"), "docs/deployment.md must show docs/topologies/haproxy.cfg verbatim"


def test_the_app_sees_each_client_s_address_and_port_through_proxy_protocol_v1_and_v2(
        topology: dict[str, Any]) -> None:
    pids = set()
    for _ in range(6):
        seen, mine = ask(topology["port"])
        assert tuple(seen["client"]) == mine  # the client's own address and port, from the PROXY header
        pids.add(seen["pid"])
    assert pids == {proc.pid for proc in topology["instances"].values()}  # v2 to one, v1 to the other


def test_websocket_through_haproxy(topology: dict[str, Any]) -> None:
    from websockets.sync.client import connect

    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", topology["port"]), timeout=WAIT, source_address=(CLIENT, 0))
        with connect(f"ws://127.0.0.1:{topology['port']}/ws", sock=sock, proxy=None, open_timeout=WAIT) as ws:
            about = json.loads(ws.recv(WAIT))
            assert tuple(about["client"]) == sock.getsockname()
            ws.send("hello")
            assert ws.recv(WAIT) == "hello"


@pytest.mark.timeout(90)
def test_the_health_check_takes_a_stopping_instance_out_before_it_stops_listening(
        topology: dict[str, Any]) -> None:
    a = topology["instances"]["a"]
    start = a.mark()
    a.signal(signal.SIGTERM)
    # --shutdown-delay: still serving, the health path answering 503; HAProxy marks it down
    wait_until(lambda: haproxy_servers(topology["admin"])["a"].startswith("DOWN"), timeout=WAIT)
    assert a.proc.poll() is None
    served = {ask(topology["port"])[0]["pid"] for _ in range(4)}
    assert served == {topology["instances"]["b"].pid}
    assert a.wait(WAIT) == 0
    a.wait_for("stopped", start=start)
    # a new process on the same port: the check finds it healthy and it takes its share again
    topology["instances"]["a"] = instance(topology["apps"][0])
    wait_until(lambda: haproxy_servers(topology["admin"])["a"] == "UP", timeout=WAIT)
    pids = {ask(topology["port"])[0]["pid"] for _ in range(6)}
    assert topology["instances"]["a"].pid in pids

"""nginx in front of two tidegate instances, run from docs/topologies/nginx.conf (the file the docs show).

nginx terminates TLS and speaks HTTP/2 to the client, HTTP/1.1 with kept-alive connections to the instances;
WebSocket handshakes, Server-Sent Events and uploads go through it unbuffered; the instances run with
``--proxy-headers`` trusting nginx's address, so the app sees the client's address and ``https``.  The client
connects from 127.0.0.2 (nginx from 127.0.0.1), so the address the app sees can only be the forwarded one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .ops_helpers import free_port, wait_until
from .topology_helpers import PKI, WAIT, client, docs_show, established, nginx, tidegate

CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[dict[str, Any]]:
    ports = [free_port(), free_port()]
    directory = tmp_path_factory.mktemp("nginx")
    instances = []
    try:
        for port in ports:
            instances.append(tidegate(port, "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"))
        with nginx(directory, pki, ports) as (daemon, http_port, https_port):
            yield {"apps": ports, "instances": instances, "nginx": daemon, "http": f"http://127.0.0.1:{http_port}",
                   "https": f"https://127.0.0.1:{https_port}", "https_port": https_port}
    finally:
        for instance in instances:
            instance.stop()


def test_the_docs_show_the_config_this_test_runs() -> None:
    assert docs_show("nginx.conf"), "docs/deployment.md must show docs/topologies/nginx.conf verbatim"


def test_https_and_http2_to_the_client_the_client_s_address_to_the_app(topology: dict[str, Any], pki: PKI) -> None:
    pids = set()
    with client(pki, http2=True, source=CLIENT) as browser:
        for _ in range(6):
            response = browser.get(topology["https"] + "/")
            assert response.status_code == 200
            assert response.http_version == "HTTP/2"
            seen = response.json()
            assert seen["client"][0] == CLIENT  # the peer is nginx, 127.0.0.1; X-Forwarded-For names the client
            assert seen["scheme"] == "https"  # X-Forwarded-Proto
            assert seen["http_version"] == "1.1"  # nginx to tidegate
            pids.add(seen["pid"])
    assert pids == {instance.pid for instance in topology["instances"]}  # round robin over both


def test_upstream_connections_are_kept_alive(topology: dict[str, Any]) -> None:
    with client(source=CLIENT) as plain:
        for _ in range(30):
            seen = plain.get(topology["http"] + "/", headers={"connection": "close"}).json()
            assert seen["connection"] == ""  # no "close" passed on: the connection to tidegate stays open
            assert seen["scheme"] == "http"
    # 30 requests, each on a new client connection; to the instances, a few connections kept open and reused
    kept = [established(port) for port in topology["apps"]]
    assert all(count >= 1 for count in kept) and sum(kept) <= 16, kept  # keepalive 16


def test_websocket_through_nginx(topology: dict[str, Any], pki: PKI) -> None:
    import socket

    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", topology["https_port"]), timeout=WAIT,
                                    source_address=(CLIENT, 0))
    with connect(topology["https"].replace("https://", "wss://") + "/ws", sock=sock, ssl=pki.client_context(),
                 server_hostname="localhost", proxy=None, open_timeout=WAIT) as ws:
        about = json.loads(ws.recv(WAIT))
        assert about["client"][0] == CLIENT
        assert about["scheme"] == "wss"
        for text in ("one", "two", "x" * 100_000):
            ws.send(text)
            assert ws.recv(WAIT) == text


def test_server_sent_events_arrive_one_by_one(topology: dict[str, Any], pki: PKI) -> None:
    """Each event is sent only once the test has read the one before: an event nginx held back would stall the
    stream (and fail the test at its timeout)."""
    stream = uuid.uuid4().hex
    with client(pki, http2=True, source=CLIENT) as browser, \
            browser.stream("GET", topology["https"] + f"/sse?id={stream}&n=4") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        for number in range(4):
            event = list(_event(lines))
            assert event[0] == f"id: {number}"
            data = json.loads(event[1].removeprefix("data: "))
            assert data["number"] == number and data["client"][0] == CLIENT
            if number < 3:  # the next event is sent once this one is acknowledged, straight to its instance
                assert httpx.get(f"http://127.0.0.1:{data['port']}/ack?id={stream}", timeout=WAIT).status_code == 200


def _event(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if not line:
            return
        yield line


def test_a_large_upload_is_streamed(topology: dict[str, Any], pki: PKI) -> None:
    """64 MiB over HTTP/2; the rest of the body is sent only once the app has received its first bytes."""
    upload = uuid.uuid4().hex
    piece = b"u" * (256 * 1024)
    count = 256

    def progress() -> bool:
        for port in topology["apps"]:
            seen = httpx.get(f"http://127.0.0.1:{port}/progress?id={upload}", timeout=WAIT).json()["bytes"]
            if seen:
                return True
        return False

    def body() -> Iterator[bytes]:
        for number in range(count):
            yield piece
            if number == 3:
                wait_until(progress, timeout=WAIT)

    with client(pki, http2=True, source=CLIENT, timeout=60) as browser:
        response = browser.post(topology["https"] + f"/upload?id={upload}", content=body())
    assert response.status_code == 200
    result = response.json()
    assert result["bytes"] == count * len(piece)
    assert result["pieces"] > 1
    assert result["client"][0] == CLIENT

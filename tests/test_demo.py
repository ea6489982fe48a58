"""The demo app (``tidegate tidegate.demo:app``) served for real."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import httpx
import pytest

from tidegate import demo

from .conftest import LogRecords, RawClient


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def read_chunk(client: RawClient) -> bytes:
    size = int(client.read_until(b"\r\n")[:-2], 16)
    data = client.read_exactly(size + 2)
    assert data[-2:] == b"\r\n"
    return data[:-2]


def test_page_json_and_not_found(run_server: Any, loop: str) -> None:
    server = run_server(demo.app, loop=loop, lifespan="on")
    with httpx.Client(base_url=server.url, timeout=5) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>tidegate demo</title>" in page.text
        assert 'new EventSource("/events")' in page.text
        head = http.head("/")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == page.headers["content-length"]
        document = http.get("/json?x=1", headers={"x-demo": "yes"}).json()
        assert document["method"] == "GET" and document["path"] == "/json" and document["query_string"] == "x=1"
        assert document["headers"]["x-demo"] == "yes"
        assert document["http_version"] == "1.1"
        assert document["client"][0] == "127.0.0.1"
        assert document["started_at"] <= time.time()  # set by the demo's lifespan startup
        assert http.get("/nowhere").status_code == 404
        assert http.post("/").status_code == 404


def test_events_is_an_sse_clock(run_server: Any, logs: LogRecords) -> None:
    server = run_server(demo.app, lifespan="on")
    with RawClient(server.port, timeout=5) as client:
        client.send(b"GET /events HTTP/1.1\r\nhost: demo\r\naccept: text/event-stream\r\n\r\n")
        _, status, headers = client.read_head()
        assert status == 200
        assert (b"content-type", b"text/event-stream") in headers
        assert (b"cache-control", b"no-cache") in headers
        events = [read_chunk(client) for _ in range(2)]  # one a second
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        assert len(event.split(b":")) == 4  # data: HH:MM:SS
    server.stop()  # the clock noticed the client leaving, or the shutdown would wait for it
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


def test_echo_streams_back_as_it_arrives(run_server: Any, loop: str) -> None:
    server = run_server(demo.app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nhost: demo\r\ntransfer-encoding: chunked\r\n\r\n")
        client.send(b"6\r\nhello \r\n")
        _, status, headers = client.read_head()
        assert status == 200 and (b"transfer-encoding", b"chunked") in headers
        received = b""
        while received != b"hello ":  # the echo answers before the body is complete
            received += read_chunk(client)
        client.send(b"5\r\nworld\r\n")
        while received != b"hello world":
            received += read_chunk(client)
        client.send(b"0\r\n\r\n")
        assert client.read_until(b"0\r\n\r\n").endswith(b"0\r\n\r\n")
    big = bytes(range(256)) * 4096
    assert httpx.post(server.url + "/echo", content=big, timeout=10).content == big


def test_the_readme_command_serves_the_demo(server_process: Any) -> None:
    process = server_process("tidegate.demo:app", "--port", "0", script=True)
    process.wait_serving()
    assert "tidegate demo" in httpx.get(process.url, timeout=5).text
    process.signal(signal.SIGINT)
    assert process.wait() == 0

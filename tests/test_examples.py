"""The FastAPI and Starlette examples under tidegate, over HTTP/1.1 and HTTP/2 (cleartext, prior knowledge)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from .ops_helpers import Proc, serving_url

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 10.0
HAS_HTTP2 = importlib.util.find_spec("tidegate.runtime.h2") is not None
HAS_WEBSOCKET = importlib.util.find_spec("tidegate.runtime.ws") is not None


def load(framework: str) -> ModuleType:
    """examples/<framework>/app.py, under a module name of its own (both examples are called app.py)."""
    pytest.importorskip(framework)
    spec = importlib.util.spec_from_file_location(f"tidegate_example_{framework}", EXAMPLES / framework / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["fastapi", "starlette"])
def example(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def http_version(request: pytest.FixtureRequest) -> str:
    if request.param == "HTTP/2" and not HAS_HTTP2:
        pytest.skip("this build of tidegate does not speak HTTP/2")
    return str(request.param)


def client(url: str, http_version: str) -> httpx.Client:
    if http_version == "HTTP/2":
        return httpx.Client(base_url=url, http1=False, http2=True, timeout=WAIT)  # h2c with prior knowledge
    return httpx.Client(base_url=url, timeout=WAIT)


def test_lifespan_state_reaches_requests(run_server: Any, example: ModuleType, http_version: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    logger = example.logger.name
    with caplog.at_level(logging.INFO, logger=logger):
        server = run_server(example.app, lifespan="on")
        with client(server.url, http_version) as http:
            first = http.get("/")
            second = http.get("/")
        assert first.http_version == http_version
        one, two = first.json(), second.json()
        assert one["framework"] == example.__name__.rsplit("_", 1)[1]
        assert (one["request_number"], two["request_number"]) == (1, 2)  # one counter, shared by every request
        assert one["started_at"] == two["started_at"]
        assert one["http_version"] == http_version.split("/")[1]
        server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == logger]
    assert messages == ["lifespan: startup", "lifespan: shutdown after 2 requests"]


def test_streamed_response(run_server: Any, example: ModuleType, http_version: str) -> None:
    server = run_server(example.app, lifespan="on")
    with client(server.url, http_version) as http, http.stream("GET", "/events?count=4&interval=0.001") as response:
        assert response.status_code == 200
        assert response.http_version == http_version
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        events = [line for line in response.iter_lines() if line]
    assert events == ["data: 0", "data: 1", "data: 2", "data: 3"]


def test_streamed_upload(run_server: Any, example: ModuleType, http_version: str) -> None:
    server = run_server(example.app, lifespan="on")
    payload = os.urandom(1_000_000)
    pieces = [payload[i:i + 100_000] for i in range(0, len(payload), 100_000)]
    with client(server.url, http_version) as http:
        response = http.post("/upload", content=iter(pieces))
    assert response.http_version == http_version
    data = response.json()
    assert data["bytes"] == len(payload) and data["chunks"] >= 1


@pytest.mark.skipif(not HAS_WEBSOCKET, reason="this build of tidegate does not serve WebSocket")
def test_websocket_route(run_server: Any, example: ModuleType) -> None:
    from websockets.sync.client import connect

    server = run_server(example.app, lifespan="on")
    with connect(server.url.replace("http://", "ws://") + "/ws", open_timeout=WAIT) as ws:
        for text in ("hello", "tidegate"):
            ws.send(text)
            assert ws.recv(WAIT) == f"echo: {text}"


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
def test_the_command_in_the_docstring(framework: str) -> None:
    """``tidegate --app-dir examples/<framework> app:app``, as each example's docstring says, in a real process."""
    module = load(framework)
    command = f"tidegate --app-dir examples/{framework} app:app"
    assert command in (module.__doc__ or "")
    args = command.split()[1:]
    proc = Proc([*args, "--port", "0", "--timeout-graceful-shutdown", "2"], cwd=EXAMPLES.parent)
    try:
        url = serving_url(proc)
        with client(url, "HTTP/1.1") as http:
            assert http.get("/").json()["framework"] == framework
    finally:
        assert proc.stop() == 0, proc.output

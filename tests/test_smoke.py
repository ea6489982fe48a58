from __future__ import annotations

import httpx

from .apps import echo, hello


def test_hello(run_server):
    server = run_server(hello)
    response = httpx.get(server.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "tidegate"
    assert "date" in response.headers


def test_echo_keep_alive(run_server):
    server = run_server(echo)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for i in range(3):
            response = client.post("/", content=b"x" * (i * 100000))
            assert response.status_code == 200
            assert len(response.content) == i * 100000

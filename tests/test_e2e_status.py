"""A final status outside 200..599 from the app is never written: the client gets a 500 (the error is logged) and
the next request is served, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

TIMEOUT = 10.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    status = int(scope["path"].strip("/") or 200)
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("http2", [False, True], ids=["http/1.1", "http/2"])
@pytest.mark.parametrize("status", [600, 700, 999, 1000, 99])
def test_a_status_outside_200_to_599_is_answered_500(run_server: Any, caplog: pytest.LogCaptureFixture, http2: bool,
                                                     status: int) -> None:
    server = run_server(app)
    with httpx.Client(http1=not http2, http2=http2, timeout=TIMEOUT) as client:
        response = client.get(f"{server.url}/{status}")
        assert response.status_code == 500
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert client.get(f"{server.url}/200").status_code == 200  # the next request is served
    assert any("Exception in ASGI application" in record.getMessage() for record in caplog.records)


async def fails_after_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/ok":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    raise RuntimeError("failed before its first body")


@pytest.mark.parametrize("http2", [False, True], ids=["http/1.1", "http/2"])
def test_an_app_that_fails_before_any_byte_is_on_the_wire_gets_a_500_sent(run_server: Any, http2: bool) -> None:
    # its response's head waits for the first body: the client gets a 500, not a connection closed on it
    server = run_server(fails_after_start)
    with httpx.Client(http1=not http2, http2=http2, timeout=TIMEOUT) as client:
        assert client.get(f"{server.url}/fail").status_code == 500
    with httpx.Client(http1=not http2, http2=http2, timeout=TIMEOUT) as client:
        assert client.get(f"{server.url}/ok").status_code == 200  # the next client is served

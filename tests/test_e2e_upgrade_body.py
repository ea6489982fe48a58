"""An upgrade request that is answered as a plain request keeps its body: no byte of it is parsed as a request.

The parser takes the bytes after an upgrade request's head for the new protocol's; when the upgrade is not taken
(an Upgrade token we do not speak), the request's body must still be read as its body, never as a request.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RawClient

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def recorder(seen: list[tuple[str, bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        seen.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


def upgrade_post(body: bytes, path: bytes = b"/first") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_body_of_an_unknown_upgrade_is_read_as_body(run_server: Any, loop: str) -> None:
    seen: list[tuple[str, bytes]] = []
    server = run_server(recorder(seen), loop=loop)
    with RawClient(server.port) as client:
        client.send(upgrade_post(SMUGGLED) + SMUGGLED + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        first = client.read_response()
        assert first.status == 200
        assert first.body == SMUGGLED
        second = client.read_response()
        assert second.status == 200
    assert seen == [("/first", SMUGGLED), ("/next", b"")]


def test_body_arriving_after_the_head_is_read_as_body(run_server: Any) -> None:
    seen: list[tuple[str, bytes]] = []
    server = run_server(recorder(seen))
    body = SMUGGLED * 3000  # spread over many reads
    with RawClient(server.port) as client:
        client.send(upgrade_post(body))
        client.send(body[:10])
        client.send(body[10:])
        response = client.read_response()
        assert response.status == 200
        assert response.body == body
        client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert [path for path, _ in seen] == ["/first", "/after"]


def test_chunked_body_of_an_unknown_upgrade_is_refused(run_server: Any) -> None:
    seen: list[tuple[str, bytes]] = []
    server = run_server(recorder(seen))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    with RawClient(server.port) as client:
        client.send(b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        response = client.read_response()
        assert response.status == 400
        client.wait_closed()
    assert seen == []


def websocket_handshake(framing: bytes) -> bytes:
    return (b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + framing + b"\r\n")


@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"],
                         ids=["content-length", "chunked"])
def test_a_websocket_handshake_with_a_body_is_refused(run_server: Any, framing: bytes) -> None:
    # its body bytes would be frames to us and the request's body to a proxy in front (RFC 9112 §6)
    seen: list[tuple[str, bytes]] = []
    server = run_server(recorder(seen))
    with RawClient(server.port) as client:
        client.send(websocket_handshake(framing) + b"\x81\x80abcd")
        response = client.read_response()
        assert response.status == 400
        assert b"no body" in response.body
    with RawClient(server.port) as client:  # the next client is served
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
    assert seen == [("/next", b"")]


def test_a_websocket_handshake_with_an_empty_body_is_accepted(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    server = run_server(app)
    with RawClient(server.port) as client:
        client.send(websocket_handshake(b"Content-Length: 0\r\n"))
        assert client.read_head()[1] == 101


def test_a_websocket_upgrade_in_an_http10_request_is_answered_as_a_plain_request(run_server: Any) -> None:
    # RFC 9110 §7.8: Upgrade is ignored in an HTTP/1.0 request
    seen: list[tuple[str, bytes]] = []
    server = run_server(recorder(seen))
    with RawClient(server.port) as client:
        client.send(websocket_handshake(b"").replace(b"HTTP/1.1", b"HTTP/1.0"))
        response = client.read_response()
        assert response.status == 200
    assert seen == [("/ws", b"")]

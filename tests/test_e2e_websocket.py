"""WebSocket end to end: a real server on 127.0.0.1 port 0, the real `websockets` client and raw sockets.

The last part drives the driver itself with a fake transport, to check back-pressure without timing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import zlib
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tidegate.cli import parse_args
from tidegate.config import Config
from tidegate.protocol.events import Request
from tidegate.runtime.context import ServerContext
from tidegate.runtime.ws import WebSocketDriver

from .apps import Gate
from .conftest import LogRecords, RawClient

TIMEOUT = 20.0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def uri(server: Any, path: str = "/ws?q=1") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def client(server: Any, path: str = "/ws?q=1", **kwargs: Any) -> Any:
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 10)
    kwargs.setdefault("ping_interval", None)
    return connect(uri(server, path), **kwargs)


class Recorder:
    """What the app saw, from the server thread; ``done`` is set when the app returns."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.scope: dict[str, Any] = {}
        self.done = Gate()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict) and e["type"] == kind]


def echo_app(rec: Recorder, accept: dict[str, Any] | None = None) -> Any:
    """Echoes every message; 'close' closes with 4001, 'raise' raises; tries to send after the disconnect."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        rec.scope = scope
        try:
            rec.events.append(await receive())
            await send({"type": "websocket.accept", **(accept or {})})
            while True:
                message = await receive()
                rec.events.append(message)
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text == "close":
                    await send({"type": "websocket.close", "code": 4001, "reason": "done"})
                elif text == "raise":
                    raise RuntimeError("app failure")
                elif text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
            try:
                await send({"type": "websocket.send", "text": "too late"})
            except OSError as exc:
                rec.events.append(("send after close", type(exc).__name__))
        finally:
            rec.done.set()

    return app


def masked(payload: bytes, b0: int = 0x81, mask: bytes = b"\x0f\x1e\x2d\x3c") -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWS(RawClient):
    """A raw socket speaking just enough WebSocket to send what a library would refuse to."""

    def handshake(self, path: bytes = b"/ws", extra: bytes = b"", early: bytes = b"",
                  version: bytes = b"13") -> tuple[int, list[tuple[bytes, bytes]]]:
        key = base64.b64encode(os.urandom(16))
        self.send(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra +
                  b"\r\n" + early)
        _, status, headers = self.read_head()
        return status, headers

    def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = self.read_exactly(2)
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.read_exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(self.read_exactly(8), "big")
        return b0, self.read_exactly(n)

    def read_close(self) -> tuple[int, bytes]:
        while True:
            b0, payload = self.read_frame()
            if b0 == 0x88:
                return int.from_bytes(payload[:2], "big"), payload[2:]


@pytest.fixture(params=["uvloop", "asyncio"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------------------------- handshake

def test_echo_text_and_binary_both_ways(run_server: Any, loop: str) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), loop=loop)

    async def main() -> None:
        async with client(server, compression=None) as ws:
            for message in ["hello", "wörld ✓", "", "x" * 70000, b"\x00\xff", b"", os.urandom(1 << 20)]:
                await ws.send(message)
                assert await ws.recv() == message
    run(main())
    rec.done.wait_sync()
    assert rec.messages("websocket.connect") == [{"type": "websocket.connect"}]
    assert rec.messages("websocket.disconnect") == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]


def test_scope(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), root_path="/mount")

    async def main() -> None:
        async with client(server, "/caf%C3%A9?x=1&y=%20", subprotocols=["chat", "json"],
                          additional_headers={"X-Thing": "1"}) as ws:
            await ws.send("ping")
            await ws.recv()
            return ws.local_address[1]
    client_port = run(main())
    scope = rec.scope
    assert scope["type"] == "websocket" and scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1" and scope["scheme"] == "ws"
    assert scope["path"] == "/mount/café" and scope["raw_path"] == b"/mount/caf%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20" and scope["root_path"] == "/mount"
    assert scope["subprotocols"] == ["chat", "json"]
    assert (b"x-thing", b"1") in scope["headers"] and (b"upgrade", b"websocket") in scope["headers"]
    assert scope["client"] == ("127.0.0.1", client_port) and scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {} and scope["extensions"] == {"websocket.http.response": {}}


def test_wss_over_tls(run_server: Any, loop: str, tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    certfile = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    rec = Recorder()
    server = run_server(echo_app(rec), loop=loop, ssl_certfile=str(certfile))

    async def main() -> None:
        async with connect(f"wss://127.0.0.1:{server.port}/secure", ssl=client_context, open_timeout=10,
                           close_timeout=10, ping_interval=None) as ws:
            for message in ["over TLS", b"\x00" * 100000]:
                await ws.send(message)
                assert await ws.recv() == message
    run(main())
    rec.done.wait_sync()
    assert rec.scope["scheme"] == "wss"
    assert "tls" in rec.scope["extensions"] and "websocket.http.response" in rec.scope["extensions"]
    assert rec.messages("websocket.disconnect")[0]["code"] == 1000


def test_accept_with_subprotocol_and_headers(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec, {"subprotocol": "json", "headers": [(b"x-room", b"lobby")]}))

    async def main() -> None:
        async with client(server, subprotocols=["chat", "json"]) as ws:
            assert ws.subprotocol == "json"
            assert ws.response.status_code == 101
            assert ws.response.headers["x-room"] == "lobby"
            assert ws.response.headers["server"] == "tidegate"
    run(main())


def test_close_before_accept_is_403(run_server: Any, logs: LogRecords) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    server = run_server(app, access_log=True)

    async def main() -> None:
        with pytest.raises(InvalidStatus) as info:
            async with client(server):
                pass
        assert info.value.response.status_code == 403
    run(main())
    logs.wait_for(lambda r: r.name == "tidegate.access" and '"WebSocket /ws?q=1" 403' in r.getMessage())


def test_denial_response(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"www-authenticate", b"Bearer"), (b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    server = run_server(app)
    with RawWS(server.port) as raw:
        key = base64.b64encode(os.urandom(16))
        raw.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        response = raw.read_response()
        assert response.status == 401
        assert response.header(b"www-authenticate") == b"Bearer"
        assert response.body == b"who are you?"
        assert response.header(b"connection") == b"close"
        assert raw.wait_closed() == b""


@pytest.mark.parametrize(("request_head", "status", "headers"), [
    (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
     400, {}),
    (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
     426, {b"sec-websocket-version": b"13"}),
    (b"POST /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
     400, {}),
    (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n",
     400, {}),
])
def test_bad_handshakes_get_a_clear_4xx_and_no_upgrade(run_server: Any, request_head: bytes, status: int,
                                                       headers: dict[bytes, bytes]) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))
    with RawClient(server.port) as raw:
        raw.send(request_head + b"\r\n")
        response = raw.read_response()
        assert response.status == status
        assert b"Sec-WebSocket" in response.body or b"GET" in response.body
        for name, value in headers.items():
            assert response.header(name) == value
        assert response.header(b"upgrade") is None
        assert raw.wait_closed() == b""
    assert rec.scope == {}  # the app never saw it


def test_with_websocket_off_an_upgrade_is_answered_as_a_plain_request(run_server: Any) -> None:
    # --ws none (uvicorn's spelling): the app sees an http scope, over HTTP/1.1 and no RFC 8441 over HTTP/2
    rec = Recorder()
    server = run_server(echo_app(rec), ws_implementation="none")
    with RawWS(server.port) as raw:
        status, headers = raw.handshake()
        assert status == 200 and (b"content-length", b"2") in headers
        assert raw.read_exactly(2) == b"ok"
    assert rec.scope == {}  # the websocket branch of the app never ran


def test_plain_http_still_served(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()))
    with RawClient(server.port) as raw:
        raw.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.read_response().body == b"ok"


def test_early_frames_reach_the_app_after_accept(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))
    with RawWS(server.port) as raw:
        status, _ = raw.handshake(early=masked(b"early bird"))
        assert status == 101
        assert raw.read_frame() == (0x81, b"early bird")


# ---------------------------------------------------------------------------------------------- framing

def test_fragmented_message_with_interleaved_control_frames(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        raw.send(masked(b"frag", 0x01) + masked(b"p1", 0x89) + masked(b"men", 0x00) + masked(b"", 0x8A) +
                 masked(b"ted", 0x80))
        assert raw.read_frame() == (0x8A, b"p1")  # the ping is answered first
        assert raw.read_frame() == (0x81, b"fragmented")


def test_fragmented_message_from_the_client_library(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()))

    async def main() -> None:
        async with client(server) as ws:
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"a" * 100000, b"b" * 100000])
            assert await ws.recv() == b"a" * 100000 + b"b" * 100000
    run(main())


@pytest.mark.parametrize(("data", "code"), [
    (masked(b"\xff\xfe\xfd"), 1007),  # invalid UTF-8
    (bytes((0x81, 0x02)) + b"hi", 1002),  # unmasked
    (masked(b"x", 0xF1), 1002),  # reserved bits
    (masked(b"x", 0x80), 1002),  # continuation of nothing
])
def test_invalid_frames_close_with_the_right_code(run_server: Any, data: bytes, code: int) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        raw.send(data)
        assert raw.read_close()[0] == code
        assert raw.wait_closed() == b""
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == code
    assert ("send after close", "ClientDisconnected") in rec.events


@pytest.mark.parametrize(("bad", "code"), [
    (masked(b"x", 0xA1), 1002),  # Autobahn 3.2: reserved bits
    (masked(b"x", 0x85), 1002),  # 4.1.3: a reserved opcode
    (masked(b"x", 0x80), 1002),  # 5.15-like: a continuation of nothing
    (masked(b"\xff"), 1007),  # invalid UTF-8
])
def test_messages_before_a_protocol_error_are_answered_before_the_close(run_server: Any, loop: str, bad: bytes,
                                                                        code: int) -> None:
    # valid messages and a protocol error in the same write: the app gets the messages and its answers go out,
    # then the connection fails
    rec = Recorder()
    server = run_server(echo_app(rec), loop=loop)
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        raw.send(masked(b"Hello, world!") + masked(b"second", 0x82) + bad)
        assert raw.read_frame() == (0x81, b"Hello, world!")
        assert raw.read_frame() == (0x82, b"second")
        assert raw.read_close()[0] == code
        assert raw.wait_closed() == b""
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == code


def test_message_over_max_size_is_1009_without_reading_it(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), ws_max_size=1000)
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        # only the header of a 16 MiB frame: the answer comes before any payload is sent
        raw.send(bytes((0x82, 0x80 | 127)) + (16 << 20).to_bytes(8, "big") + b"mask")
        assert raw.read_close()[0] == 1009
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1009


def test_message_over_max_size_from_the_client_library(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()), ws_max_size=1000)

    async def main() -> None:
        async with client(server, compression=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    run(main())


# ---------------------------------------------------------------------------------------------- closing

def test_client_close_code_and_reason_reach_the_app(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))

    async def main() -> None:
        async with client(server) as ws:
            await ws.close(4321, "see you")
            assert ws.close_code == 4321
    run(main())
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect") == [{"type": "websocket.disconnect", "code": 4321,
                                                     "reason": "see you"}]
    assert ("send after close", "ClientDisconnected") in rec.events


def test_client_close_without_code_is_1005(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        raw.send(masked(b"", 0x88))
        assert raw.read_frame() == (0x88, b"")
        assert raw.wait_closed() == b""
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1005


def test_app_close_code_and_reason_reach_the_client(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec))

    async def main() -> None:
        async with client(server) as ws:
            await ws.send("close")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "done")
    run(main())
    rec.done.wait_sync()
    # the client's answer to the close arrives as the disconnect
    assert rec.messages("websocket.disconnect")[0]["code"] == 4001


def test_app_exception_closes_with_1011(run_server: Any, logs: LogRecords) -> None:
    server = run_server(echo_app(Recorder()))

    async def main() -> None:
        async with client(server) as ws:
            await ws.send("raise")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    run(main())
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert "Exception in ASGI application" in record.getMessage() and record.exc_info is not None


def test_app_returning_closes_normally(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})

    server = run_server(app)

    async def main() -> None:
        async with client(server) as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    run(main())


def test_server_shutdown_is_1001_after_the_app_got_disconnect(run_server: Any, loop: str) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), loop=loop)

    async def main() -> None:
        async with client(server) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            await stopping
    run(main())
    assert rec.done.is_set()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1001
    assert ("send after close", "ClientDisconnected") in rec.events


def test_shutdown_while_the_app_decides(run_server: Any, logs: LogRecords) -> None:
    """A session accepted after the shutdown began is closed with 1001 at once, the app told first."""
    deciding, decide = Gate(), Gate()
    rec = Recorder()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        deciding.set()
        await decide.wait(TIMEOUT)
        await send({"type": "websocket.accept"})
        rec.events.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            rec.events.append(type(exc).__name__)
        rec.done.set()

    server = run_server(app)

    async def open_client() -> Any:
        return await client(server)

    async def main() -> None:
        opening = asyncio.ensure_future(open_client())
        await asyncio.to_thread(deciding.wait_sync)
        server.request_stop()
        await asyncio.to_thread(logs.wait_for, lambda r: r.getMessage() == "shutting down")
        decide.set()
        ws = await opening
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await ws.close()
    run(main())
    rec.done.wait_sync()
    assert rec.events == [{"type": "websocket.disconnect", "code": 1001, "reason": "server shutting down"},
                          "ClientDisconnected"]


def test_close_timeout_when_the_client_never_answers(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), ws_close_timeout=0.2)
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        raw.send(masked(b"close"))
        assert raw.read_close() == (4001, b"done")
        # we do not answer: the server drops the connection once ws_close_timeout has passed
        assert raw.wait_closed() == b""
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1006


# ---------------------------------------------------------------------------------------------- keepalive

def test_server_pings_and_a_pong_keeps_the_connection(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()), ws_ping_interval=0.05, ws_ping_timeout=5)
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        for _ in range(2):
            b0, payload = raw.read_frame()
            assert b0 == 0x89 and len(payload) == 4
            raw.send(masked(payload, 0x8A))
        raw.send(masked(b"still here"))
        while True:
            b0, payload = raw.read_frame()
            if b0 == 0x81:
                assert payload == b"still here"
                break
            assert b0 == 0x89
            raw.send(masked(payload, 0x8A))


def test_ping_timeout_closes(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), ws_ping_interval=0.05, ws_ping_timeout=0.05)
    with RawWS(server.port) as raw:
        assert raw.handshake()[0] == 101
        assert raw.read_frame()[0] == 0x89  # never answered
        assert raw.read_close()[0] == 1011
        assert raw.wait_closed() == b""
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1006


def test_client_pings_are_answered(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()), ws_ping_interval=0)

    async def main() -> None:
        async with client(server) as ws:
            pong = await ws.ping(b"1234")
            await asyncio.wait_for(pong, 10)
    run(main())


# ---------------------------------------------------------------------------------------------- permessage-deflate

def test_permessage_deflate_negotiated_by_default(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()))

    async def main() -> None:
        async with client(server) as ws:
            [extension] = ws.protocol.extensions
            assert extension.name == "permessage-deflate"
            assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
            for message in ["compress me " * 1000, b"\x00" * 100000, "é"]:
                await ws.send(message)
                assert await ws.recv() == message
    run(main())


@pytest.mark.parametrize("params", [
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_no_context_takeover": True, "client_no_context_takeover": True, "server_max_window_bits": 10,
     "client_max_window_bits": 11},
])
def test_permessage_deflate_context_takeover_parameters(run_server: Any, params: dict[str, Any]) -> None:
    server = run_server(echo_app(Recorder()))

    async def main() -> None:
        async with client(server, compression=None,
                          extensions=[ClientPerMessageDeflateFactory(**params)]) as ws:
            [extension] = ws.protocol.extensions
            assert extension.local_no_context_takeover == params.get("client_no_context_takeover", False)
            assert extension.remote_no_context_takeover == params.get("server_no_context_takeover", False)
            header = ws.response.headers["sec-websocket-extensions"]
            for name in params:
                assert name in header
            for i in range(5):
                message = f"message {i} " * 200
                await ws.send(message)
                assert await ws.recv() == message
    run(main())


def test_compression_state_released_on_each_keepalive_tick_stays_valid(run_server: Any) -> None:
    """The server drops its zlib objects at every ping; its compressed echoes still decode with the client's
    one long-lived decompressor, and the client's compressed messages with context takeover still arrive."""
    server = run_server(echo_app(Recorder()), ws_ping_interval=0.02, ws_ping_timeout=5)
    inflater = zlib.decompressobj(wbits=-12)
    deflater = zlib.compressobj(wbits=-9)
    with RawWS(server.port) as raw:
        status, headers = raw.handshake(
            extra=b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=9\r\n")
        assert status == 101
        assert dict(headers)[b"sec-websocket-extensions"] == (b"permessage-deflate; server_max_window_bits=12; "
                                                               b"client_max_window_bits=9")
        for i in range(6):
            message = f"tick {i % 2}: " + "the same words again and again " * 4
            compressed = deflater.compress(message.encode()) + deflater.flush(zlib.Z_SYNC_FLUSH)
            raw.send(masked(compressed[:-4], 0xC1))
            while True:
                b0, payload = raw.read_frame()
                if b0 == 0x89:
                    raw.send(masked(payload, 0x8A))
                    continue
                assert b0 == 0xC1  # compressed text
                assert inflater.decompress(payload + b"\x00\x00\xff\xff").decode() == message
                break
            # let a keepalive tick (and its compaction) pass before the next message
            b0, payload = raw.read_frame()
            assert b0 == 0x89
            raw.send(masked(payload, 0x8A))


def test_permessage_deflate_can_be_disabled(run_server: Any) -> None:
    server = run_server(echo_app(Recorder()), ws_per_message_deflate=False)

    async def main() -> None:
        async with client(server) as ws:
            assert ws.protocol.extensions == []
            await ws.send("plain")
            assert await ws.recv() == "plain"
    run(main())


def test_decompression_bomb_bounded_by_max_size(run_server: Any) -> None:
    rec = Recorder()
    server = run_server(echo_app(rec), ws_max_size=1 << 20)
    bomb = zlib.compressobj(wbits=-12)
    payload = bomb.compress(b"\x00" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]
    assert len(payload) < 1 << 20
    with RawWS(server.port) as raw:
        status, headers = raw.handshake(extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert status == 101 and dict(headers)[b"sec-websocket-extensions"].startswith(b"permessage-deflate")
        raw.send(masked(payload, 0xC2))
        assert raw.read_close()[0] == 1009
    rec.done.wait_sync()
    assert rec.messages("websocket.disconnect")[0]["code"] == 1009


# ---------------------------------------------------------------------------------------------- back-pressure

def test_reading_pauses_while_the_app_does_not_receive(run_server: Any) -> None:
    received: list[int] = []
    release = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait(TIMEOUT)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            received.append(len(message["bytes"]))
            if len(received) == count:
                await send({"type": "websocket.send", "text": "all here"})

    count = 512
    frame = masked(b"z" * 65536, 0x82)
    server = run_server(app)
    with RawWS(server.port, timeout=1.0) as raw:
        assert raw.handshake()[0] == 101
        sent = 0
        blocked = False
        for _ in range(count):
            try:
                raw.sock.sendall(frame)
            except TimeoutError:
                blocked = True  # the server stopped reading: the socket buffers are full
                break
            sent += 1
        assert blocked, "the server read everything while the app was not receiving"
        assert sent < count
        release.set()


def test_a_slow_app_gets_every_message_once_it_reads(run_server: Any) -> None:
    release = Gate()
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait(TIMEOUT)
        while len(got) < 200:
            message = await receive()
            got.append(message["bytes"])
        await send({"type": "websocket.send", "text": "done"})

    server = run_server(app)

    async def main() -> None:
        async with client(server, compression=None) as ws:
            sender = asyncio.ensure_future(asyncio.gather(*[ws.send(bytes([i]) * 50000) for i in range(200)]))
            await asyncio.sleep(0)
            release.set()
            assert await ws.recv() == "done"
            await sender
    run(main())
    assert got == [bytes([i]) * 50000 for i in range(200)]


# ---------------------------------------------------------------------------------------------- the driver itself

class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closed = False
        self.pauses = 0

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(bytes(d) for d in data)

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1234), "sockname": ("127.0.0.1", 80)}.get(name, default)


def make_driver(app: Any, **settings: Any) -> tuple[WebSocketDriver, FakeTransport, ServerContext]:
    from tidegate.asgi.scope import ConnectionInfo

    state = ServerContext(app, Config.from_flat(app="x", **settings), asyncio.get_running_loop())
    request = Request(b"GET", b"/ws", "1.1", [(b"host", b"t"), (b"upgrade", b"websocket"),
                                             (b"connection", b"upgrade"),
                                             (b"sec-websocket-key", base64.b64encode(b"k" * 16)),
                                             (b"sec-websocket-version", b"13")], True, False, 0, b"websocket")
    driver = WebSocketDriver(state, ConnectionInfo(("127.0.0.1", 1234), ("127.0.0.1", 80), "http"), request)
    transport = FakeTransport()
    driver.connection_made(transport)  # type: ignore[arg-type]
    return driver, transport, state


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_driver_pauses_reading_above_the_queue_limit() -> None:
    async def main() -> None:
        accepted = asyncio.Event()
        release = asyncio.Event()
        got: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            accepted.set()
            await release.wait()
            for _ in range(40):
                got.append((await receive())["text"])

        driver, transport, state = make_driver(app)
        await asyncio.wait_for(accepted.wait(), 5)
        for i in range(40):
            driver.data_received(masked(str(i).encode()))
        assert transport.paused  # the app is not receiving and more than a few messages wait
        release.set()
        await settle()
        assert got == [str(i) for i in range(40)]
        assert not transport.paused
        assert driver in state.connections
        driver.connection_lost(None)
        await settle()
        assert driver not in state.connections
    run(main())


def test_driver_send_waits_while_writing_is_paused() -> None:
    async def main() -> None:
        sent: list[int] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            for i in range(3):
                await send({"type": "websocket.send", "bytes": b"x" * 10})
                sent.append(i)

        driver, _, _ = make_driver(app)
        driver.pause_writing()
        await settle()
        assert sent == []  # the first send() wrote its frame and waits for the transport
        driver.resume_writing()
        await settle()
        assert sent == [0, 1, 2]
    run(main())


def test_driver_send_after_connection_lost_while_paused() -> None:
    async def main() -> None:
        outcome: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            try:
                await send({"type": "websocket.send", "bytes": b"x"})
            except OSError as exc:
                outcome.append(type(exc).__name__)

        driver, _, _ = make_driver(app)
        driver.pause_writing()
        await settle()
        driver.connection_lost(ConnectionResetError())
        await settle()
        assert outcome == ["ClientDisconnected"]
    run(main())


# ---------------------------------------------------------------------------------------------- settings

def test_cli_flags() -> None:
    config = parse_args(["app:app", "--ws-max-size", "1000", "--ws-ping-interval", "0", "--ws-ping-timeout", "3",
                         "--ws-close-timeout", "2", "--no-ws-per-message-deflate"])
    ws = config.websocket
    assert (ws.max_size, ws.ping_interval, ws.ping_timeout, ws.close_timeout, ws.per_message_deflate) == \
        (1000, 0.0, 3.0, 2.0, False)
    defaults = Config().websocket
    assert (defaults.max_size, defaults.ping_interval, defaults.ping_timeout, defaults.per_message_deflate) == \
        (16 * 1024 * 1024, 20.0, 20.0, True)
    with pytest.raises(SystemExit):
        parse_args(["app:app", "--ws-max-size", "0"])


# ---------------------------------------------------------------------------------------------- the demo app

def test_demo_websocket_echo(run_server: Any) -> None:
    from tidegate import demo

    server = run_server(demo.app, lifespan="on")

    async def main() -> None:
        async with client(server, "/ws") as ws:
            await ws.send("hello demo")
            assert await ws.recv() == "hello demo"
            await ws.send(b"\x01\x02")
            assert await ws.recv() == b"\x01\x02"
        with pytest.raises(InvalidStatus) as info:
            async with client(server, "/elsewhere"):
                pass
        assert info.value.response.status_code == 403
    run(main())
    with RawClient(server.port) as page:
        page.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b'+ location.host + "/ws"' in page.read_response().body

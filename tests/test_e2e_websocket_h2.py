"""WebSocket over HTTP/2 (RFC 8441): extended CONNECT driven by h2 over a socket, frames made and read by websockets.

The same WebSocket session and ASGI exchange as over HTTP/1.1 run on one stream of an HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.events
import h2.settings
import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from .test_e2e_http2 import H2Client, raw_frames_until_closed

TIMEOUT = 10.0
ErrorCodes = h2.errors.ErrorCodes


class WSApp:
    """Echo, with a few behaviours chosen by path; reports what the app saw to the test thread."""

    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gate: asyncio.Event | None = None

    def open_gate(self) -> None:
        assert self.loop is not None and self.gate is not None
        self.loop.call_soon_threadsafe(self.gate.set)

    def next(self, kind: str) -> Any:
        while True:
            got, value = self.seen.get(timeout=TIMEOUT)
            if got == kind:
                return value

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"plain " + scope["http_version"].encode()})
            return
        assert (await receive())["type"] == "websocket.connect"
        self.loop = asyncio.get_running_loop()
        self.gate = asyncio.Event()
        self.seen.put(("scope", scope))
        path = scope["path"]
        if path == "/deny":
            await send({"type": "websocket.close"})
            return
        if path == "/custom-deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"no")]})
            await send({"type": "websocket.http.response.body", "body": b"go away"})
            return
        subprotocol = scope["subprotocols"][0] if scope["subprotocols"] else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": [(b"x-extra", b"1")]})
        if path == "/mute":
            await self.gate.wait()  # reads nothing until told to
        if path == "/bye":
            await send({"type": "websocket.send", "text": "bye"})
            await send({"type": "websocket.close", "code": 4001, "reason": "done"})
            self.seen.put(("closed", None))
            message = await receive()
            self.seen.put(("disconnect", message))
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.seen.put(("disconnect", message))
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"][::-1]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"] * 2})


class WSOverH2:
    """One WebSocket on an h2 client connection."""

    def __init__(self, client: H2Client, path: str = "/chat", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.client = client
        #: bytes received on the stream and not yet parsed into frames, and how many client events were looked at
        self.buffered = b""
        self.seen = 0
        fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                  (b":path", path.encode()), (b":authority", b"localhost"), (b"sec-websocket-version", b"13")]
        if headers is not None:
            fields = fields[:3] + headers
        self.stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(self.stream_id, fields)
        client.flush()

    def response(self) -> list[tuple[bytes, bytes]]:
        event = self.client.until(lambda e: isinstance(e, (h2.events.ResponseReceived, h2.events.StreamReset))
                                  and e.stream_id == self.stream_id)
        assert isinstance(event, h2.events.ResponseReceived), event
        return list(event.headers)

    def send(self, frame: Frame, end: bool = False) -> None:
        self.client.conn.send_data(self.stream_id, frame.serialize(mask=True, extensions=[]), end_stream=end)
        self.client.flush()


@pytest.fixture
def ws_server(run_server: Any) -> Iterator[tuple[Any, WSApp, list[H2Client]]]:
    app = WSApp()
    clients: list[H2Client] = []
    server = run_server(app)
    yield server, app, clients
    for client in clients:
        client.close()


def connect(ws_server: Any) -> H2Client:
    server, _, clients = ws_server
    client = H2Client(server.port)
    clients.append(client)
    client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    return client


def frame_of(ws: WSOverH2) -> Frame:
    """The next frame on the WebSocket's stream, from what was received already or read for."""
    while True:
        for event in ws.client.events[ws.seen:]:
            if isinstance(event, h2.events.DataReceived) and event.stream_id == ws.stream_id:
                ws.buffered += event.data
        ws.seen = len(ws.client.events)
        reader = StreamReader()
        reader.feed_data(ws.buffered)
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame: Frame = done.value
            ws.buffered = ws.buffered[len(frame.serialize(mask=False, extensions=[])):]
            return frame
        ws.client.read()


def test_enable_connect_protocol_is_advertised(ws_server: Any) -> None:
    client = connect(ws_server)
    assert client.conn.remote_settings.enable_connect_protocol == 1


def test_echo_over_http2_and_the_scope(ws_server: Any) -> None:
    _, app, _ = ws_server
    client = connect(ws_server)
    ws = WSOverH2(client, "/chat?room=1", [(b":path", b"/chat?room=1"), (b":authority", b"localhost"),
                                           (b"sec-websocket-version", b"13"),
                                           (b"sec-websocket-protocol", b"chat, superchat")])
    headers = dict(ws.response())
    assert headers[b":status"] == b"200"
    assert headers[b"sec-websocket-protocol"] == b"chat" and headers[b"x-extra"] == b"1"
    assert b"sec-websocket-accept" not in headers
    scope = app.next("scope")
    assert scope["type"] == "websocket" and scope["http_version"] == "2" and scope["scheme"] == "ws"
    assert scope["path"] == "/chat" and scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["chat", "superchat"]
    ws.send(Frame(Opcode.TEXT, b"hello"))
    assert frame_of(ws) == Frame(Opcode.TEXT, b"olleh")
    ws.send(Frame(Opcode.BINARY, b"\x00\x01"))
    assert frame_of(ws) == Frame(Opcode.BINARY, b"\x00\x01\x00\x01")
    # a fragmented message and a ping in between
    ws.send(Frame(Opcode.TEXT, b"ab", fin=False))
    ws.send(Frame(Opcode.PING, b"p"))
    ws.send(Frame(Opcode.CONT, b"cd"))
    assert frame_of(ws) == Frame(Opcode.PONG, b"p")
    assert frame_of(ws) == Frame(Opcode.TEXT, b"dcba")
    # the client closes: its close frame is echoed, the app told, and the stream ends both ways
    ws.send(Frame(Opcode.CLOSE, Close(1000, "see you").serialize()))
    reply = frame_of(ws)
    assert reply.opcode == Opcode.CLOSE and Close.parse(reply.data).code == 1000
    assert app.next("disconnect") == {"type": "websocket.disconnect", "code": 1000, "reason": "see you"}
    client.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == ws.stream_id)
    client.conn.send_data(ws.stream_id, b"", end_stream=True)
    client.flush()
    # the connection still serves plain requests
    stream_id = client.request("/plain")
    assert client.response(stream_id)[1] == b"plain 2"


def test_app_closes(ws_server: Any) -> None:
    _, app, _ = ws_server
    client = connect(ws_server)
    ws = WSOverH2(client, "/bye")
    ws.response()
    assert frame_of(ws) == Frame(Opcode.TEXT, b"bye")
    close = frame_of(ws)
    assert close.opcode == Opcode.CLOSE and Close.parse(close.data) == Close(4001, "done")
    app.next("closed")
    ws.send(Frame(Opcode.CLOSE, Close(4001, "done").serialize()), end=True)
    assert app.next("disconnect")["code"] == 4001
    client.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == ws.stream_id)


def test_many_websockets_and_requests_on_one_connection(ws_server: Any) -> None:
    client = connect(ws_server)
    sockets = [WSOverH2(client, f"/ws{i}") for i in range(5)]
    for ws in sockets:
        ws.response()
    for i, ws in enumerate(sockets):
        ws.send(Frame(Opcode.TEXT, f"msg{i}".encode()))
    plain = client.request("/plain")
    for i, ws in enumerate(sockets):
        assert frame_of(ws).data == f"{i}gsm".encode()
    assert client.response(plain)[1] == b"plain 2"


def test_denial_and_custom_denial(ws_server: Any) -> None:
    client = connect(ws_server)
    ws = WSOverH2(client, "/deny")
    assert dict(ws.response())[b":status"] == b"403"
    ws = WSOverH2(client, "/custom-deny")
    headers = dict(ws.response())
    assert headers[b":status"] == b"401" and headers[b"x-why"] == b"no"
    body = client.until(lambda e: isinstance(e, h2.events.DataReceived) and e.stream_id == ws.stream_id)
    assert body.data == b"go away"


def test_bad_handshake_gets_426(ws_server: Any) -> None:
    client = connect(ws_server)
    ws = WSOverH2(client, "/chat", [(b":path", b"/chat"), (b":authority", b"localhost")])  # no version
    headers = dict(ws.response())
    assert headers[b":status"] == b"426" and headers[b"sec-websocket-version"] == b"13"


def test_client_reset_is_a_1006_disconnect(ws_server: Any) -> None:
    _, app, _ = ws_server
    client = connect(ws_server)
    ws = WSOverH2(client)
    ws.response()
    client.conn.reset_stream(ws.stream_id, ErrorCodes.CANCEL)
    client.flush()
    assert app.next("disconnect")["code"] == 1006
    stream_id = client.request("/plain")
    assert client.response(stream_id)[1] == b"plain 2"


def test_end_stream_without_a_close_frame_is_a_loss(ws_server: Any) -> None:
    _, app, _ = ws_server
    client = connect(ws_server)
    ws = WSOverH2(client)
    ws.response()
    client.conn.send_data(ws.stream_id, b"", end_stream=True)
    client.flush()
    assert app.next("disconnect")["code"] == 1006
    reset = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == ws.stream_id)
    assert reset.error_code == ErrorCodes.CANCEL


def test_permessage_deflate_over_http2(ws_server: Any) -> None:
    client = connect(ws_server)
    ws = WSOverH2(client, "/z", [(b":path", b"/z"), (b":authority", b"localhost"), (b"sec-websocket-version", b"13"),
                                 (b"sec-websocket-extensions", b"permessage-deflate")])
    headers = dict(ws.response())
    assert headers[b"sec-websocket-extensions"].startswith(b"permessage-deflate")


def test_shutdown_closes_with_1001(run_server: Any) -> None:
    app = WSApp()
    server = run_server(app, ws_close_timeout=0.5)
    client = H2Client(server.port)
    try:
        ws = WSOverH2(client)
        ws.response()
        app.next("scope")
        server.request_stop()
        assert app.next("disconnect")["code"] == 1001
        # h2 takes no DATA after a GOAWAY: the frames are read raw; the client does not answer the close frame, so
        # the stream is reset after --ws-close-timeout and the connection closes
        frames = raw_frames_until_closed(client.sock)
        assert [(t, s) for t, _, s, _ in frames if t in (3, 7)] == [(7, 0), (3, ws.stream_id)]
        data = b"".join(payload for ftype, _, stream_id, payload in frames if ftype == 0 and stream_id == ws.stream_id)
        assert data[:2] == b"\x88\x16" and data[2:4] == (1001).to_bytes(2, "big")
    finally:
        client.close()


def test_http2_without_websocket_support_has_no_extended_connect(run_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    from tidegate.config import Config
    from tidegate.runtime.context import ServerContext
    from tidegate.runtime.negotiate import handlers

    loop = asyncio.new_event_loop()
    upgrades, prior_knowledge = handlers(Config.from_flat(app="x:y"))
    upgrades.pop(b"websocket", None)
    ctx = ServerContext(app, Config.from_flat(app="x:y"), loop, upgrades=upgrades, prior_knowledge=prior_knowledge)
    assert ctx.connect_protocol is False
    loop.close()


def test_keepalive_pings_and_a_missing_pong(run_server: Any) -> None:
    app = WSApp()
    server = run_server(app, ws_ping_interval=0.1, ws_ping_timeout=0.3)
    client = H2Client(server.port)
    try:
        ws = WSOverH2(client)
        ws.response()
        ping = frame_of(ws)
        assert ping.opcode == Opcode.PING
        ws.send(Frame(Opcode.PONG, ping.data))
        assert frame_of(ws).opcode == Opcode.PING  # the next one; this one is not answered
        assert app.next("disconnect")["code"] == 1006
        reset = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == ws.stream_id)
        assert reset.error_code == ErrorCodes.CANCEL
    finally:
        client.close()


def test_unread_messages_hold_back_the_window(ws_server: Any) -> None:
    _, app, _ = ws_server
    client = connect(ws_server)
    ws = WSOverH2(client, "/mute")
    ws.response()
    app.next("scope")
    window = client.conn.local_flow_control_window(ws.stream_id)
    for _ in range(40):
        ws.send(Frame(Opcode.BINARY, b"x" * 1000))
    client.conn.ping(b"syncsync")
    client.flush()
    client.until(lambda e: isinstance(e, h2.events.PingAckReceived))
    # past a few queued messages the app does not take, what the client sends is not given back
    held = window - client.conn.local_flow_control_window(ws.stream_id)
    assert held >= 20 * 1006
    app.open_gate()
    for _ in range(40):
        assert frame_of(ws).data == b"x" * 2000
    client.until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == ws.stream_id)
    assert client.conn.local_flow_control_window(ws.stream_id) > window - held

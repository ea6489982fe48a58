"""The WebSocket exchange and scope, with a fake stream: ASGI messages in and out, no sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tidegate.asgi.errors import ASGIError, ClientDisconnected
from tidegate.asgi.scope import ConnectionInfo, websocket_scope
from tidegate.asgi.websocket import MAX_QUEUED, WebSocketExchange
from tidegate.protocol.events import ProtocolError, Request


class FakeStream:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.write_paused = False
        self.reading_paused = False
        self.drained = 0
        self.resumed = 0

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        if subprotocol == "bad subprotocol":
            raise ProtocolError("invalid subprotocol")
        self.calls.append(("accept", subprotocol, headers))

    def send_text(self, text: str) -> None:
        self.calls.append(("text", text.encode()))

    def send_bytes(self, data: bytes) -> None:
        self.calls.append(("bytes", data))

    def close(self, code: int, reason: str) -> None:
        if code == 999:
            raise ProtocolError("invalid close code 999")
        self.calls.append(("close", code, reason))

    def send_head(self, status: int, headers: Any) -> None:
        if status < 200:
            raise ProtocolError("bad status")
        self.calls.append(("head", status, list(headers)))

    def send_data(self, data: bytes, end: bool) -> None:
        self.calls.append(("data", data, end))

    def send_error(self, status: int) -> None:
        self.calls.append(("error", status))

    def abort(self) -> None:
        self.calls.append(("abort",))

    async def drain(self) -> None:
        self.drained += 1
        self.write_paused = False

    def create_waiter(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def resume_reading(self) -> None:
        self.resumed += 1
        self.reading_paused = False


def request(target: bytes = b"/chat?room=1", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(b"GET", target, "1.1", headers if headers is not None else [(b"host", b"example")], True,
                   False, 0, b"websocket")


def make(scope: dict[str, Any] | None = None) -> tuple[WebSocketExchange, FakeStream]:
    stream = FakeStream()
    info = ConnectionInfo(("127.0.0.1", 5000), ("127.0.0.1", 8000), "http")
    return WebSocketExchange(stream, scope or websocket_scope(request(), info)), stream


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------- scope

def test_websocket_scope_is_complete():
    headers = [(b"host", b"example"), (b"sec-websocket-protocol", b"chat, superchat"),
               (b"sec-websocket-protocol", b" json ,"), (b"x-dup", b"1"), (b"x-dup", b"2")]
    info = ConnectionInfo(("10.0.0.1", 4321), ("10.0.0.2", 443), "https", "/mount", {"db": 1},
                          {"tls": {"server_cert": None}})
    scope = websocket_scope(request(b"/caf%C3%A9/x%2Fy?q=%20&r=2", headers), info)
    assert scope == {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss",
        "path": "/mount/café/x/y",
        "raw_path": b"/mount/caf%C3%A9/x%2Fy",
        "query_string": b"q=%20&r=2",
        "root_path": "/mount",
        "headers": headers,
        "client": ("10.0.0.1", 4321),
        "server": ("10.0.0.2", 443),
        "subprotocols": ["chat", "superchat", "json"],
        "state": {"db": 1},
        "extensions": {"tls": {"server_cert": None}, "websocket.http.response": {}},
    }
    assert scope["state"] is not info.state
    other = websocket_scope(request(), ConnectionInfo(None, ("/tmp/sock", None), "http"))
    assert other["scheme"] == "ws" and other["subprotocols"] == [] and other["path"] == "/chat"
    assert other["server"] == ("/tmp/sock", None) and other["client"] is None
    assert other["extensions"]["websocket.http.response"] is not scope["extensions"]["websocket.http.response"]


# ---------------------------------------------------------------------------------------------- messages

def test_receive_order_connect_messages_disconnect():
    async def main() -> None:
        exchange, _ = make()
        assert await exchange.receive() == {"type": "websocket.connect"}
        await exchange.send({"type": "websocket.accept"})
        exchange.on_message("hello")
        exchange.on_message(b"\x00\x01")
        exchange.on_close(4000, "bye")
        assert await exchange.receive() == {"type": "websocket.receive", "text": "hello"}
        assert await exchange.receive() == {"type": "websocket.receive", "bytes": b"\x00\x01"}
        assert await exchange.receive() == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
        assert await exchange.receive() == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
    run(main())


def test_receive_waits_for_a_message():
    async def main() -> None:
        exchange, _ = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.accept"})
        pending = asyncio.ensure_future(exchange.receive())
        await asyncio.sleep(0)
        assert not pending.done()
        exchange.on_message("late")
        assert await asyncio.wait_for(pending, 5) == {"type": "websocket.receive", "text": "late"}
        pending = asyncio.ensure_future(exchange.receive())
        await asyncio.sleep(0)
        exchange.on_close(1006)
        exchange.on_close(1000, "ignored: the first close counts")
        assert await asyncio.wait_for(pending, 5) == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    run(main())


def test_accept_with_subprotocol_and_headers():
    async def main() -> None:
        exchange, stream = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.accept", "subprotocol": "chat",
                             "headers": [(b"x-a", b"1"), [bytearray(b"x-b"), b"2"]]})
        assert stream.calls == [("accept", "chat", [(b"x-a", b"1"), (b"x-b", b"2")])]
        assert exchange.status == 101
        await exchange.send({"type": "websocket.send", "text": "t"})
        await exchange.send({"type": "websocket.send", "bytes": b"b", "text": None})
        await exchange.send({"type": "websocket.send", "bytes": bytearray(b"ba")})
        await exchange.send({"type": "websocket.close", "code": 4001, "reason": "done"})
        assert stream.calls[1:] == [("text", b"t"), ("bytes", b"b"), ("bytes", b"ba"), ("close", 4001, "done")]
        with pytest.raises(ClientDisconnected):
            await exchange.send({"type": "websocket.send", "text": "after close"})
    run(main())


def test_close_defaults():
    async def main() -> None:
        exchange, stream = make()
        await exchange.send({"type": "websocket.accept"})
        await exchange.send({"type": "websocket.close", "reason": None})
        assert stream.calls[-1] == ("close", 1000, "")
    run(main())


def test_close_before_accept_is_403():
    async def main() -> None:
        exchange, stream = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.close", "code": 1008})
        assert stream.calls == [("error", 403)] and exchange.status == 403
        with pytest.raises(ClientDisconnected):
            await exchange.send({"type": "websocket.accept"})
    run(main())


def test_denial_response():
    async def main() -> None:
        exchange, stream = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.http.response.start", "status": 401,
                             "headers": [(b"www-authenticate", b"Bearer")]})
        await exchange.send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await exchange.send({"type": "websocket.http.response.body", "body": b"entry"})
        assert stream.calls == [("head", 401, [(b"www-authenticate", b"Bearer")]), ("data", b"no ", False),
                                ("data", b"entry", True)]
        assert exchange.status == 401
        with pytest.raises(ClientDisconnected):
            await exchange.send({"type": "websocket.http.response.body", "body": b"more"})
    run(main())


@pytest.mark.parametrize(("messages", "error"), [
    ([{"type": "websocket.send", "text": "x"}], "before 'websocket.accept'"),
    ([{"type": "websocket.http.response.body"}], "before 'websocket.http.response.start'"),
    ([{"type": "websocket.accept"}, {"type": "websocket.accept"}], "twice"),
    ([{"type": "websocket.accept"}, {"type": "websocket.http.response.start", "status": 403}], "after"),
    ([{"type": "websocket.accept"}, {"type": "websocket.send"}], "needs 'bytes' or 'text'"),
    ([{"type": "websocket.accept"}, {"type": "websocket.send", "text": "a", "bytes": b"b"}], "not both"),
    ([{"type": "websocket.accept"}, {"type": "websocket.send", "text": b"a"}], "'text' must be a str"),
    ([{"type": "websocket.accept"}, {"type": "websocket.send", "bytes": "a"}], "expected bytes"),
    ([{"type": "websocket.accept"}, {"type": "websocket.send", "text": "\ud800"}], "UTF-8"),
    ([{"type": "websocket.accept"}, {"type": "websocket.close", "code": "1000"}], "'code' must be an int"),
    ([{"type": "websocket.accept"}, {"type": "websocket.close", "reason": 5}], "'reason' must be a str"),
    ([{"type": "websocket.accept"}, {"type": "websocket.close", "code": 999}], "invalid close code"),
    ([{"type": "websocket.accept", "subprotocol": b"chat"}], "'subprotocol' must be a str"),
    ([{"type": "websocket.accept", "subprotocol": "bad subprotocol"}], "invalid subprotocol"),
    ([{"type": "websocket.accept", "headers": [(b"a",)]}], "'headers' must be"),
    ([{"type": "websocket.accept", "headers": [("a", "b")]}], "expected bytes"),
    ([{"type": "websocket.http.response.start", "status": "403"}], "'status' must be an int"),
    ([{"type": "websocket.http.response.start", "status": 101}], "bad status"),
    ([{"type": "websocket.http.response.start", "status": 403}, {"type": "websocket.accept"}],
     "during the denial response"),
    ([{"type": "http.response.start", "status": 200}], "unknown message type"),
    (["websocket.accept"], "must be a dict"),
    ([{"no": "type"}], "must be a dict"),
])
def test_invalid_messages_name_the_problem(messages, error):
    async def main() -> None:
        exchange, _ = make()
        await exchange.receive()
        for message in messages[:-1]:
            await exchange.send(message)
        with pytest.raises(ASGIError, match=error):
            await exchange.send(messages[-1])
    run(main())


def test_send_after_the_client_left_raises_an_oserror():
    async def main() -> None:
        exchange, _ = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.accept"})
        exchange.on_close(1001, "")
        with pytest.raises(OSError) as info:
            await exchange.send({"type": "websocket.send", "text": "x"})
        assert isinstance(info.value, ClientDisconnected)
        with pytest.raises(ASGIError):
            await exchange.send({"type": "bogus"})
    run(main())


def test_session_ending_while_being_accepted():
    async def main() -> None:
        exchange, stream = make()
        await exchange.receive()
        original = stream.accept

        def accept_then_close(subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
            original(subprotocol, headers)
            exchange.on_close(1001, "server shutting down")

        stream.accept = accept_then_close  # type: ignore[method-assign]
        await exchange.send({"type": "websocket.accept"})
        assert exchange.status == 101
        assert await exchange.receive() == {"type": "websocket.disconnect", "code": 1001,
                                            "reason": "server shutting down"}
        with pytest.raises(ClientDisconnected):
            await exchange.send({"type": "websocket.send", "text": "x"})
    run(main())


def test_disconnect_during_the_handshake():
    async def main() -> None:
        exchange, _ = make()
        assert await exchange.receive() == {"type": "websocket.connect"}
        exchange.on_close(1006)
        assert await exchange.receive() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        with pytest.raises(ClientDisconnected):
            await exchange.send({"type": "websocket.accept"})
    run(main())


# ---------------------------------------------------------------------------------------------- back-pressure

def test_the_queue_limit_is_the_setting_ws_max_queue():
    exchange, _ = make()
    exchange.queue_limit = 2  # as --ws-max-queue 2 makes it
    for i in range(3):
        exchange.on_message(str(i))
        assert exchange.over_limit == (i == 2)


def test_messages_reach_the_app_in_order_through_bursts_and_lulls():
    async def main() -> None:
        exchange, _ = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.accept"})
        got: list[object] = []

        async def take(count: int) -> None:
            for _ in range(count):
                message = await exchange.receive()
                got.append(message.get("text", message.get("bytes")))

        exchange.on_message("")  # an empty message is a message
        await take(1)
        for data in ("a", b"b", "c"):  # a burst, taken in two goes with another arriving between
            exchange.on_message(data)
        await take(2)
        exchange.on_message("d")
        await take(2)
        assert not exchange.has_messages and exchange.queued_bytes == 0
        exchange.on_message(b"e")  # after the lull, alone again
        await take(1)
        assert got == ["", "a", b"b", "c", "d", b"e"]
        assert not exchange.has_messages and not exchange.over_limit
    run(main())


def test_queue_limit_and_resume():
    async def main() -> None:
        exchange, stream = make()
        await exchange.receive()
        await exchange.send({"type": "websocket.accept"})
        for i in range(MAX_QUEUED + 1):
            exchange.on_message(str(i))
            assert exchange.over_limit == (i == MAX_QUEUED)
        stream.reading_paused = True  # the driver paused
        await exchange.receive()
        assert stream.resumed == 1 and not exchange.over_limit
        exchange.on_message(b"x" * 70000)
        assert exchange.over_limit and exchange.queued_bytes > 65536
    run(main())


def test_send_waits_while_writing_is_paused():
    async def main() -> None:
        exchange, stream = make()
        await exchange.send({"type": "websocket.accept"})
        stream.write_paused = True
        await exchange.send({"type": "websocket.send", "bytes": b"x"})
        assert stream.drained == 1
        await exchange.send({"type": "websocket.send", "bytes": b"y"})
        assert stream.drained == 1
    run(main())


def test_denial_body_waits_while_writing_is_paused():
    async def main() -> None:
        exchange, stream = make()
        await exchange.send({"type": "websocket.http.response.start", "status": 403})
        stream.write_paused = True
        await exchange.send({"type": "websocket.http.response.body", "body": b"x", "more_body": True})
        assert stream.drained == 1
    run(main())


# ---------------------------------------------------------------------------------------------- running the app

def test_app_exception_before_accept_is_500(caplog):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("boom")

    exchange, stream = make()
    with caplog.at_level(logging.ERROR, "tidegate.error"):
        run(exchange.run(app))
    assert stream.calls == [("error", 500)]
    assert len(caplog.records) == 1 and "Exception in ASGI application" in caplog.records[0].getMessage()
    assert "/chat?room=1" in caplog.records[0].getMessage()


def test_app_exception_after_accept_is_1011(caplog):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom")

    exchange, stream = make()
    with caplog.at_level(logging.ERROR, "tidegate.error"):
        run(exchange.run(app))
    assert stream.calls[-1] == ("close", 1011, "")
    assert len(caplog.records) == 1


def test_app_exception_during_denial_aborts(caplog):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.http.response.start", "status": 403})
        raise RuntimeError("boom")

    exchange, stream = make()
    with caplog.at_level(logging.ERROR, "tidegate.error"):
        run(exchange.run(app))
    assert stream.calls[-1] == ("abort",)


@pytest.mark.parametrize(("messages", "last", "logged"), [
    ([], ("error", 500), True),
    ([{"type": "websocket.http.response.start", "status": 403}], ("abort",), True),
    ([{"type": "websocket.accept"}], ("close", 1000, ""), False),
    ([{"type": "websocket.accept"}, {"type": "websocket.close", "code": 4000}], ("close", 4000, ""), False),
    ([{"type": "websocket.close"}], ("error", 403), False),
])
def test_app_returning(messages, last, logged, caplog):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    exchange, stream = make()
    with caplog.at_level(logging.ERROR, "tidegate.error"):
        run(exchange.run(app))
    assert stream.calls[-1] == last
    assert bool(caplog.records) == logged


def test_client_disconnected_escaping_the_app_is_not_an_error(caplog):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        exchange.on_close(1006)
        await send({"type": "websocket.send", "text": "x"})

    exchange, stream = make()
    with caplog.at_level(logging.DEBUG, "tidegate.error"):
        run(exchange.run(app))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert stream.calls == [("accept", None, [])]

"""The HTTP exchange (one ASGI request/response) without sockets, over a fake stream.

The fake stream frames what the exchange asks for with a real :class:`H1Connection`, so the bytes a client would
see can be checked too; its waiters are asyncio futures (the tests use asyncio, the exchange does not).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from tidegate.asgi.errors import ASGIError, ClientDisconnected
from tidegate.asgi.http import HTTPExchange, Stream, escape_log
from tidegate.protocol.events import ProtocolError, Request
from tidegate.protocol.http1 import H1Connection

TIMEOUT = 5.0


class FakeStream(Stream):
    """Implements the exchange's ``Stream``; records each call in ``calls`` and the bytes in ``out``."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.out: list[bytes] = []
        self.conn = H1Connection(write=self.out.append)
        self.calls: list[tuple[Any, ...]] = []
        self.write_paused = False
        self.reading_paused = False
        self.lost = False
        self.aborted = False
        self.waiters: list[asyncio.Future[None]] = []
        self.drain_waiter: asyncio.Future[None] | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.out)

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.calls.append(("send_head", status))
        self.conn.start_response(self.request, status, list(headers))

    def send_data(self, data: bytes, end: bool) -> None:
        self.calls.append(("send_data", data, end))
        self.conn.send_body(data, end)

    def response_done(self) -> None:
        self.calls.append(("response_done",))

    def response_cut(self) -> None:
        self.calls.append(("response_cut",))

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("send_informational", status, headers))
        self.out.append(self.conn.informational(status, headers))

    def send_error(self, status: int) -> None:
        self.calls.append(("send_error", status))
        self.out.append(self.conn.error_response(status))

    def abort(self) -> None:
        self.calls.append(("abort",))
        self.aborted = True

    async def drain(self) -> None:
        self.calls.append(("drain",))
        if self.write_paused and not self.lost:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter
        if self.lost:
            raise ClientDisconnected("the client has disconnected")

    def create_waiter(self) -> asyncio.Future[None]:
        self.calls.append(("create_waiter",))
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading",))
        self.reading_paused = False


def make(method: bytes = b"GET", target: bytes = b"/", *, expect_continue: bool = False, version: str = "1.1",
         scope: dict[str, Any] | None = None) -> tuple[HTTPExchange, FakeStream]:
    request = Request(method, target, version, [(b"host", b"a")], True, expect_continue)
    stream = FakeStream(request)
    path, _, query = target.partition(b"?")
    scope = scope if scope is not None else {"type": "http", "method": method.decode(), "path": path.decode(),
                                             "query_string": query, "http_version": version}
    return HTTPExchange(stream, scope, expect_continue), stream


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(main())


async def waiting(stream: FakeStream, count: int = 1) -> None:
    """Let other tasks run until the stream has handed out ``count`` waiters (bounded)."""
    for _ in range(1000):
        if len(stream.waiters) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError("nobody waited")


@pytest.fixture
def error_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``tidegate.error`` logger, whatever the logging set-up of earlier tests."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tidegate.error")
    handler = Collect(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def errors(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.ERROR]


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


# ---------------------------------------------------------------------------------------------------- receive


def test_receive_for_a_bodyless_request() -> None:
    exchange, stream = make()
    exchange.on_end()
    assert run(exchange.receive()) == {"type": "http.request", "body": b"", "more_body": False}
    assert "create_waiter" not in stream.names()
    assert exchange.request_complete


def test_body_in_chunks_with_more_body() -> None:
    exchange, _ = make(b"POST")

    async def scenario() -> list[dict[str, Any]]:
        got = []
        exchange.on_data(b"first")
        got.append(await exchange.receive())
        exchange.on_data(b"sec")
        exchange.on_data(b"ond")
        got.append(await exchange.receive())
        exchange.on_end()
        got.append(await exchange.receive())
        return got

    assert run(scenario()) == [
        {"type": "http.request", "body": b"first", "more_body": True},
        {"type": "http.request", "body": b"second", "more_body": True},  # several pieces arrive joined
        {"type": "http.request", "body": b"", "more_body": False},
    ]


def test_the_last_piece_and_the_end_arrive_together() -> None:
    exchange, _ = make(b"POST")
    exchange.on_data(b"all")
    exchange.on_data(b" of it")
    exchange.on_end()
    assert run(exchange.receive()) == {"type": "http.request", "body": b"all of it", "more_body": False}


def test_a_waiting_receive_is_woken_by_data() -> None:
    exchange, stream = make(b"POST")

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        assert not task.done()
        exchange.on_data(b"late")
        return await task

    assert run(scenario()) == {"type": "http.request", "body": b"late", "more_body": True}


def test_receive_holds_only_what_was_fed_and_resumes_a_paused_reader() -> None:
    exchange, stream = make(b"POST")
    exchange.on_data(b"x" * 1000)
    exchange.on_data(b"y" * 500)
    assert exchange.buffered == 1500
    stream.reading_paused = True  # the driver paused reading above its limit

    async def scenario() -> dict[str, Any]:
        message = await exchange.receive()
        assert exchange.buffered == 0
        assert stream.names() == ["resume_reading"]
        exchange.on_data(b"z")
        second = await exchange.receive()
        assert stream.names() == ["resume_reading"]  # not paused any more: not resumed again
        return {**message, "second": second["body"]}

    assert run(scenario()) == {"type": "http.request", "body": b"x" * 1000 + b"y" * 500, "more_body": True,
                               "second": b"z"}


# ---------------------------------------------------------------------------------------------------- 100 Continue


def test_100_continue_is_sent_at_the_first_receive() -> None:
    exchange, stream = make(b"POST", expect_continue=True)

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        assert stream.data == b"HTTP/1.1 100 Continue\r\n\r\n"
        exchange.on_data(b"body")
        exchange.on_end()
        return await task

    assert run(scenario()) == {"type": "http.request", "body": b"body", "more_body": False}
    assert [c for c in stream.calls if c[0] == "send_informational"] == [("send_informational", 100, [])]


def test_no_100_continue_before_the_app_receives() -> None:
    exchange, stream = make(b"POST", expect_continue=True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({**START, "status": 417})
        await send({"type": "http.response.body", "body": b"no"})

    run(exchange.run(app))
    assert not stream.data.startswith(b"HTTP/1.1 100")
    assert stream.data.startswith(b"HTTP/1.1 417 Expectation Failed\r\n")


def test_no_100_continue_once_the_response_started() -> None:
    exchange, stream = make(b"POST", expect_continue=True)

    async def scenario() -> None:
        await exchange.send(START)
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        exchange.on_end()
        await task

    run(scenario())
    assert "send_informational" not in stream.names()


def test_no_100_continue_when_the_body_is_already_complete() -> None:
    exchange, stream = make(b"POST", expect_continue=True)
    exchange.on_data(b"sent anyway")
    exchange.on_end()
    assert run(exchange.receive())["body"] == b"sent anyway"
    assert "send_informational" not in stream.names()


def test_100_continue_only_at_the_first_receive() -> None:
    # the client sent part of the body without waiting: the first receive gets it, later ones send no 100
    exchange, stream = make(b"POST", expect_continue=True)

    async def scenario() -> None:
        exchange.on_data(b"part")
        assert (await exchange.receive())["body"] == b"part"
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        exchange.on_end()
        await task

    run(scenario())
    assert "send_informational" not in stream.names()


def test_no_100_continue_without_expect() -> None:
    exchange, stream = make(b"POST")

    async def scenario() -> None:
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        exchange.on_end()
        await task

    run(scenario())
    assert "send_informational" not in stream.names()


# ---------------------------------------------------------------------------------------------------- disconnect


def test_disconnect_after_the_response_is_complete() -> None:
    exchange, stream = make()
    exchange.on_end()

    async def scenario() -> list[dict[str, Any]]:
        assert (await exchange.receive())["more_body"] is False
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"ok"})
        return [await exchange.receive(), await exchange.receive()]

    assert run(scenario()) == [{"type": "http.disconnect"}] * 2
    assert "create_waiter" not in stream.names()


def test_a_body_left_unread_is_still_handed_over_before_the_disconnect() -> None:
    exchange, _ = make(b"POST")
    exchange.on_data(b"unread")

    async def scenario() -> list[dict[str, Any]]:
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"ok"})
        return [await exchange.receive(), await exchange.receive()]

    assert run(scenario()) == [{"type": "http.request", "body": b"unread", "more_body": True},
                               {"type": "http.disconnect"}]


def test_disconnect_after_on_disconnect() -> None:
    exchange, _ = make(b"POST")
    exchange.on_disconnect()
    assert run(exchange.receive()) == {"type": "http.disconnect"}


def test_a_waiting_receive_is_woken_by_the_disconnect() -> None:
    exchange, stream = make(b"POST")

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(exchange.receive())
        await waiting(stream)
        exchange.on_disconnect()
        return await task

    assert run(scenario()) == {"type": "http.disconnect"}


def test_a_streaming_app_waiting_for_the_disconnect_hears_of_it() -> None:
    exchange, stream = make()
    exchange.on_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        await send(START)
        await send({"type": "http.response.body", "body": b"event 1\n", "more_body": True})
        assert await receive() == {"type": "http.disconnect"}
        with pytest.raises(ClientDisconnected):
            await send({"type": "http.response.body", "body": b"event 2\n", "more_body": True})

    async def scenario() -> None:
        task = asyncio.ensure_future(exchange.run(app))
        await waiting(stream)
        exchange.on_disconnect()
        await task

    run(scenario())
    assert stream.data.endswith(b"8\r\nevent 1\n\r\n")


def test_eof_from_the_client_reads_as_a_disconnect_once_its_data_is_read() -> None:
    exchange, stream = make(b"POST")
    exchange.on_data(b"last words")
    exchange.on_eof()

    async def scenario() -> list[dict[str, Any]]:
        return [await exchange.receive(), await exchange.receive()]

    assert run(scenario()) == [{"type": "http.request", "body": b"last words", "more_body": True},
                               {"type": "http.disconnect"}]
    assert stream.aborted


@pytest.mark.parametrize("message", [
    START,
    {"type": "http.response.body", "body": b"x"},
    {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]},
], ids=["start", "body", "early-hint"])
def test_send_after_disconnect_raises_an_oserror(message: dict[str, Any]) -> None:
    exchange, stream = make()
    exchange.on_disconnect()
    with pytest.raises(ClientDisconnected) as info:
        run(exchange.send(message))
    assert isinstance(info.value, OSError)
    assert stream.calls == []


def test_send_while_streaming_after_disconnect_raises_an_oserror() -> None:
    exchange, _ = make()

    async def scenario() -> None:
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"a", "more_body": True})
        exchange.on_disconnect()
        await exchange.send({"type": "http.response.body", "body": b"b", "more_body": True})

    with pytest.raises(ClientDisconnected):
        run(scenario())


def test_a_disconnect_after_the_response_changes_nothing() -> None:
    exchange, stream = make()
    exchange.on_end()

    async def scenario() -> None:
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"done"})
        exchange.on_disconnect()

    run(scenario())
    assert exchange.status == 200
    assert not stream.aborted


# ---------------------------------------------------------------------------------------------------- send


def test_a_response_in_one_body_message() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send({"type": "http.response.start", "status": 201,
                             "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        assert stream.out == []  # the head waits for the first body message
        await exchange.send({"type": "http.response.body", "body": b"hello"})

    run(scenario())
    assert stream.data == b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    assert stream.names() == ["send_head", "send_data", "response_done"]
    assert (exchange.status, exchange.bytes_sent) == (201, 5)


def test_a_start_without_headers_and_a_body_without_body() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send({"type": "http.response.start", "status": 204})
        await exchange.send({"type": "http.response.body"})

    run(scenario())
    assert stream.data == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_a_streamed_response() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"", "more_body": True})
        assert stream.data.endswith(b"\r\n\r\n")  # the head goes out with the first body message, even empty
        await exchange.send({"type": "http.response.body", "body": b"", "more_body": True})
        await exchange.send({"type": "http.response.body", "body": bytearray(b"ab"), "more_body": True})
        await exchange.send({"type": "http.response.body", "body": memoryview(b"cd")})

    run(scenario())
    assert stream.data == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                           b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    assert [c[0] for c in stream.calls].count("send_data") == 3  # an empty piece mid-stream is not sent
    assert exchange.bytes_sent == 4


def test_send_waits_for_the_drain_while_writing_is_paused() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send(START)
        stream.write_paused = True
        task = asyncio.ensure_future(exchange.send({"type": "http.response.body", "body": b"a", "more_body": True}))
        for _ in range(100):
            await asyncio.sleep(0)
        assert not task.done()
        assert stream.drain_waiter is not None
        stream.write_paused = False
        stream.drain_waiter.set_result(None)
        await task
        await exchange.send({"type": "http.response.body", "body": b"b"})

    run(scenario())
    assert stream.names().count("drain") == 1


def test_a_drain_cut_by_the_disconnect_raises_an_oserror() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send(START)
        stream.write_paused = True
        stream.lost = True
        await exchange.send({"type": "http.response.body", "body": b"a", "more_body": True})

    with pytest.raises(OSError):
        run(scenario())


BAD_MESSAGES: list[tuple[list[Any], str]] = [
    ([{}], "'type'"),
    (["http.response.start"], "'type'"),
    ([None], "'type'"),
    ([{"type": "http.response.foo"}], "unknown message type 'http.response.foo'"),
    ([{"type": "websocket.send", "text": "x"}], "unknown message type 'websocket.send'"),
    ([{"type": "http.response.body", "body": b"x"}], "'http.response.body' sent before 'http.response.start'"),
    ([START, START], "'http.response.start' sent twice"),
    ([{"type": "http.response.start", "status": "200"}], "'status' must be an int"),
    ([{"type": "http.response.start"}], "'status' must be an int, not None"),
    ([{"type": "http.response.start", "status": 200.0}], "'status' must be an int"),
    ([{"type": "http.response.start", "status": True}], "'status' must be an int"),
    ([START, {"type": "http.response.body", "body": "text"}], "'body' must be bytes, not str"),
    ([START, {"type": "http.response.body", "body": None, "more_body": True}], "'body' must be bytes"),
    ([START, {"type": "http.response.body", "body": b"x"}, {"type": "http.response.body", "body": b"y"}],
     "'http.response.body' sent after the response was complete"),
    ([START, {"type": "http.response.body", "body": b"x"}, START], "'http.response.start' sent twice"),
    ([START, {"type": "http.response.body", "body": b"x"}, {"type": "http.response.early_hint", "links": []}],
     "'http.response.early_hint' sent after the response was complete"),
    ([{"type": "http.response.early_hint", "links": ["</a.css>"]}], "'links' items must be bytes, not str"),
    ([{"type": "http.response.early_hint", "links": 5}], "'links' must be"),
]


@pytest.mark.parametrize(("messages", "error"), BAD_MESSAGES, ids=[e for _, e in BAD_MESSAGES])
def test_send_validation_names_the_field(messages: list[Any], error: str) -> None:
    exchange, _ = make()

    async def scenario() -> None:
        for message in messages:
            await exchange.send(message)

    with pytest.raises(ASGIError) as info:
        run(scenario())
    assert error in str(info.value)


def test_a_message_that_is_a_mapping_but_not_a_dict_is_read_as_one() -> None:
    exchange, stream = make()
    run(exchange.send(types.MappingProxyType({"type": "http.response.start", "status": 200, "headers": []})))
    run(exchange.send(collections.OrderedDict(type="http.response.body", body=b"ok")))
    assert exchange.status == 200 and exchange.bytes_sent == 2 and stream.out


def test_bad_headers_raise_from_send_before_anything_is_written() -> None:
    exchange, stream = make()
    with pytest.raises(ProtocolError, match="CR, LF or NUL"):
        run(exchange.send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb: c")]}))
    assert stream.out == []


def test_a_body_longer_than_its_content_length_aborts() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await exchange.send({"type": "http.response.body", "body": b"abc"})

    with pytest.raises(ProtocolError):
        run(scenario())
    assert stream.aborted
    assert "response_done" not in stream.names()


def test_early_hints() -> None:
    exchange, stream = make()

    async def scenario() -> None:
        await exchange.send({"type": "http.response.early_hint",
                             "links": [b"</style.css>; rel=preload; as=style", bytearray(b"</a.js>; rel=preload")]})
        await exchange.send(START)
        await exchange.send({"type": "http.response.body", "body": b"x"})

    run(scenario())
    assert stream.data.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n"
                                  b"link: </a.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n")


# ---------------------------------------------------------------------------------------------------- run


App = Callable[[Any, Any, Any], Awaitable[None]]


def run_app(app: App, target: bytes = b"/path?q=1", **kwargs: Any) -> tuple[HTTPExchange, FakeStream]:
    exchange, stream = make(target=target, **kwargs)
    exchange.on_end()
    run(exchange.run(app))
    return exchange, stream


def test_an_app_that_answers_is_not_logged(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"fine"})

    _, stream = run_app(app)
    assert error_log == []
    assert stream.names() == ["send_head", "send_data", "response_done"]


def test_an_exception_before_the_start_gives_500_logged_once(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    exchange, stream = run_app(app)
    assert stream.calls == [("send_error", 500)]
    assert stream.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert exchange.status == 500
    [record] = error_log
    assert record.levelno == logging.ERROR
    assert "GET /path?q=1" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_an_invalid_message_gives_500_logged_once(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": "200"})

    _, stream = run_app(app)
    assert stream.calls == [("send_error", 500)]
    [record] = error_log
    assert record.exc_info is not None and isinstance(record.exc_info[1], ASGIError)


def test_a_header_with_crlf_gives_500_and_is_never_written(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"location", b"/x\r\nSet-Cookie: session=evil")]})
        await send({"type": "http.response.body", "body": b""})

    _, stream = run_app(app)
    assert stream.data.startswith(b"HTTP/1.1 500 ")
    assert b"evil" not in stream.data
    assert len(errors(error_log)) == 1


def test_an_exception_after_the_start_aborts_logged_once(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    exchange, stream = run_app(app)
    # cut: aborted, then recorded as cut once (access line and metrics)
    assert stream.names() == ["send_head", "send_data", "abort", "response_cut"]
    assert "send_error" not in stream.names()
    [record] = error_log
    assert "GET /path?q=1" in record.getMessage()
    assert exchange.status == 200


def test_an_app_returning_without_a_response_gets_500(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    _, stream = run_app(app)
    assert stream.calls == [("send_error", 500)]
    [record] = error_log
    assert "returned without starting a response" in record.getMessage()
    assert "GET /path?q=1" in record.getMessage()


def test_an_app_returning_after_the_start_only_gets_a_500(error_log: list[logging.LogRecord]) -> None:
    # the head waits for the first body: nothing is on the wire, so the client gets an answer, not a bare close
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)

    _, stream = run_app(app)
    assert stream.names() == ["send_head", "send_error"]
    assert stream.calls[-1] == ("send_error", 500)
    [record] = error_log
    assert "without completing the response" in record.getMessage()


def test_an_app_returning_mid_stream_aborts(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"half", "more_body": True})

    _, stream = run_app(app)
    assert stream.names() == ["send_head", "send_data", "abort", "response_cut"]
    assert len(error_log) == 1


def test_client_disconnected_from_the_app_is_not_logged_as_an_error(error_log: list[logging.LogRecord]) -> None:
    exchange, stream = make()
    exchange.on_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        exchange.on_disconnect()
        await send({"type": "http.response.body", "body": b"too late"})

    run(exchange.run(app))
    assert errors(error_log) == []
    assert [r.levelno for r in error_log] == [logging.DEBUG]
    assert "send_error" not in stream.names() and not stream.aborted
    assert stream.names()[-1] == "response_cut"


def test_an_error_after_the_client_left_is_logged_but_nothing_is_sent(error_log: list[logging.LogRecord]) -> None:
    exchange, stream = make()
    exchange.on_disconnect()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("bug")

    run(exchange.run(app))
    assert len(errors(error_log)) == 1
    assert stream.calls == [("response_cut",)]  # nothing sent; recorded once as cut (499)


def test_an_exception_after_a_complete_response_is_logged_and_the_connection_kept(
        error_log: list[logging.LogRecord]) -> None:
    # the driver may already be answering the next pipelined request on this connection
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"done"})
        raise RuntimeError("in cleanup")

    _, stream = run_app(app)
    assert stream.names() == ["send_head", "send_data", "response_done"]
    assert len(errors(error_log)) == 1


def test_a_receive_waiting_in_another_task_hears_of_a_failure(error_log: list[logging.LogRecord]) -> None:
    exchange, stream = make(b"POST")
    listeners: list[asyncio.Future[dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        listeners.append(asyncio.ensure_future(receive()))
        await waiting(stream)
        raise RuntimeError("boom")

    async def scenario() -> dict[str, Any]:
        await exchange.run(app)
        return await listeners[0]

    assert run(scenario()) == {"type": "http.disconnect"}
    assert stream.calls[-1] == ("send_error", 500)


# ---------------------------------------------------------------------------------------------------- log escaping


@pytest.mark.parametrize(("text", "escaped"), [
    ("GET /plain?x=1", "GET /plain?x=1"),
    ("/\x1b[31mred", "/\\x1b[31mred"),
    ("/a\r\nfake log line", "/a\\r\\nfake log line"),
    ("/nul\x00", "/nul\\x00"),
    ("/del\x7f", "/del\\x7f"),
    ("/tab\t", "/tab\\t"),
    ("/line\u2028sep", "/line\\u2028sep"),
    ("/café/日本", "/café/日本"),
])
def test_escape_log(text: str, escaped: str) -> None:
    assert escape_log(text) == escaped
    assert escape_log(text).isprintable()


def test_the_request_line_in_the_error_log_is_escaped(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    scope = {"type": "http", "method": "GET", "path": "/\x1b[31mred\r\nINFO forged", "query_string": b"a=\x1b"}
    exchange, _ = make(scope=scope)
    exchange.on_end()
    run(exchange.run(app))
    [record] = error_log
    message = record.getMessage()
    assert "\x1b" not in message and "\r" not in message and "\n" not in message
    assert "GET /\\x1b[31mred\\r\\nINFO forged?a=\\x1b" in message

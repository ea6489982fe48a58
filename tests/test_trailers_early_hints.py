"""The ``http.response.trailers`` and ``http.response.early_hint`` extensions, over HTTP/1.1 and HTTP/2.

Exchange-level tests run over a fake stream framing with a real H1Connection; end-to-end ones use raw sockets
(HTTP/1.1) and h2 over a socket (HTTP/2).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h2.events
import pytest

from tidegate.asgi.errors import ASGIError
from tidegate.asgi.http import HTTPExchange
from tidegate.asgi.scope import ConnectionInfo, http_scope
from tidegate.protocol.events import ProtocolError, Request
from tidegate.protocol.http1 import H1Connection

from .test_asgi_http import FakeStream
from .test_e2e_http2 import H2Client

TIMEOUT = 10.0
START_T = {"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")], "trailers": True}


class TrailerStream(FakeStream):
    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("send_trailers", headers))
        self.conn.send_trailers(headers)


def make(trailers: bool = True, version: str = "1.1") -> tuple[HTTPExchange, TrailerStream]:
    request = Request(b"GET", b"/", version, [(b"host", b"a")], True, False, trailers=trailers)
    stream = TrailerStream(request)
    scope = http_scope(request, ConnectionInfo(("127.0.0.1", 1), ("127.0.0.1", 2), "http"))
    return HTTPExchange(stream, scope), stream


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def send_all(exchange: HTTPExchange, *messages: dict[str, Any]) -> None:
    for message in messages:
        await exchange.send(message)


# ---------------------------------------------------------------------------------------------------- the scope


def test_extensions_in_the_scope() -> None:
    info = ConnectionInfo(None, None, "http", extensions={"tls": {}})
    plain = http_scope(Request(b"GET", b"/", "1.1", [], True, False), info)
    files = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}
    assert plain["extensions"] == {"tls": {}, "http.response.early_hint": {}, **files}
    with_trailers = http_scope(Request(b"GET", b"/", "1.1", [], True, False, trailers=True), info)
    assert with_trailers["extensions"] == {"tls": {}, "http.response.early_hint": {}, **files,
                                           "http.response.trailers": {}}
    assert http_scope(Request(b"GET", b"/", "1.1", [], True, False), info)["extensions"] is plain["extensions"]


@pytest.mark.parametrize(("te", "expected"), [(b"trailers", True), (b"gzip, Trailers", True), (b"gzip", False)])
def test_te_trailers_on_http11(te: bytes, expected: bool) -> None:
    [request, _] = H1Connection().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nTE: " + te + b"\r\n\r\n")
    assert request.trailers is expected
    [request, _] = H1Connection().receive_data(b"GET / HTTP/1.0\r\nTE: trailers\r\n\r\n")
    assert request.trailers is False  # no chunked responses in HTTP/1.0
    conn = H1Connection()
    events = conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e.trailers for e in events if isinstance(e, Request)] == [True, False]


# ---------------------------------------------------------------------------------------------------- trailers


def test_trailers_after_the_last_body_end_a_chunked_response() -> None:
    exchange, stream = make()
    run(send_all(exchange, START_T,
                 {"type": "http.response.body", "body": b"part ", "more_body": True},
                 {"type": "http.response.body", "body": b"last"},
                 {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")], "more_trailers": True},
                 {"type": "http.response.trailers", "headers": [(b"x-more", b"2")]}))
    assert stream.data.endswith(b"transfer-encoding: chunked\r\n\r\n5\r\npart \r\n4\r\nlast\r\n"
                                b"0\r\nx-checksum: 1\r\nx-more: 2\r\n\r\n")
    assert stream.names()[-2:] == ["send_trailers", "response_done"]
    assert exchange.bytes_sent == 9


def test_a_single_body_with_trailers_is_chunked_too() -> None:
    exchange, stream = make()
    run(send_all(exchange, START_T, {"type": "http.response.body", "body": b"all"},
                 {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]}))
    assert b"content-length" not in stream.data
    assert stream.data.endswith(b"3\r\nall\r\n0\r\nx-checksum: 1\r\n\r\n")


def test_trailers_are_not_sent_to_a_client_that_did_not_ask() -> None:
    exchange, stream = make(trailers=False)
    run(send_all(exchange, START_T, {"type": "http.response.body", "body": b"x"},
                 {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]}))
    assert stream.data.endswith(b"1\r\nx\r\n0\r\n\r\n")
    assert ("send_trailers", []) in stream.calls


def test_trailers_with_a_content_length_end_the_body_without_them() -> None:
    exchange, stream = make()
    start = {**START_T, "headers": [(b"content-length", b"2")]}
    run(send_all(exchange, start, {"type": "http.response.body", "body": b"ok"},
                 {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]}))
    assert stream.data.endswith(b"content-length: 2\r\n\r\nok")
    exchange, stream = make()
    with pytest.raises(ProtocolError, match="short"):
        run(send_all(exchange, start, {"type": "http.response.body", "body": b"o"},
                     {"type": "http.response.trailers", "headers": []}))
    assert stream.aborted


def test_bad_trailers_abort() -> None:
    exchange, stream = make()
    with pytest.raises(ProtocolError, match="invalid trailer"):
        run(send_all(exchange, START_T, {"type": "http.response.body", "body": b"x"},
                     {"type": "http.response.trailers", "headers": [(b"x", b"a\r\nb")]}))
    assert stream.aborted


@pytest.mark.parametrize("name", [b"content-length", b"Transfer-Encoding", b"host", b"authorization", b"set-cookie",
                                  b"content-type", b"trailer", b"cache-control", b":status"])
def test_trailers_rfc_9110_forbids_cut_the_response(name: bytes) -> None:
    exchange, stream = make()
    with pytest.raises(ASGIError, match="may not be sent in trailers"):
        run(send_all(exchange, START_T, {"type": "http.response.body", "body": b"x"},
                     {"type": "http.response.trailers", "headers": [(b"x-ok", b"1"), (name, b"1")]}))
    assert stream.aborted
    assert not [call for call in stream.calls if call[0] == "send_trailers"]


TRAILER_ERRORS = [
    ([START_T, {"type": "http.response.trailers", "headers": []}], "sent before the last body"),
    ([START_T, {"type": "http.response.body", "more_body": True}, {"type": "http.response.trailers"}],
     "sent before the last body"),
    ([{**START_T, "trailers": False}, {"type": "http.response.body", "more_body": True},
      {"type": "http.response.trailers"}], "needs 'trailers': True"),
    ([{"type": "http.response.trailers"}], "needs 'trailers': True"),
    ([START_T, {"type": "http.response.body"}, {"type": "http.response.trailers"}, {"type": "http.response.trailers"}],
     "sent after the response was complete"),
    ([START_T, {"type": "http.response.body"}, {"type": "http.response.trailers", "headers": 5}], "'headers' must be"),
    ([START_T, {"type": "http.response.body"}, {"type": "http.response.trailers", "headers": [("a", "b")]}],
     "trailer names must be bytes"),
    ([START_T, {"type": "http.response.body", "body": "x"}], "'body' must be bytes"),
    ([START_T, {"type": "http.response.body"}, {"type": "http.response.body"}], "sent after the response was complete"),
]


@pytest.mark.parametrize(("messages", "error"), TRAILER_ERRORS, ids=[e for _, e in TRAILER_ERRORS])
def test_trailer_message_order_is_enforced(messages: list[dict[str, Any]], error: str) -> None:
    exchange, _ = make()
    with pytest.raises(ASGIError, match=error):
        run(send_all(exchange, *messages))


def test_an_app_that_returns_before_its_trailers_is_cut() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_T)
        await send({"type": "http.response.body", "body": b"x"})

    exchange, stream = make()
    run(exchange.run(app))
    assert stream.aborted


# ---------------------------------------------------------------------------------------------------- early hints


def test_early_hint_after_the_start_goes_before_the_head() -> None:
    exchange, stream = make(trailers=False)
    run(send_all(exchange, {"type": "http.response.start", "status": 200, "headers": []},
                 {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]},
                 {"type": "http.response.body", "body": b"x"}))
    assert stream.data.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
                                  b"HTTP/1.1 200 OK\r\n")


def test_early_hint_once_the_head_is_out_is_ignored() -> None:
    exchange, stream = make(trailers=False)
    run(send_all(exchange, {"type": "http.response.start", "status": 200, "headers": []},
                 {"type": "http.response.body", "body": b"x", "more_body": True},
                 {"type": "http.response.early_hint", "links": [b"</a.css>"]},
                 {"type": "http.response.body", "body": b"y"}))
    assert b"103" not in stream.data
    with pytest.raises(ASGIError, match="sent after the response was complete"):
        run(exchange.send({"type": "http.response.early_hint", "links": []}))


def test_early_hint_with_a_trailers_response() -> None:
    exchange, stream = make()
    run(send_all(exchange, START_T, {"type": "http.response.early_hint", "links": [b"</b.js>"]},
                 {"type": "http.response.body", "body": b"x"}, {"type": "http.response.trailers", "headers": []}))
    assert stream.data.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </b.js>\r\n\r\nHTTP/1.1 200 OK\r\n")


# ---------------------------------------------------------------------------------------------------- end to end


async def extensions_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    extensions = scope["extensions"]
    hinted = "http.response.early_hint" in extensions
    if hinted:
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")],
                "trailers": True})
    if hinted:
        await send({"type": "http.response.early_hint", "links": [b"</app.js>; rel=preload; as=script"]})
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})
    await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")],
                "more_trailers": True})
    await send({"type": "http.response.trailers", "headers": [(b"x-trailers-seen", str(
        "http.response.trailers" in extensions).encode())]})


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_http11_trailers_and_early_hints(run_server: Any) -> None:
    server = run_server(extensions_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
                           b"HTTP/1.1 103 Early Hints\r\nlink: </app.js>; rel=preload; as=script\r\n\r\n"
                           b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\nx-trailers-seen: True\r\n\r\n")
    # without TE: trailers, the body ends without them
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = read_all(sock)
    assert data.endswith(b"5\r\nworld\r\n0\r\n\r\n")


def test_http11_keep_alive_after_trailers(run_server: Any) -> None:
    server = run_server(extensions_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        request = b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"
        sock.sendall(request + request[:-2] + b"Connection: close\r\n\r\n")
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.count(b"x-checksum: abc") == 2


def test_http10_gets_no_103_and_no_trailers(run_server: Any) -> None:
    server = run_server(extensions_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nTE: trailers\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nhello world")


def test_http2_trailers_and_early_hints(run_server: Any) -> None:
    server = run_server(extensions_app)
    client = H2Client(server.port)
    try:
        stream_id = client.request(headers=[(b"te", b"trailers")])
        headers, body = client.response(stream_id)
        assert body == b"hello world" and dict(headers)[b":status"] == b"200"
        mine = [e for e in client.events if getattr(e, "stream_id", None) == stream_id]
        hints = [e.headers for e in mine if isinstance(e, h2.events.InformationalResponseReceived)]
        assert hints == [[(b":status", b"103"), (b"link", b"</style.css>; rel=preload; as=style")],
                         [(b":status", b"103"), (b"link", b"</app.js>; rel=preload; as=script")]]
        kinds = [type(e).__name__ for e in mine]
        assert kinds.index("InformationalResponseReceived") < kinds.index("ResponseReceived")
        [trailers] = [e for e in mine if isinstance(e, h2.events.TrailersReceived)]
        assert trailers.headers == [(b"x-checksum", b"abc"), (b"x-trailers-seen", b"True")]
        # without TE: trailers the stream ends with its last DATA
        stream_id = client.request()
        _, body = client.response(stream_id)
        assert body == b"hello world"
        assert not [e for e in client.events if isinstance(e, h2.events.TrailersReceived) and e.stream_id == stream_id]
    finally:
        client.close()


async def forbidden_trailer_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] != "/forbidden":
        return await extensions_app(scope, receive, send)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
    await send({"type": "http.response.body", "body": b"hello"})
    await send({"type": "http.response.trailers", "headers": [(b"set-cookie", b"a=b")]})


def test_a_forbidden_trailer_cuts_the_response_on_both_protocols(run_server: Any) -> None:
    server = run_server(forbidden_trailer_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /forbidden HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        data = read_all(sock)  # the connection closes without the last chunk: the client knows the body is cut
    assert data.endswith(b"\r\n\r\n5\r\nhello\r\n") and b"set-cookie" not in data
    client = H2Client(server.port)
    try:
        stream_id = client.request("/forbidden", headers=[(b"te", b"trailers")])
        with pytest.raises(AssertionError, match="reset"):
            client.response(stream_id)
        assert client.response(client.request(headers=[(b"te", b"trailers")]))[1] == b"hello world"
    finally:
        client.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        assert read_all(sock).endswith(b"0\r\nx-checksum: abc\r\nx-trailers-seen: True\r\n\r\n")

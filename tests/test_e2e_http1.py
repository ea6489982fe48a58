"""HTTP/1.1 end to end: a real server on 127.0.0.1 port 0, real clients (raw sockets, httpx, curl)."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import shutil
import socket
import struct
import subprocess
import threading
from typing import Any

import httpx
import pytest

from .apps import Gate, echo, hello, read_body, scope_json
from .conftest import LineReader, LogRecords, RawClient

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def get(path: str = "/", version: bytes = b"1.1", headers: bytes = b"", method: bytes = b"GET") -> bytes:
    host = b"host: test\r\n" if version == b"1.1" else b""
    return b"%s %s HTTP/%s\r\n%s%s\r\n" % (method, path.encode(), version, host, headers)


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n%s\r\n%s" % (path.encode(), len(body),
                                                                              headers, body)


def chunked(body_pieces: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in body_pieces if p) + b"0\r\n" + trailers + b"\r\n"


async def respond(send: Any, status: int = 200, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                  ) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------- keep-alive


def test_several_requests_on_one_connection(run_server: Any, loop: str) -> None:
    server = run_server(echo, loop=loop)
    with RawClient(server.port) as client:
        for i in range(3):
            client.send(post("/", b"x" * i))
            response = client.read_response()
            assert response.status == 200
            assert response.body == b"x" * i
            assert response.header(b"connection") is None
    with httpx.Client(base_url=server.url, timeout=5) as http:
        seen = set()
        for _ in range(3):
            response = http.get("/", extensions={"trace": lambda name, info: seen.add(name)})
            assert response.status_code == 200
        assert "connection.connect_tcp.started" in seen  # the first request connects, the others reuse it


def test_idle_keep_alive_connection_is_closed(run_server: Any, loop: str) -> None:
    server = run_server(hello, loop=loop, timeout_keep_alive=0.2)
    with RawClient(server.port, timeout=5) as client:
        client.send(get())
        assert client.read_response().status == 200
        assert client.wait_closed() == b""  # closed by the server well before the 5 s socket timeout
    with RawClient(server.port, timeout=5) as client:  # a connection that never sends anything
        assert client.wait_closed() == b""


def test_a_request_head_must_come_within_the_header_timeout(run_server: Any, loop: str) -> None:
    """The head's deadline is not pushed back by a few bytes (a slowloris client): only a whole request head ends it.
    (More in test_e2e_limits.py.)"""
    server = run_server(hello, loop=loop, timeout_keep_alive=0.2, timeout_request_header=0.2)
    with RawClient(server.port, timeout=5) as client:
        client.send(b"GET / HTTP/1.1\r\nhost: t\r\n")
        assert client.read_response().status == 408
        assert client.wait_closed() == b""
    with RawClient(server.port, timeout=5) as client:
        client.send(get())
        assert client.read_response().status == 200
        client.send(b"GET / HTTP/1.1\r\n")
        assert client.read_response().status == 408
        assert client.wait_closed() == b""


def test_keep_alive_timer_does_not_cut_a_slow_upload(run_server: Any, loop: str) -> None:
    server = run_server(echo, loop=loop, timeout_keep_alive=0.1)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\nabc")
        ready, _, _ = select.select([client.sock], [], [], 0.5)  # several keep-alive periods
        assert not ready
        client.send(b"def")
        assert client.read_response().body == b"abcdef"


def test_keep_alive_timer_does_not_cut_a_slow_app(run_server: Any, loop: str) -> None:
    release = Gate()
    started = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await respond(send, body=b"late")

    server = run_server(app, loop=loop, timeout_keep_alive=0.1)
    with RawClient(server.port) as client:
        client.send(get())
        started.wait_sync()
        # the app runs past several keep-alive periods: wait for the connection to outlive one
        ready, _, _ = select.select([client.sock], [], [], 0.5)
        assert not ready
        release.set()
        assert client.read_response().body == b"late"
        assert client.wait_closed() == b""  # idle again now: closed after the timeout


def test_http10_closes_unless_keep_alive_is_asked(run_server: Any, loop: str) -> None:
    server = run_server(hello, loop=loop)
    with RawClient(server.port) as client:
        client.send(get(version=b"1.0"))
        response = client.read_response()
        assert response.version == b"HTTP/1.0"
        assert response.header(b"connection") == b"close"
        assert response.body == b"Hello, world!"
        assert client.wait_closed() == b""
    with RawClient(server.port) as client:
        for _ in range(2):
            client.send(get(version=b"1.0", headers=b"connection: keep-alive\r\n"))
            response = client.read_response()
            assert response.header(b"connection") == b"keep-alive"
            assert response.body == b"Hello, world!"


def test_connection_close_from_the_client(run_server: Any, loop: str) -> None:
    server = run_server(hello, loop=loop)
    with RawClient(server.port) as client:
        client.send(get(headers=b"connection: close\r\n"))
        response = client.read_response()
        assert response.header(b"connection") == b"close"
        assert client.wait_closed() == b""


def test_connection_close_from_the_app(run_server: Any, loop: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await respond(send, body=b"bye", headers=[(b"connection", b"close")])

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get() + get())  # the second request must not be answered
        response = client.read_response()
        assert response.body == b"bye"
        assert response.header(b"connection") == b"close"
        assert client.wait_closed() == b""


@needs_curl
def test_curl_reuses_the_connection_and_uploads_chunked(run_server: Any) -> None:
    server = run_server(echo)
    out = subprocess.run([CURL, "-sS", "-v", "--http1.1", server.url + "/a", server.url + "/b"],
                         capture_output=True, timeout=20, check=True)
    assert out.stdout == b""  # echo of two empty GET bodies
    assert b"Re-using existing connection" in out.stderr
    upload = b"line of text\n" * 5000
    out = subprocess.run([CURL, "-sS", "--http1.1", "-T", "-", server.url + "/upload"], input=upload,
                         capture_output=True, timeout=20, check=True)
    assert out.stdout == upload


def test_many_concurrent_keep_alive_connections(run_server: Any, loop: str) -> None:
    server = run_server(echo, loop=loop)
    failures: list[str] = []

    def client_thread(n: int) -> None:
        try:
            with RawClient(server.port, timeout=10) as client:
                for i in range(10):
                    body = b"%d-%d " % (n, i) * (i * 100 + 1)
                    client.send(post("/", body))
                    assert client.read_response().body == body
        except Exception as exc:
            failures.append(f"{n}: {exc!r}")

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures


# ---------------------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT",
                                    "SEARCH", "PATCH", "PURGE", "QUERY", "M-SEARCH", "LINK"])
def test_webdav_and_custom_methods_reach_the_app(run_server: Any, method: str) -> None:
    server = run_server(scope_json)
    response = httpx.request(method, server.url + "/dav/file", content=b"<propfind/>", timeout=5)
    assert response.status_code == 200
    assert response.json()["method"] == method


def test_unknown_method_token_gets_501_and_the_server_goes_on(run_server: Any, loop: str, logs: LogRecords) -> None:
    server = run_server(hello, loop=loop)
    with RawClient(server.port) as client:
        client.send(get(method=b"BREW"))
        response = client.read_response()
        assert response.status == 501
        assert client.wait_closed() == b""
    with RawClient(server.port) as client:
        client.send(get(method=b"GET"))
        assert client.read_response().status == 200
    assert not logs.at(logging.ERROR)


def test_malformed_method_gets_400(run_server: Any) -> None:
    server = run_server(hello)
    with RawClient(server.port) as client:
        client.send(b"GE(T / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert client.read_response().status == 400


def test_options_asterisk_and_absolute_form(run_server: Any, loop: str) -> None:
    server = run_server(scope_json, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"OPTIONS * HTTP/1.1\r\nhost: test\r\n\r\n")
        scope = json.loads(client.read_response().body)
        assert scope["method"] == "OPTIONS"
        assert scope["path"] == "*"
        assert scope["raw_path"] == "*"
        client.send(b"GET http://example.com/a%20b/c?x=1&y=%20 HTTP/1.1\r\nhost: example.com\r\n\r\n")
        scope = json.loads(client.read_response().body)
        assert scope["path"] == "/a b/c"
        assert scope["raw_path"] == "/a%20b/c"
        assert scope["query_string"] == "x=1&y=%20"
        client.send(b"GET http://example.com HTTP/1.1\r\nhost: example.com\r\n\r\n")
        assert json.loads(client.read_response().body)["path"] == "/"
        client.send(b"GET http://a.example/x HTTP/1.1\r\nhost: b.example\r\n\r\n")
        scope = json.loads(client.read_response().body)  # RFC 9112 §3.2.2: the target's authority is the host
        assert ["host", "a.example"] in scope["headers"] and ["host", "b.example"] not in scope["headers"]


# ---------------------------------------------------------------------------------------------------- pipelining


async def pipeline_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await read_body(receive)
    await respond(send, body=scope["method"].encode() + b" " + scope["path"].encode() + b" " + body)


def test_pipelined_requests_are_answered_in_order(run_server: Any, loop: str) -> None:
    server = run_server(pipeline_app, loop=loop)
    requests = [
        get("/one"),
        post("/two", b"body two"),
        b"POST /three HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n" + chunked([b"body", b" three"]),
        get("/four", method=b"HEAD"),
        get("/five"),
    ]
    with RawClient(server.port) as client:
        client.send(b"".join(requests))
        assert client.read_response().body == b"GET /one "
        assert client.read_response().body == b"POST /two body two"
        assert client.read_response().body == b"POST /three body three"
        head = client.read_response(b"HEAD")
        assert head.body == b"" and head.header(b"content-length") == b"11"
        assert client.read_response().body == b"GET /five "


def test_the_request_after_a_slow_one_is_not_lost(run_server: Any, loop: str) -> None:
    started = Gate()
    release = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        if scope["path"] == "/slow":
            started.set()
            await release.wait()
        await respond(send, body=scope["path"].encode() + b":" + body)

    server = run_server(app, loop=loop, limit_pipeline_depth=2)
    with RawClient(server.port) as client:
        client.send(post("/slow", b"a" * 1000) + post("/fast", b"b" * 1000) + get("/third") + get("/fourth"))
        started.wait_sync()
        release.set()
        assert client.read_response().body == b"/slow:" + b"a" * 1000
        assert client.read_response().body == b"/fast:" + b"b" * 1000
        assert client.read_response().body == b"/third:"
        assert client.read_response().body == b"/fourth:"


def test_an_invalid_request_is_answered_after_the_pipelined_ones_before_it(run_server: Any, loop: str) -> None:
    started, release = Gate(), Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            started.set()
            await release.wait()
        await pipeline_app(scope, receive, send)

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/slow") + post("/b", b"bee") + b"GET /c HTTP/1.1\r\n\r\n")  # /c has no Host: 400
        started.wait_sync()
        release.set()
        assert client.read_response().body == b"GET /slow "
        assert client.read_response().body == b"POST /b bee"
        error = client.read_response()
        assert error.status == 400 and error.header(b"connection") == b"close"
        assert client.wait_closed() == b""


@pytest.mark.parametrize("started_response", [False, True])
def test_a_broken_request_body_tells_the_app(run_server: Any, loop: str, logs: LogRecords,
                                             started_response: bool) -> None:
    got_some, finished = Gate(), Gate()
    messages: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if started_response:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"streaming", "more_body": True})
        while True:
            messages.append(await asyncio.wait_for(receive(), 10))
            got_some.set()
            if messages[-1]["type"] == "http.disconnect":
                break
        finished.set()

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        got_some.wait_sync()
        client.send(b"zz\r\n")  # not a chunk size
        seen = client.wait_closed()
    finished.wait_sync()
    assert messages == [{"type": "http.request", "body": b"hello", "more_body": True}, {"type": "http.disconnect"}]
    if started_response:
        assert seen.count(b"HTTP/1.1") == 1 and b"streaming" in seen and not seen.endswith(b"0\r\n\r\n")
    else:
        assert seen.startswith(b"HTTP/1.1 400 Bad Request\r\n") and seen.count(b"HTTP/1.1") == 1
    server.stop()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------------- request bodies


def test_request_bodies_content_length_and_chunked(run_server: Any, loop: str) -> None:
    server = run_server(echo, loop=loop)
    with RawClient(server.port) as client:
        client.send(post("/", b"hello"))
        assert client.read_response().body == b"hello"
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                    + chunked([b"hel", b"lo ", b"world"], trailers=b"x-checksum: 42\r\nx-other: 1\r\n"))
        assert client.read_response().body == b"hello world"
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        assert client.read_response().body == b""

    def pieces() -> Any:
        for i in range(5):
            yield b"%d" % i * 1000

    response = httpx.post(server.url, content=pieces(), timeout=5)  # chunked by httpx
    assert response.content == b"".join(b"%d" % i * 1000 for i in range(5))


def test_a_large_body_reaches_the_app_in_pieces(run_server: Any, loop: str) -> None:
    sizes: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            sizes.append(len(message["body"]))
            more = message["more_body"]
        await respond(send, body=str(sum(sizes)).encode())

    server = run_server(app, loop=loop)
    body = b"z" * (4 << 20)
    response = httpx.post(server.url, content=body, timeout=10)
    assert response.content == str(len(body)).encode()
    assert len(sizes) > 1
    assert max(sizes) < len(body)


def test_reading_pauses_while_the_app_does_not_read(run_server: Any, loop: str) -> None:
    """With an app that does not read, the server stops reading: the client's send blocks; it resumes later."""
    limit = 65536
    total = 32 << 20
    go = Gate()
    seen: dict[str, int] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await go.wait(30)
        first = await receive()
        seen["first"] = len(first["body"])
        seen["total"] = len(first["body"]) + len(await read_body(receive)) if first["more_body"] else seen["first"]
        await respond(send, body=b"done")

    server = run_server(app, loop=loop, limit_request_buffer=limit)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    client = RawClient.__new__(RawClient)
    client.sock, client.buffer = sock, b""
    with client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % total)
        body = memoryview(b"b" * total)
        sent = 0
        sock.setblocking(False)
        while sent < total:
            try:
                sent += sock.send(body[sent:sent + (1 << 20)])
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], 1.0)
                if not writable:
                    break  # the server stopped reading
        assert sent < total, "the server read the whole body while the app was not reading"
        go.set()
        sock.settimeout(10)
        sock.sendall(body[sent:])
        assert client.read_response().body == b"done"
    assert seen["total"] == total
    # what waited in the server is bounded by the limit (plus at most one read from the socket)
    assert seen["first"] <= limit + 262144


def test_expect_100_continue_is_sent_when_the_app_reads(run_server: Any, loop: str) -> None:
    server = run_server(echo, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = client.read_response(informational=True)
        assert interim.status == 100
        client.send(b"hello")
        response = client.read_response()
        assert response.status == 200 and response.body == b"hello"
        # the connection stays usable, and HTTP/1.0 never gets a 100
        client.send(b"POST / HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 2\r\nexpect: 100-continue\r\n"
                    b"\r\nhi")
        response = client.read_response(informational=True)
        assert response.status == 200 and response.body == b"hi"


def test_100_continue_waits_for_the_app_to_read(run_server: Any, loop: str) -> None:
    started, go = Gate(), Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await go.wait()
        await respond(send, body=await read_body(receive))

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        started.wait_sync()
        client.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.sock.recv(1)  # the app runs but has not asked for the body: no 100 yet
        client.sock.settimeout(5)
        go.set()
        assert client.read_response(informational=True).status == 100
        client.send(b"hello")
        assert client.read_response().body == b"hello"


@pytest.mark.parametrize("status", [417, 413])
def test_no_100_continue_when_the_app_answers_without_reading(run_server: Any, loop: str, status: int) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await respond(send, status, b"no thanks")

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n")
        response = client.read_response(informational=True)
        assert response.status == status
        assert response.body == b"no thanks"
        assert client.wait_closed() == b""  # the body was never read: the connection cannot be reused


@needs_curl
def test_curl_expect_100_continue(run_server: Any) -> None:
    server = run_server(echo)
    out = subprocess.run([CURL, "-sS", "-i", "--http1.1", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                          "--data-binary", "ping", server.url], capture_output=True, timeout=20, check=True)
    assert out.stdout.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert out.stdout.endswith(b"\r\n\r\nping")


# ---------------------------------------------------------------------------------------------------- responses


async def response_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    await read_body(receive)
    if path == "/length":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"ab", b"", b"cd", b"ef"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/204":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/304":
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"v1"')]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/too-long":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"GET /x HTTP/1.1\r\n\r\n"})
    elif path == "/too-short":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"abc"})
    else:
        await respond(send, body=b"plain " + path.encode())


def test_content_length_from_the_app_is_respected(run_server: Any, loop: str) -> None:
    server = run_server(response_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/length"))
        response = client.read_response()
        assert response.header(b"content-length") == b"10"
        assert response.header(b"transfer-encoding") is None
        assert response.body == b"0123456789"


def test_streams_are_chunked_in_http11_and_close_delimited_in_http10(run_server: Any, loop: str) -> None:
    server = run_server(response_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/stream"))
        response = client.read_response()
        assert response.chunked and response.header(b"content-length") is None
        assert response.body == b"abcdef"
        client.send(get("/after"))
        assert client.read_response().body == b"plain /after"
    with RawClient(server.port) as client:
        client.send(get("/stream", version=b"1.0", headers=b"connection: keep-alive\r\n"))
        response = client.read_response()
        assert not response.chunked and response.header(b"content-length") is None
        assert response.header(b"connection") == b"close"
        assert response.body == b"abcdef"  # read until the server closed


def test_head_204_304_have_no_body(run_server: Any, loop: str) -> None:
    server = run_server(response_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/plain", method=b"HEAD") + get("/stream", method=b"HEAD") + get("/204") + get("/304")
                    + get("/last"))
        head = client.read_response(b"HEAD")
        assert head.header(b"content-length") == b"12"
        head = client.read_response(b"HEAD")
        assert head.header(b"content-length") is None and head.header(b"transfer-encoding") is None
        no_content = client.read_response()
        assert no_content.status == 204 and no_content.header(b"content-length") is None
        not_modified = client.read_response()
        assert not_modified.status == 304 and not_modified.header(b"etag") == b'"v1"'
        # had any of them carried a body, this would be parsed from it
        last = client.read_response()
        assert last.status == 200 and last.body == b"plain /last"


@pytest.mark.parametrize("path", ["/too-long", "/too-short"])
def test_a_wrong_body_length_closes_the_connection(run_server: Any, loop: str, logs: LogRecords,
                                                   path: str) -> None:
    server = run_server(response_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get(path) + get("/next"))
        rest = client.wait_closed()
    assert b"/next" not in rest and b"GET /x" not in rest
    assert rest.count(b"HTTP/1.1") <= 1
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert "content-length" in str(record.exc_info[1] if record.exc_info else record.getMessage())
    assert f"GET {path}" in record.getMessage()


def test_default_response_headers(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        own = [(b"server", b"mine"), (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")] if scope["path"] == "/own" else []
        await respond(send, body=b"x", headers=own)

    server = run_server(app, headers=("x-extra: one", "x-more:two"))
    with RawClient(server.port) as client:
        client.send(get("/") + get("/own"))
        plain = client.read_response()
        assert plain.header(b"server") == b"tidegate"
        assert plain.header(b"date") is not None and plain.header(b"date").endswith(b" GMT")
        assert plain.header(b"x-extra") == b"one" and plain.header(b"x-more") == b"two"
        own = client.read_response()
        assert own.header(b"server") == b"mine"  # the app's own, and only one
        assert own.header(b"date") == b"Thu, 01 Jan 1970 00:00:00 GMT"
        assert own.header(b"x-extra") == b"one"


# ---------------------------------------------------------------------------------------------------- streaming


def sse_app(gates: list[Gate]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for i, gate in enumerate(gates):
            await send({"type": "http.response.body", "body": b"data: event %d\n\n" % i, "more_body": True})
            await gate.wait()
        await send({"type": "http.response.body", "body": b""})

    return app


def test_sse_events_arrive_one_by_one(run_server: Any, loop: str) -> None:
    gates = [Gate(), Gate(), Gate()]
    server = run_server(sse_app(gates), loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/events"))
        _, status, headers = client.read_head()
        assert status == 200 and (b"transfer-encoding", b"chunked") in headers
        for i, gate in enumerate(gates):
            size = int(client.read_until(b"\r\n")[:-2], 16)
            assert client.read_exactly(size + 2) == b"data: event %d\n\n\r\n" % i
            assert not gate.is_set()  # the app is still waiting: the event came before it went on
            gate.set()
        assert client.read_until(b"0\r\n\r\n") == b"0\r\n\r\n"


@needs_curl
def test_sse_with_curl(run_server: Any) -> None:
    gates = [Gate(), Gate()]
    server = run_server(sse_app(gates))
    process = subprocess.Popen([CURL, "-sS", "-N", "--http1.1", server.url + "/events"], stdout=subprocess.PIPE)
    try:
        lines = LineReader(process.stdout)
        for i, gate in enumerate(gates):
            assert lines.next_matching(lambda line: line.startswith(b"data:")) == b"data: event %d\n" % i
            assert not gate.is_set()
            gate.set()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_send_waits_while_the_client_does_not_read(run_server: Any, loop: str) -> None:
    total = 32 << 20
    piece = b"w" * 65536
    progress = {"sent": 0}
    finished = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while progress["sent"] < total:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            progress["sent"] += len(piece)
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    server = run_server(app, loop=loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.port))
    client = RawClient.__new__(RawClient)
    client.sock, client.buffer = sock, b""
    with client:
        client.send(get())
        with pytest.raises(TimeoutError):
            finished.wait_sync(1.0)
        stalled_at = progress["sent"]
        assert stalled_at < total // 2  # the app stalled in send() while nobody read
        response = client.read_response()
        assert len(response.body) == total
        finished.wait_sync(10)


# ---------------------------------------------------------------------------------------------------- disconnect


@pytest.mark.parametrize("reset", [False, True])
def test_http_disconnect_reaches_a_waiting_app(run_server: Any, loop: str, logs: LogRecords, reset: bool) -> None:
    streaming = Gate()
    finished = Gate()
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        streaming.set()
        while True:
            message = await asyncio.wait_for(receive(), 10)
            if message["type"] == "http.disconnect":
                break
        outcome["message"] = message
        try:
            await send({"type": "http.response.body", "body": b"data: anyone?\n\n", "more_body": True})
        except BaseException as exc:
            outcome["error"] = exc
        finished.set()

    server = run_server(app, loop=loop, access_log=True)
    with RawClient(server.port) as client:
        client.send(get("/events"))
        client.read_until(b"data: hello\n\n\r\n")
        streaming.wait_sync()
        if reset:  # close with an RST rather than a FIN
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finished.wait_sync(5)
    assert outcome["message"] == {"type": "http.disconnect"}
    assert isinstance(outcome["error"], OSError)
    server.stop()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


def test_a_half_closing_client_gets_its_answers(run_server: Any, loop: str) -> None:
    server = run_server(pipeline_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/one"))
        client.sock.shutdown(socket.SHUT_WR)
        response = client.read_response()
        assert response.body == b"GET /one "
        assert client.wait_closed() == b""
    with RawClient(server.port) as client:
        client.send(get("/one") + post("/two", b"2") + get("/three"))
        client.sock.shutdown(socket.SHUT_WR)
        assert [client.read_response().body for _ in range(3)] == [b"GET /one ", b"POST /two 2", b"GET /three "]
        assert client.wait_closed() == b""


def test_a_truncated_body_is_a_disconnect(run_server: Any, loop: str, logs: LogRecords) -> None:
    finished = Gate()
    messages: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            messages.append(await receive())
            if messages[-1]["type"] == "http.disconnect":
                break
        finished.set()

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.wait_closed() == b""
    finished.wait_sync()
    assert b"".join(m.get("body", b"") for m in messages) == b"abc"
    assert all(m.get("more_body") for m in messages[:-1])
    assert messages[-1] == {"type": "http.disconnect"}
    server.stop()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


def test_disconnect_while_the_app_sends_is_not_an_error(run_server: Any, loop: str, logs: LogRecords) -> None:
    finished = Gate()
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except OSError as exc:
            outcome["error"] = exc
            raise
        finally:
            finished.set()

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get())
        client.read_until(b"xxxx")
    finished.wait_sync(10)
    assert isinstance(outcome["error"], OSError)
    server.stop()
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------------- ASGI errors


def test_app_exception_before_start_gives_500_logged_once(run_server: Any, loop: str, logs: LogRecords) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    server = run_server(app, loop=loop, access_log=True)
    with RawClient(server.port) as client:
        client.send(get("/explode?x=1"))
        response = client.read_response()
        assert response.status == 500
        assert b"boom" not in response.body  # details stay in the log
    server.stop()
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "GET /explode?x=1" in errors[0].getMessage()
    assert errors[0].exc_info is not None and str(errors[0].exc_info[1]) == "boom"
    access = logs.messages("tidegate.access")
    assert len(access) == 1 and '"GET /explode?x=1 HTTP/1.1" 500 ' in access[0]


def test_app_exception_after_start_closes_the_connection(run_server: Any, loop: str, logs: LogRecords) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("midway")

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/midway") + get("/next"))
        _, status, _ = client.read_head()
        assert status == 200
        rest = client.wait_closed()
        assert b"partial" in rest and not rest.endswith(b"0\r\n\r\n")  # no clean end: the client knows
        assert b"HTTP/1.1" not in rest
    server.stop()
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "GET /midway" in errors[0].getMessage()


def test_app_returning_without_a_response_gives_500(run_server: Any, loop: str, logs: LogRecords) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    server = run_server(app, loop=loop)
    with RawClient(server.port) as client:
        client.send(get("/nothing"))
        assert client.read_response().status == 500
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert "GET /nothing" in record.getMessage()


@pytest.mark.parametrize("header", [
    (b"x-evil", b"a\r\nset-cookie: pwned=1"),
    (b"x-evil", b"a\nb"),
    (b"x-evil", b"a\rb"),
    (b"x-evil", b"a\x00b"),
    (b"x-evil\r\nset-cookie: pwned", b"1"),
    (b"x-evil\n", b"1"),
    (b"x\x00evil", b"1"),
])
def test_response_header_injection_is_refused(run_server: Any, logs: LogRecords,
                                              header: tuple[bytes, bytes]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await respond(send, body=b"should not be sent", headers=[header])

    server = run_server(app)
    with RawClient(server.port) as client:
        client.send(get("/inject"))
        response = client.read_response()
        rest = client.wait_closed()
    assert response.status == 500
    everything = repr(response.headers).encode() + response.body + rest
    assert b"pwned" not in everything and b"should not be sent" not in everything
    assert all(name != b"x-evil" for name, _ in response.headers)
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert "GET /inject" in record.getMessage()


def test_access_log_line(run_server: Any, loop: str, logs: LogRecords) -> None:
    server = run_server(response_app, loop=loop, access_log=True)
    with RawClient(server.port) as client:
        local_port = client.sock.getsockname()[1]
        client.send(get("/a%0Ab%1B%5B31m%0D%7F?q=%0A"))
        response = client.read_response()
    record = logs.wait_for(lambda r: r.name == "tidegate.access")
    line = record.getMessage()
    assert line.startswith(f"127.0.0.1:{local_port} - ")
    assert "GET /a\\nb\\x1b[31m\\r\\x7f?q=%0A HTTP/1.1" in line
    assert not any(ch in line for ch in "\n\r\x1b\x7f")
    assert f" 200 {len(response.body)} " in line
    assert line.endswith("ms")


# ---------------------------------------------------------------------------------------------------- scope


def test_scope_over_tcp(run_server: Any, loop: str) -> None:
    server = run_server(scope_json, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"GET /caf%C3%A9/x%2Fy?a=1&b=%C3%A9 HTTP/1.1\r\nHost: test\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n")
        scope = json.loads(client.read_response().body)
        local = client.sock.getsockname()
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["type"] == "http" and scope["scheme"] == "http" and scope["http_version"] == "1.1"
    assert scope["path"] == "/café/x/y"
    assert scope["raw_path"] == "/caf%C3%A9/x%2Fy"
    assert scope["query_string"] == "a=1&b=%C3%A9"
    assert scope["root_path"] == ""
    assert scope["headers"] == [["host", "test"], ["x-dup", "1"], ["x-dup", "2"]]
    assert scope["client"] == ["127.0.0.1", local[1]] and scope["client_types"] == ["str", "int"]
    assert scope["server"] == ["127.0.0.1", server.port] and scope["server_types"] == ["str", "int"]


def test_scope_over_a_unix_socket(run_server: Any, loop: str, tmp_path: Any) -> None:
    path = str(tmp_path / "tidegate.sock")
    server = run_server(scope_json, loop=loop, uds=path)
    assert server.sockets[0].family == socket.AF_UNIX
    with RawClient(uds=path) as client:
        client.send(get("/over-uds"))
        scope = json.loads(client.read_response().body)
    assert scope["path"] == "/over-uds"
    assert scope["server"] == [path, None]
    assert scope["client"] is None or isinstance(scope["client"], list)


def test_root_path(run_server: Any) -> None:
    server = run_server(scope_json, root_path="/api")
    scope = httpx.get(server.url + "/items?x=1", timeout=5).json()
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items"
    assert scope["raw_path"] == "/api/items"


def test_lifespan_state_is_shallow_copied_into_each_request(run_server: Any, loop: str) -> None:
    shared: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["counter"] = 0
            scope["state"]["shared"] = shared
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        seen = state["counter"]
        state["counter"] += 1  # a request's change to the copy stays in that request
        state["shared"].append(scope["path"])  # the objects themselves are shared
        await respond(send, body=f"{seen} {len(state['shared'])}".encode())

    server = run_server(app, loop=loop, lifespan="on")
    with httpx.Client(base_url=server.url, timeout=5) as http:
        assert http.get("/a").text == "0 1"
        assert http.get("/b").text == "0 2"
    assert shared == ["/a", "/b"]


def test_a_request_with_connection_close_is_answered_connection_close_whatever_the_app_set(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", b"keep-alive"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = run_server(app)
    with RawClient(server.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = client.read_response()
        assert response.header(b"connection") == b"close"
        assert client.sock.recv(1) == b""  # and it closes
    with RawClient(server.port) as client:  # the next client is served
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().header(b"connection") == b"keep-alive"

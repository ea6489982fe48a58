"""The WSGI adapter: environ, wsgi.input, streaming, close(), errors, the thread pool, interface detection."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
import socket
import sys
import threading
from typing import Any

import httpx
import pytest

from tidegate.asgi.errors import ClientDisconnected
from tidegate.config import Config, ConfigError
from tidegate.middleware.wsgi import (
    FileWrapper,
    InputStream,
    ThreadPool,
    WSGIMiddleware,
    build_environ,
    default_threads,
    is_wsgi_app,
)

from .conftest import raw_request

WAIT = 10.0


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, WSGI!"]


# ----------------------------------------------------------------------------------------------- detection


class WSGIClass:
    def __call__(self, environ, start_response):
        return hello_app(environ, start_response)


class ASGIClass:
    async def __call__(self, scope, receive, send):
        pass


async def asgi_function(scope, receive, send):
    pass


def test_is_wsgi_app():
    assert is_wsgi_app(hello_app)
    assert is_wsgi_app(WSGIClass())
    assert is_wsgi_app(WSGIClass().__call__)
    assert not is_wsgi_app(asgi_function)
    assert not is_wsgi_app(ASGIClass())
    assert not is_wsgi_app(lambda scope, receive, send: None)
    assert not is_wsgi_app(lambda *args: None)  # cannot be told apart: ASGI unless named
    assert not is_wsgi_app(lambda environ: None)
    assert not is_wsgi_app("not callable")
    assert not is_wsgi_app(len)  # a builtin whose signature is known: one parameter


def test_is_wsgi_app_frameworks():
    flask = pytest.importorskip("flask")
    assert is_wsgi_app(flask.Flask("t"))
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    assert WSGIHandler.__call__ and is_wsgi_app(WSGIHandler.__new__(WSGIHandler))
    assert not is_wsgi_app(ASGIHandler.__new__(ASGIHandler))
    from starlette.applications import Starlette
    assert not is_wsgi_app(Starlette())


def test_settings():
    config = Config.from_flat(interface="wsgi", threads=3, warn_blocking=0.5)
    assert (config.sync.interface, config.sync.threads, config.sync.warn_blocking) == ("wsgi", 3, 0.5)
    assert Config().sync.interface == "auto" and Config().sync.threads is None
    assert Config().sync.warn_blocking is None
    with pytest.raises(ConfigError, match="threads"):
        Config.from_flat(threads=0)
    with pytest.raises(ConfigError, match="warn_blocking"):
        Config.from_flat(warn_blocking=-1.0)
    assert default_threads() == min(64, 10 * len(os.sched_getaffinity(0)))


def test_cli_flags():
    from tidegate.cli import parse_args
    config = parse_args(["m:app", "--interface", "wsgi", "--threads", "7", "--warn-blocking", "0.25"])
    assert (config.sync.interface, config.sync.threads, config.sync.warn_blocking) == ("wsgi", 7, 0.25)


# ----------------------------------------------------------------------------------------------- environ


def scope_for(**changes: Any) -> dict[str, Any]:
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/api/caf\u00e9",
        "raw_path": b"/api/caf%C3%A9", "query_string": b"a=1&b=%20", "root_path": "/api",
        "headers": [(b"host", b"example.org:8080"), (b"content-type", b"text/plain"), (b"content-length", b"5"),
                    (b"accept", b"text/html"), (b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
                    (b"x_forwarded_for", b"6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4")],
        "client": ("10.0.0.1", 5555), "server": ("127.0.0.1", 8000),
    }
    scope.update(changes)
    return scope


def test_environ_is_complete():
    stream = object()
    environ = build_environ(scope_for(), stream)
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == "/api"
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9"  # the UTF-8 bytes, as latin-1 (PEP 3333)
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/caf\u00e9"
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SERVER_NAME"] == "127.0.0.1" and environ["SERVER_PORT"] == "8000"
    assert environ["REMOTE_ADDR"] == "10.0.0.1" and environ["REMOTE_PORT"] == "5555"
    assert environ["CONTENT_TYPE"] == "text/plain" and environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_HOST"] == "example.org:8080"
    assert environ["HTTP_ACCEPT"] == "text/html,*/*"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    # a header spelled with '_' could pose as the '-' one: dropped
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"] is stream
    assert environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multithread"] is True and environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.file_wrapper"] is FileWrapper
    for key, value in environ.items():  # PEP 3333: CGI keys are native strings
        if not key.startswith("wsgi."):
            assert type(value) is str, key


def test_environ_variants():
    environ = build_environ(scope_for(root_path="", path="/a b", raw_path=b"/a%20b", query_string=b""), None)
    assert environ["SCRIPT_NAME"] == "" and environ["PATH_INFO"] == "/a b" and environ["QUERY_STRING"] == ""
    # no raw_path (allowed by the spec): from the decoded path
    environ = build_environ(scope_for(raw_path=None), None)
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9"
    # the mount point itself
    environ = build_environ(scope_for(path="/api", raw_path=b"/api"), None)
    assert environ["SCRIPT_NAME"] == "/api" and environ["PATH_INFO"] == ""
    # a path that only starts with the same letters is not under the mount point
    environ = build_environ(scope_for(path="/apix", raw_path=b"/apix"), None)
    assert environ["PATH_INFO"] == "/apix"
    # a UNIX socket: the name and port the client asked for
    environ = build_environ(scope_for(server=("/tmp/s.sock", None), client=None, scheme="https",
                                      http_version="2"), None)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.org", "8080")
    assert environ["REMOTE_ADDR"] == "" and environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PROTOCOL"] == "HTTP/2"
    environ = build_environ(scope_for(server=None, headers=[]), None, multiprocess=True)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert environ["wsgi.multiprocess"] is True
    environ = build_environ(scope_for(server=None, scheme="https", headers=[(b"host", b"[::1]")]), None)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("[::1]", "443")


# ----------------------------------------------------------------------------------------------- wsgi.input


class FakeBridge:
    """Delivers a scripted list of ASGI messages, one per receive, and counts them."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = list(messages)
        self.receives = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        return self.messages.pop(0)

    def call(self, coro: Any) -> Any:
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("the fake receive never waits")


def body(*pieces: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]


def test_input_reads_only_what_is_asked():
    bridge = FakeBridge(body(b"hello", b" wor", b"ld\nsecond line\n", b"tail"))
    stream = InputStream(bridge)  # type: ignore[arg-type]
    assert stream.read(0) == b"" and bridge.receives == 0
    assert stream.read(3) == b"hel" and bridge.receives == 1
    assert stream.read(2) == b"lo" and bridge.receives == 1
    assert stream.read(4) == b" wor" and bridge.receives == 2
    assert stream.readline() == b"ld\n" and bridge.receives == 3
    assert stream.readline(4) == b"seco"
    assert stream.readline() == b"nd line\n" and bridge.receives == 3
    assert stream.read() == b"tail" and bridge.receives == 4
    assert stream.read() == b"" and stream.readline() == b"" and bridge.receives == 4


def test_input_lines_and_iteration():
    stream = InputStream(FakeBridge(body(b"a\nb", b"b\nc", b"cc\n", b"")))  # type: ignore[arg-type]
    assert list(stream) == [b"a\n", b"bb\n", b"ccc\n"]
    stream = InputStream(FakeBridge(body(b"a\nbb\nccc\nd")))  # type: ignore[arg-type]
    assert stream.readlines(3) == [b"a\n", b"bb\n"]
    assert stream.readlines() == [b"ccc\n", b"d"]
    stream = InputStream(FakeBridge(body(b"no newline at all")))  # type: ignore[arg-type]
    assert stream.readline(None) == b"no newline at all"
    assert stream.read(10) == b""


def test_input_disconnect_raises():
    stream = InputStream(FakeBridge([*body(b"part", b"x")[:1], {"type": "http.disconnect"}]))  # type: ignore[arg-type]
    assert stream.read(4) == b"part"
    with pytest.raises(ClientDisconnected):
        stream.read()
    assert isinstance(ClientDisconnected(), OSError)


# ----------------------------------------------------------------------------------------------- thread pool


def test_thread_pool_is_bounded():
    pool = ThreadPool(2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def task(n: int) -> int:
        started.release()
        assert release.wait(WAIT)
        return n * 2

    futures = [pool.submit(task, n) for n in range(5)]
    assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
    assert pool.threads == 2
    release.set()
    assert [f.result(WAIT) for f in futures] == [0, 2, 4, 6, 8]
    assert pool.threads == 2
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(WAIT)
    pool.shutdown()
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(task, 1)


# ----------------------------------------------------------------------------------------------- end to end


def test_hello_auto_detected(run_server):
    server = run_server(hello_app)
    response = httpx.get(server.url + "/", timeout=WAIT)
    assert response.status_code == 200
    assert response.text == "Hello, WSGI!"
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == "12"  # a one-item list: sent in one piece


def test_interface_forced(run_server):
    class Odd:
        """A WSGI app that takes *args (so 'auto' cannot tell)."""

        def __call__(self, *args):
            return hello_app(*args)

    server = run_server(Odd(), interface="wsgi", threads=1)
    assert httpx.get(server.url, timeout=WAIT).text == "Hello, WSGI!"


def test_environ_end_to_end(run_server):
    seen: dict[str, Any] = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    server = run_server(app, root_path="/mount")
    response = httpx.get(server.url + "/x%2Fy?q=1", headers={"X-Thing": "1"}, timeout=WAIT)
    assert response.status_code == 204
    assert seen["SCRIPT_NAME"] == "/mount" and seen["PATH_INFO"] == "/x/y" and seen["QUERY_STRING"] == "q=1"
    assert seen["SERVER_NAME"] == "127.0.0.1" and seen["SERVER_PORT"] == str(server.port)
    assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["HTTP_X_THING"] == "1"
    assert seen["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert seen["wsgi.url_scheme"] == "http"


def test_request_body_is_streamed_to_the_app(run_server):
    """The app reads the first part of the body before the client has sent the rest: nothing buffers it whole."""
    first_read = threading.Event()

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.read(1000)
        first_read.set()
        rest = stream.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d+%d" % (len(first), len(rest))]

    def upload():
        yield b"a" * 1000
        assert first_read.wait(WAIT), "the app did not see the first part while the body was still coming"
        yield b"b" * 5000

    server = run_server(app)
    response = httpx.post(server.url, content=upload(), timeout=WAIT)
    assert response.text == "1000+5000"


def test_large_upload_read_in_pieces(run_server):
    sizes: list[int] = []

    def app(environ, start_response):
        total = 0
        while True:
            piece = environ["wsgi.input"].read(65536)
            if not piece:
                break
            sizes.append(len(piece))
            total += len(piece)
        start_response("200 OK", [])
        return [str(total).encode()]

    server = run_server(app)
    payload = os.urandom(3_000_000)
    response = httpx.post(server.url, content=payload, timeout=WAIT)
    assert response.text == str(len(payload))
    assert max(sizes) <= 65536 and len(sizes) >= len(payload) // 65536


def test_expect_continue_only_when_the_app_reads(run_server):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/read":
            environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = run_server(app)
    head = b"Content-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\n" + head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abc")
        assert b"200 OK" in sock.recv(1000)
    reply = raw_request(server.port, b"POST /skip HTTP/1.1\r\nHost: x\r\n" + head)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in reply


def test_streaming_response_flushes_each_chunk(run_server):
    """The second chunk is produced only once the client has the first one."""
    got_first = threading.Event()
    closed = threading.Event()

    class Body:
        def __iter__(self):
            yield b"first;"
            assert got_first.wait(WAIT), "the first chunk did not reach the client before the next was made"
            yield b""  # empty items are skipped
            yield b"second;"

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    server = run_server(app)
    with httpx.stream("GET", server.url, timeout=WAIT) as response:
        assert "content-length" not in response.headers
        chunks = response.iter_raw()
        received = next(chunks)
        assert received == b"first;"
        got_first.set()
        for chunk in chunks:
            received += chunk
    assert received == b"first;second;"
    assert closed.wait(WAIT)


def test_list_body_and_write_callable(run_server):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        write(bytearray(b"bytearray;"))
        return [b"one;", memoryview(b"two;"), b"", bytearray(b"last")]

    server = run_server(app)
    response = httpx.get(server.url, timeout=WAIT)
    assert response.text == "written;bytearray;one;two;last"


def test_generator_that_starts_late_and_empty_bodies(run_server):
    def late(environ, start_response):
        def body():
            start_response("201 Created", [("X-Late", "yes")])
            yield b"made"
        return body()

    def empty(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(())

    late_server = run_server(late)
    response = httpx.get(late_server.url, timeout=WAIT)
    assert (response.status_code, response.text, response.headers["x-late"]) == (201, "made", "yes")
    empty_server = run_server(empty)
    response = httpx.get(empty_server.url, timeout=WAIT)
    assert response.status_code == 200 and response.content == b""
    response = httpx.head(late_server.url, timeout=WAIT)
    assert response.status_code == 201 and response.content == b""


def test_file_wrapper(run_server, tmp_path):
    data = os.urandom(200_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    closed = threading.Event()

    class File(io.FileIO):
        def close(self) -> None:
            super().close()
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](File(path, "rb"), 8192)

    server = run_server(app)
    response = httpx.get(server.url, timeout=WAIT)
    assert response.content == data
    assert closed.wait(WAIT)  # the last byte may reach the client just before close() runs


def test_exception_before_start_is_500_and_logged(run_server, caplog):
    closed = threading.Event()

    def crash(environ, start_response):
        raise ValueError("boom in the view")

    class Body:
        def __iter__(self):
            raise KeyError("boom while iterating")

        def close(self):
            closed.set()

    def crash_in_body(environ, start_response):
        start_response("200 OK", [])
        return Body()

    def no_start(environ, start_response):
        return [b"data"]

    def bad_status(environ, start_response):
        start_response("OK", [])
        return []

    def str_body(environ, start_response):
        start_response("200 OK", [])
        return ["text is not bytes"]

    for app, needle in ((crash, "boom in the view"), (crash_in_body, "boom while iterating"),
                        (no_start, "without calling start_response"), (bad_status, "200 OK"),
                        (str_body, "must be bytes")):
        caplog.clear()
        server = run_server(app)
        with caplog.at_level(logging.ERROR, logger="tidegate.error"):
            response = httpx.get(server.url + "/fail?x=1", timeout=WAIT)
        assert response.status_code == 500
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, app
        assert "GET /fail?x=1" in errors[0].getMessage()
        assert needle in str(errors[0].exc_info[1])
    assert closed.wait(WAIT)


def test_exception_after_start_closes_the_connection(run_server, caplog):
    closed = threading.Event()

    class Body:
        def __iter__(self):
            yield b"partial"
            raise RuntimeError("failed mid-stream")

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    server = run_server(app)
    with caplog.at_level(logging.ERROR, logger="tidegate.error"):
        reply = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"partial" in reply
    assert not reply.endswith(b"0\r\n\r\n")  # the chunked body was never terminated: the client sees the failure
    assert closed.wait(WAIT)
    assert any("failed mid-stream" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_exc_info_start_response(run_server):
    def recover(environ, start_response):
        start_response("200 OK", [("X-Before", "1")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", [("X-After", "1")], sys.exc_info())
        return [b"sorry"]

    def too_late(environ, start_response):
        write = start_response("200 OK", [])
        write(b"sent")
        try:
            raise ValueError("too late to change")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return []

    def twice(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    server = run_server(recover)
    response = httpx.get(server.url, timeout=WAIT)
    assert (response.status_code, response.text) == (503, "sorry")
    assert "x-before" not in response.headers and response.headers["x-after"] == "1"
    server = run_server(too_late)
    reply = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK") and not reply.endswith(b"0\r\n\r\n")
    server = run_server(twice)
    assert httpx.get(server.url, timeout=WAIT).status_code == 500


def test_close_called_when_the_client_goes_away(run_server):
    closed = threading.Event()
    produced = threading.Event()

    class Endless:
        def __iter__(self):
            while True:
                produced.set()
                yield b"x" * 1024

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Endless()

    server = run_server(app, threads=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
        assert produced.wait(WAIT)
    assert closed.wait(WAIT), "close() was not called after the client went away"
    # the only thread is free again: the next request is served
    with httpx.stream("GET", server.url, timeout=WAIT) as response:
        assert response.status_code == 200


def test_client_gone_while_the_app_reads_the_body(run_server):
    failed = threading.Event()

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError:
            failed.set()
            raise
        start_response("200 OK", [])
        return [b"unexpected"]

    server = run_server(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    assert failed.wait(WAIT)


def test_concurrent_requests_share_the_pool(run_server):
    """Two requests run at once on two threads: each waits for the other to start."""
    barrier = threading.Barrier(2, timeout=WAIT)

    def app(environ, start_response):
        barrier.wait()
        start_response("200 OK", [])
        return [threading.current_thread().name.encode()]

    server = run_server(app, threads=2)
    results: list[str] = []

    def get():
        results.append(httpx.get(server.url, timeout=WAIT).text)

    clients = [threading.Thread(target=get) for _ in range(2)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(WAIT)
    assert len(results) == 2 and len(set(results)) == 2
    assert all(name.startswith("tidegate-wsgi") for name in results)


def test_lifespan_and_websocket_scopes(run_server):
    server = run_server(hello_app, lifespan="on")
    assert httpx.get(server.url, timeout=WAIT).text == "Hello, WSGI!"


def test_websocket_scope_is_refused():
    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    async def main():
        middleware = WSGIMiddleware(hello_app, 1)
        await middleware({"type": "websocket"}, None, send)
        assert sent == [{"type": "websocket.close", "code": 1000}]
        with pytest.raises(ValueError, match="cannot serve"):
            await middleware({"type": "something"}, None, send)
        middleware.close()

    asyncio.run(main())


@pytest.mark.skipif(importlib.util.find_spec("tidegate.runtime.h2") is None,
                    reason="this build of tidegate does not speak HTTP/2")
def test_over_http2(run_server):
    """The same adapter behind an HTTP/2 stream (cleartext, prior knowledge)."""
    seen: dict[str, Any] = {}

    def app(environ, start_response):
        seen.update(environ)
        size = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"got ", str(size).encode()])

    server = run_server(app)
    with httpx.Client(base_url=server.url, http1=False, http2=True, timeout=WAIT) as client:
        response = client.post("/h2?x=1", content=iter([b"a" * 70000, b"b" * 30000]))
    assert response.http_version == "HTTP/2"
    assert response.text == "got 100000"
    assert seen["SERVER_PROTOCOL"] == "HTTP/2" and seen["PATH_INFO"] == "/h2" and seen["QUERY_STRING"] == "x=1"
    assert seen["REQUEST_METHOD"] == "POST" and seen["HTTP_HOST"] == f"127.0.0.1:{server.port}"


@pytest.mark.skipif(importlib.util.find_spec("tidegate.runtime.ws") is None,
                    reason="this build of tidegate does not serve WebSocket")
def test_websocket_to_a_wsgi_app_is_refused(run_server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server = run_server(hello_app)
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url.replace("http://", "ws://") + "/", open_timeout=WAIT)
    assert refused.value.response.status_code == 403
    assert httpx.get(server.url, timeout=WAIT).text == "Hello, WSGI!"


def test_flask(run_server):
    flask = pytest.importorskip("flask")
    app = flask.Flask("tidegate_test")
    released = threading.Event()

    @app.get("/")
    def index():
        return {"hello": "flask", "url": flask.url_for("index", _external=True)}

    @app.post("/upload")
    def upload():
        total = 0
        stream = flask.request.stream
        while chunk := stream.read(8192):
            total += len(chunk)
        return {"bytes": total, "type": flask.request.content_type}

    @app.get("/stream")
    def stream():
        def events():
            yield "data: 1\n\n"
            assert released.wait(WAIT)
            yield "data: 2\n\n"
        return flask.Response(flask.stream_with_context(events()), mimetype="text/event-stream")

    @app.get("/error")
    def error():
        raise RuntimeError("flask view failed")

    server = run_server(app, root_path="/app")  # the proxy in front strips /app: the server adds it back
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        assert client.get("/").json() == {"hello": "flask", "url": f"http://127.0.0.1:{server.port}/app/"}
        payload = os.urandom(300_000)
        response = client.post("/upload", content=payload, headers={"Content-Type": "application/x-blob"})
        assert response.json() == {"bytes": len(payload), "type": "application/x-blob"}
        chunked = client.post("/upload", content=iter([b"a" * 10, b"b" * 20]))
        assert chunked.json()["bytes"] == 30
        with client.stream("GET", "/stream") as response:
            lines = response.iter_lines()
            assert next(lines) == "data: 1"
            released.set()
            assert [line for line in lines if line] == ["data: 2"]
        assert client.get("/missing").status_code == 404
        assert client.get("/error").status_code == 500

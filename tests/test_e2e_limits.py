"""Timeouts and limits end to end: a real server on 127.0.0.1 port 0, raw sockets, short configured timeouts.

Every wait has a timeout and no test measures time: a deadline is shown by what the client receives (408, a closed
connection) while the socket timeout, far longer, only bounds a test that would fail."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
from typing import Any

import pytest
import trustme

from .apps import Gate, hello
from .conftest import RawClient, ServerThread


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class Recorder:
    """An app that records the messages it receives (thread-safe) and answers with the body it read."""

    def __init__(self, respond_first: bool = False) -> None:
        self.calls = 0
        self.messages: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.finished = threading.Event()
        self.respond_first = respond_first

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        try:
            if self.respond_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"started", "more_body": True})
            body = b""
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] != "http.request":
                    return
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            if not self.respond_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.finished.set()

    @property
    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages]


def served_normally(port: int) -> None:
    """A client connecting now gets an answer."""
    with RawClient(port) as client:
        client.send(GET)
        assert client.read_response().status == 200


def refused(port: int, data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Send ``data`` on a new connection: the status, headers and body of the answer; the server closes after it."""
    with RawClient(port) as client:
        client.send(data)
        response = client.read_response()
        assert response.header(b"connection") == b"close"
        client.wait_closed()
        return response.status, response.headers, response.body


def trickle(client: RawClient, data: bytes, pause: float = 0.05) -> int:
    """Send ``data`` a byte at a time, waiting up to ``pause`` between bytes for an answer; the bytes sent."""
    for sent in range(len(data)):
        client.send(data[sent:sent + 1])
        ready, _, _ = select.select([client.sock], [], [], pause)
        if ready:
            return sent + 1
    return len(data)


# ---------------------------------------------------------------------------------------------------- timeouts


def test_a_slowloris_head_gets_408(run_server: Any, loop: str) -> None:
    app = Recorder()
    server = run_server(app, loop=loop, timeout_request_header=0.3, timeout_keep_alive=5)
    head = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(200)) + b"\r\n"
    with RawClient(server.port) as client:
        sent = trickle(client, head)
        assert sent < len(head)  # answered long before the head could be complete
        assert client.read_response().status == 408
        client.wait_closed()
    assert app.calls == 0
    served_normally(server.port)


def test_a_stalled_body_gets_408_and_the_app_hears_disconnect(run_server: Any, loop: str) -> None:
    app = Recorder()
    server = run_server(app, loop=loop, timeout_request_body=0.3)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        assert client.read_response().status == 408
        client.wait_closed()
    assert app.finished.wait(5)
    assert app.kinds == ["http.request", "http.disconnect"]
    served_normally(server.port)


def test_a_stalled_body_after_the_response_started_closes(run_server: Any, loop: str) -> None:
    app = Recorder(respond_first=True)
    server = run_server(app, loop=loop, timeout_request_body=0.3)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        rest = client.read_all()  # the response began (200, chunked) and the connection ends without its end
        assert rest.startswith(b"HTTP/1.1 200 ") and b"started" in rest and not rest.endswith(b"0\r\n\r\n")
    assert app.finished.wait(5)
    assert app.kinds[-1] == "http.disconnect"


def test_a_client_that_does_not_read_is_dropped(run_server: Any, loop: str) -> None:
    outcome: list[str] = []
    done = Gate()

    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(10_000):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            outcome.append("all sent")
        except OSError as exc:
            outcome.append(type(exc).__name__)
        finally:
            done.set()

    server = run_server(streamer, loop=loop, timeout_write=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(GET)
        done.wait_sync(10)  # the client reads nothing: after the write timeout the server gives up on it
    assert outcome == ["ClientDisconnected"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp_path: Any) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


@pytest.mark.parametrize("opening", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "partial-hello"])
def test_a_tls_handshake_that_does_not_finish_is_dropped(run_server: Any, loop: str, ca: trustme.CA, tmp_path: Any,
                                                          opening: bytes) -> None:
    server = run_server(hello, loop=loop, timeout_tls_handshake=0.3, **tls_files(ca, tmp_path))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(opening)
        try:
            assert sock.recv(4096) == b""  # closed by the server, long before the socket timeout
        except ConnectionResetError:
            pass
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(GET)
        assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")


# ---------------------------------------------------------------------------------------------------- size limits


def test_a_long_target_gets_414(run_server: Any) -> None:
    app = Recorder()
    server = run_server(app, limit_request_line=1000)
    with RawClient(server.port) as client:
        client.send(b"GET /" + b"a" * 999 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 200
    assert refused(server.port, b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 414
    assert app.calls == 1
    served_normally(server.port)


def test_a_large_header_section_gets_431(run_server: Any) -> None:
    app = Recorder()
    server = run_server(app, limit_request_headers=2000)
    fields = b"Host: t\r\nX-A: " + b"a" * 1000 + b"\r\nX-B: " + b"b" * 1000 + b"\r\n"
    status, _, body = refused(server.port, b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert status == 431 and b"too large" in body
    assert app.calls == 0
    served_normally(server.port)


def test_too_many_header_fields_get_431(run_server: Any) -> None:
    app = Recorder()
    server = run_server(app, limit_request_header_count=10)
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(9))
    with RawClient(server.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
        assert client.read_response().status == 200
    assert refused(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"X-9: 1\r\n\r\n")[0] == 431
    served_normally(server.port)


def test_chunk_extensions_past_the_header_limit_get_400(run_server: Any, loop: str) -> None:
    # 3.2 MB of 8 KB extensions, each before a 1-byte chunk: refused long before the end, within one read of 8 KiB
    app = Recorder()
    server = run_server(app, loop=loop, limit_request_headers=8192, limit_request_body=1024)
    flood = b"".join(b"1;e=" + b"x" * 8000 + b"\r\nz\r\n" for _ in range(400))
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            client.sock.sendall(flood)
        except OSError:
            pass  # the server closed while the client was still sending
        response = client.read_response()
        assert response.status == 400 and b"chunk extensions" in response.body
        client.wait_closed()
    assert app.finished.wait(5)
    assert sum(len(m.get("body", b"")) for m in app.messages) < 100  # a few chunks' data, not 400
    served_normally(server.port)


def test_a_header_field_over_the_field_size_limit_gets_431(run_server: Any) -> None:
    app = Recorder()
    server = run_server(app, limit_request_field_size=100)
    with RawClient(server.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Token: " + b"t" * 93 + b"\r\n\r\n")
        assert client.read_response().status == 200
    status, _, _ = refused(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Token: " + b"t" * 94 + b"\r\n\r\n")
    assert status == 431 and app.calls == 1
    served_normally(server.port)


def test_default_head_limits(run_server: Any) -> None:
    server = run_server(hello)
    assert refused(server.port, b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 414
    assert refused(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 65536 + b"\r\n\r\n")[0] == 431
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    assert refused(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")[0] == 431


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_a_content_length_over_the_limit_gets_413_before_the_body(run_server: Any, loop: str, expect: bool) -> None:
    app = Recorder()
    server = run_server(app, loop=loop, limit_request_body=1000)
    extra = b"Expect: 100-continue\r\n" if expect else b""
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n" + extra + b"\r\n")
        response = client.read_response(informational=True)
        assert response.status == 413  # no 100 Continue first: the body is not wanted
        client.wait_closed()
    assert app.calls == 0
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
        assert client.read_response().body == b"x" * 1000


def test_a_chunked_body_crossing_the_limit_gets_413_and_the_app_hears_disconnect(run_server: Any, loop: str) -> None:
    app = Recorder()
    server = run_server(app, loop=loop, limit_request_body=1000)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"258\r\n" + b"x" * 600 + b"\r\n")
        client.send(b"258\r\n" + b"y" * 600 + b"\r\n")
        assert client.read_response().status == 413
        client.wait_closed()
    assert app.finished.wait(5)
    assert app.kinds[-1] == "http.disconnect"
    assert b"y" not in b"".join(m.get("body", b"") for m in app.messages)  # nothing past the limit reached it
    served_normally(server.port)


def test_a_chunked_body_crossing_the_limit_after_the_response_started_closes(run_server: Any) -> None:
    app = Recorder(respond_first=True)
    server = run_server(app, limit_request_body=1000)
    with RawClient(server.port) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert client.read_until(b"started").startswith(b"HTTP/1.1 200 ")
        client.send(b"4b0\r\n" + b"x" * 1200 + b"\r\n")
        assert b"413" not in client.read_all()  # the connection ends, the response unfinished
    assert app.finished.wait(5)
    assert app.kinds[-1] == "http.disconnect"


def test_no_body_limit(run_server: Any) -> None:
    server = run_server(Recorder(), limit_request_body=0)
    body = b"z" * 3_000_000
    with RawClient(server.port, timeout=20) as client:
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                    % (len(body), body))
        assert client.read_response().body == body


# ---------------------------------------------------------------------------------------------------- pipelining


def test_a_flood_of_pipelined_requests_is_answered_in_order(run_server: Any, loop: str) -> None:
    async def numbered(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    server = run_server(numbered, loop=loop)
    count = 20_000
    requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(count))
    with RawClient(server.port, timeout=30) as client:
        sender = threading.Thread(target=client.sock.sendall, args=(requests,))
        sender.start()
        for i in range(count):
            assert client.read_response().body == b"/%d" % i
        sender.join(10)


# ---------------------------------------------------------------------------------------------------- concurrency


def test_requests_past_the_concurrency_limit_get_503(run_server: Any, loop: str) -> None:
    release = Gate()
    started = Gate()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await hello(scope, receive, send)

    server = run_server(slow, loop=loop, limit_concurrency=1)
    with RawClient(server.port) as first:
        first.send(GET)
        started.wait_sync()
        status, headers, _ = refused(server.port, GET)
        assert status == 503 and (b"retry-after", b"1") in headers
        release.set()
        assert first.read_response().status == 200
    served_normally(server.port)


# ---------------------------------------------------------------------------------------------------- connections


def answered(clients: list[RawClient], count: int) -> list[RawClient]:
    """The first ``count`` clients to be answered (each wait bounded); then none of the others for a moment."""
    found: list[RawClient] = []
    while len(found) < count:
        ready, _, _ = select.select([c.sock for c in clients if c not in found], [], [], 5)
        assert ready, "no answer"
        found += [c for c in clients if c.sock in ready]
    assert len(found) == count
    others = [c.sock for c in clients if c not in found]
    if others:
        ready, _, _ = select.select(others, [], [], 0.3)
        assert not ready, "more clients were answered than the limit allows"
    return found


@pytest.mark.parametrize("opened", [3, 12])
def test_connections_past_the_limit_wait_in_the_backlog(run_server: Any, loop: str, opened: int) -> None:
    server = run_server(hello, loop=loop, limit_connections=2, timeout_keep_alive=30)
    clients = [RawClient(server.port) for _ in range(opened)]  # the kernel completes every TCP handshake
    try:
        for client in clients:
            client.send(GET)
        served = answered(clients, 2)  # as many as the limit; the others wait, unanswered
        for client in served:
            assert client.read_response().status == 200
        waiting = [c for c in clients if c not in served]
        while waiting:
            served.pop(0).close()  # each connection that closes lets one more in
            now = answered(waiting, 1)[0]
            assert now.read_response().status == 200
            waiting.remove(now)
            served.append(now)
    finally:
        for client in clients:
            client.close()


def test_under_churn_every_connection_past_the_limit_is_served_in_turn(run_server: Any, loop: str) -> None:
    # Connections close while others are being accepted and set up: none is lost on the way (each is answered),
    # and the server never answers more than the limit at once.
    server = run_server(hello, loop=loop, limit_connections=2, timeout_keep_alive=30)
    pending = [RawClient(server.port) for _ in range(40)]
    try:
        for client in pending:
            client.send(GET)
        answered_count = 0
        while pending:
            ready, _, _ = select.select([c.sock for c in pending], [], [], 5)
            assert ready, f"no answer ({answered_count} of 40 answered)"
            assert len(ready) <= 2
            for client in [c for c in pending if c.sock in ready]:
                assert client.read_response().status == 200
                client.close()
                pending.remove(client)
                answered_count += 1
    finally:
        for client in pending:
            client.close()


def test_tls_handshakes_in_progress_count_against_the_connection_limit(run_server: Any, loop: str, ca: trustme.CA,
                                                                      tmp_path: Any) -> None:
    server = run_server(hello, loop=loop, limit_connections=1, timeout_tls_handshake=30, **tls_files(ca, tmp_path))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:  # never starts its handshake
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        raw.setblocking(False)
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        try:
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()  # sends its ClientHello
            ready, _, _ = select.select([tls], [], [], 0.3)
            assert not ready, "a second connection was set up past --limit-connections 1"
            silent.close()  # the slot frees: the waiting connection is accepted and its handshake completes
            tls.setblocking(True)
            tls.settimeout(5)
            tls.do_handshake()
            tls.sendall(GET)
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        finally:
            tls.close()


class StateServer(ServerThread):
    """A server whose ServerContext the test can look at (through ``prepare``)."""

    def _run(self) -> None:
        from tidegate.runner import new_event_loop
        from tidegate.runtime.server import serve

        loop = new_event_loop(self.loop_kind)
        self.loop = loop
        asyncio.set_event_loop(loop)

        def prepare(state: Any) -> None:
            self.state = state

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.app, self.config, shutdown_trigger=self._stop.wait, on_started=self._on_started,
                        prepare=prepare)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()
            loop.close()

    def call(self, function: Any) -> Any:
        """Run ``function()`` on the server's loop and return its result."""
        assert self.loop is not None
        result: list[Any] = []
        done = threading.Event()

        def run() -> None:
            result.append(function())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)
        return result[0]


def test_shutdown_with_connections_waiting_past_the_limit() -> None:
    server = StateServer(hello, limit_connections=1).start()
    try:
        clients = [RawClient(server.port) for _ in range(4)]
        clients[0].send(GET)
        assert clients[0].read_response().status == 200
        # every connection is registered (parked or in the backlog), only one is served
        assert server.call(lambda: len(server.state.connections)) >= 1
    finally:
        server.stop()
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------------------------------- WebSocket


def test_a_websocket_the_app_does_not_answer_in_time_gets_503(run_server: Any, loop: str) -> None:
    seen: list[str] = []
    done = Gate()

    async def undecided(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await hello(scope, receive, send)
        seen.append((await receive())["type"])  # websocket.connect, then no answer for a while
        seen.append((await receive())["type"])
        try:
            await send({"type": "websocket.accept"})
        except OSError as exc:
            seen.append(type(exc).__name__)
        done.set()

    server = run_server(undecided, loop=loop, timeout_ws_handshake=0.3)
    with RawClient(server.port) as client:
        client.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert client.read_response().status == 503
        client.wait_closed()
    done.wait_sync()
    assert seen == ["websocket.connect", "websocket.disconnect", "ClientDisconnected"]
    served_normally(server.port)


# ---------------------------------------------------------------------------------------------------- HTTP/2


def h2_response(client: Any, stream_id: int) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """Status, headers and body of a stream's answer, and whether the stream was reset after it."""
    import h2.events

    client.until(lambda e: isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == stream_id)
    mine = [e for e in client.events if getattr(e, "stream_id", None) == stream_id]
    heads = [e for e in mine if isinstance(e, h2.events.ResponseReceived)]
    headers = heads[0].headers if heads else []
    status = int(dict(headers)[b":status"]) if heads else 0
    body = b"".join(e.data for e in mine if isinstance(e, h2.events.DataReceived))
    return status, headers, body, any(isinstance(e, h2.events.StreamReset) for e in mine)


def test_http2_body_past_the_limit_gets_413(run_server: Any) -> None:
    from .test_e2e_http2 import H2Client

    app = Recorder()
    server = run_server(app, limit_request_body=1000)
    client = H2Client(server.port)
    try:
        stream_id = client.request("/", "POST", body=b"x" * 1500)
        status, _, _, _ = h2_response(client, stream_id)
        assert status == 413
        assert app.finished.wait(5) and app.kinds[-1] == "http.disconnect"
        ok = client.request("/", "POST", body=b"y" * 1000)
        assert h2_response(client, ok)[:1] == (200,)  # the connection goes on
    finally:
        client.close()


def test_http2_stalled_body_gets_408(run_server: Any) -> None:
    from .test_e2e_http2 import H2Client

    app = Recorder()
    server = run_server(app, timeout_request_body=0.3)
    client = H2Client(server.port)
    try:
        stream_id = client.request("/", "POST", body=b"abc", end=False)
        status, _, _, _ = h2_response(client, stream_id)
        assert status == 408
        assert app.finished.wait(5) and app.kinds[-1] == "http.disconnect"
    finally:
        client.close()


def test_http2_requests_past_the_concurrency_limit_get_503(run_server: Any) -> None:
    from .test_e2e_http2 import H2Client

    release = Gate()
    started = Gate()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await hello(scope, receive, send)

    server = run_server(slow, limit_concurrency=1)
    client = H2Client(server.port)
    try:
        first = client.request("/")
        started.wait_sync()
        second = client.request("/")
        status, headers, _, _ = h2_response(client, second)
        assert status == 503 and (b"retry-after", b"1") in headers
        release.set()
        assert h2_response(client, first)[0] == 200
    finally:
        client.close()


def test_http2_stream_whose_client_gives_no_window_is_reset(run_server: Any) -> None:
    from .test_e2e_http2 import H2Client

    outcome: list[str] = []
    done = Gate()

    async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(100):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            outcome.append("all sent")
        except OSError as exc:
            outcome.append(type(exc).__name__)
        finally:
            done.set()

    server = run_server(streamer, timeout_write=0.3)
    client = H2Client(server.port, auto_ack=False)  # takes the data, never opens the window again
    try:
        stream_id = client.request("/")
        done.wait_sync(10)
        assert outcome == ["ClientDisconnected"]
        assert h2_response(client, stream_id)[3]  # the stream was reset
    finally:
        client.close()


def test_a_websocket_client_that_does_not_read_is_dropped(run_server: Any, loop: str) -> None:
    outcome: list[str] = []
    done = Gate()

    async def flood(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            for _ in range(10_000):
                await send({"type": "websocket.send", "bytes": b"x" * 65536})
            outcome.append("all sent")
        except OSError as exc:
            outcome.append(type(exc).__name__)
        finally:
            done.set()

    server = run_server(flood, loop=loop, timeout_write=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        done.wait_sync(10)  # reads nothing more
    assert outcome == ["ClientDisconnected"]


def test_a_websocket_counts_against_the_connection_limit_once(run_server: Any, loop: str) -> None:
    # the HTTP/1.1 connection hands itself over to the WebSocket driver: one connection, counted once, never held
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
            return
        await hello(scope, receive, send)

    server = run_server(app, loop=loop, limit_connections=2, timeout_keep_alive=30)
    ws = RawClient(server.port)
    ws.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert ws.read_head()[1] == 101
    clients = [RawClient(server.port) for _ in range(2)]
    try:
        for client in clients:
            client.send(GET)
        (first,) = answered(clients, 1)  # the WebSocket and one more: the limit
        assert first.read_response().status == 200
        ws.close()  # the WebSocket's connection closes: the one waiting comes in
        (second,) = answered([c for c in clients if c is not first], 1)
        assert second.read_response().status == 200
    finally:
        ws.close()
        for client in clients:
            client.close()

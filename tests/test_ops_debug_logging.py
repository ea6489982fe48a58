"""--log-level debug (each connection's open, protocol and close lines) and trace (every ASGI message)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import h2.events
import httpx
import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from tidegate.log import TRACE
from tidegate.middleware.trace import TraceMiddleware, message_text, tracing

from .conftest import LogRecords, RawClient
from .ops_helpers import Proc, serving_url
from .test_e2e_http2 import H2Client
from .test_e2e_websocket_h2 import WSOverH2

TIMEOUT = 10.0

asgi_logger = logging.getLogger("tidegate.asgi")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the client's port (and echoes a WebSocket's text messages)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    body = json.dumps({"port": scope["client"][1], "http_version": scope["http_version"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"session=secret")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def trace_level() -> Iterator[None]:
    """tidegate.asgi at TRACE for the test (as --log-level trace sets it), put back afterwards."""
    saved = asgi_logger.level
    asgi_logger.setLevel(TRACE)
    yield
    asgi_logger.setLevel(saved)


@pytest.fixture
def trace_logs(logs: LogRecords, trace_level: None) -> LogRecords:
    """The ``logs`` capture, TRACE records included."""
    logs.setLevel(TRACE)
    return logs


def lines_of(logs: LogRecords, client_port: int) -> list[str]:
    """The server's lines about the connection from ``client_port``."""
    return [m for m in logs.messages("tidegate.error") if m.startswith(f"127.0.0.1:{client_port} - ")]


def wait_closed_line(logs: LogRecords, client_port: int) -> str:
    prefix = f"127.0.0.1:{client_port} - connection closed"
    return logs.wait_for(lambda r: r.getMessage().startswith(prefix), timeout=TIMEOUT).getMessage()


def wait_returned(logs: LogRecords, label: str) -> None:
    """Wait for the trace line saying the app of the scope ``label`` begins with returned."""
    logs.wait_for(lambda r: r.getMessage().startswith(label) and r.getMessage().endswith(" app returned"),
                  timeout=TIMEOUT)


# ---------------------------------------------------------------------------------------------------- debug


def test_http11_connection_lines(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app)
    with httpx.Client(timeout=TIMEOUT) as client:
        port = client.get(server.url + "/a").json()["port"]
        assert client.get(server.url + "/b").json()["port"] == port
    closed = wait_closed_line(logs, port)
    lines = lines_of(logs, port)
    assert lines[0] == f"127.0.0.1:{port} - connection opened on 127.0.0.1:{server.port} (cleartext)"
    assert lines[1] == f"127.0.0.1:{port} - protocol: HTTP/1.1"
    assert closed.endswith(": client closed") and "connection closed after " in closed
    assert lines[-1] == closed and len(lines) == 3
    assert all(r.levelno == logging.DEBUG for r in logs.records if r.getMessage() in lines)


def test_keep_alive_timeout_is_the_reason(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app, timeout_keep_alive=0.2)
    with RawClient(server.port) as client:
        client.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        port = json.loads(client.read_response().body)["port"]
        client.wait_closed()
    assert wait_closed_line(logs, port).endswith(": keep-alive timeout")


def test_http2_prior_knowledge_lines(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app)
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        answers = [client.get(f"{server.url}/{n}").json() for n in range(3)]
    port = answers[0]["port"]
    assert answers[0]["http_version"] == "2" and {a["port"] for a in answers} == {port}
    closed = wait_closed_line(logs, port)
    lines = lines_of(logs, port)
    assert lines[:3] == [f"127.0.0.1:{port} - connection opened on 127.0.0.1:{server.port} (cleartext)",
                         f"127.0.0.1:{port} - protocol: HTTP/1.1",
                         f"127.0.0.1:{port} - protocol: HTTP/2 with prior knowledge"]
    assert ", 3 streams: " in closed


def test_http2_only_listener(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app, http="2")
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        port = client.get(server.url).json()["port"]
    wait_closed_line(logs, port)
    assert lines_of(logs, port)[1] == f"127.0.0.1:{port} - protocol: HTTP/2 with prior knowledge (--http 2)"


def test_h2c_upgrade_line(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app)
    with RawClient(server.port) as client:
        client.send(b"GET /up?x=1 HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                    b"http2-settings: \r\n\r\n")
        assert client.read_head()[1] == 101
    record = logs.wait_for(lambda r: "h2c" in r.getMessage(), timeout=TIMEOUT)
    assert record.getMessage().endswith(" - protocol: HTTP/2 by h2c upgrade (GET /up?x=1)")


def test_websocket_lines(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app)
    with ws_connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
        port = ws.local_address[1]
    closed = wait_closed_line(logs, port)
    lines = lines_of(logs, port)
    assert lines[:3] == [f"127.0.0.1:{port} - connection opened on 127.0.0.1:{server.port} (cleartext)",
                         f"127.0.0.1:{port} - protocol: HTTP/1.1",
                         f"127.0.0.1:{port} - protocol: WebSocket over HTTP/1.1 (GET /chat)"]
    assert closed.endswith(": after the closing handshake")


def test_websocket_over_http2_line(run_server: Any, logs: LogRecords) -> None:
    server = run_server(app)
    client = H2Client(server.port)
    try:
        client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        ws = WSOverH2(client, "/room")
        assert dict(ws.response())[b":status"] == b"200"
        port = client.sock.getsockname()[1]
        record = logs.wait_for(lambda r: "WebSocket over HTTP/2" in r.getMessage(), timeout=TIMEOUT)
        assert record.getMessage() == f"127.0.0.1:{port} - protocol: WebSocket over HTTP/2 (stream 1, /room)"
    finally:
        client.close()
    assert ": " in wait_closed_line(logs, port)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_connection_lines(run_server: Any, logs: LogRecords, ca: trustme.CA, tmp_path: Any) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    server = run_server(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"https://localhost:{server.port}/"
    for http2, protocol in ((True, "HTTP/2 by ALPN"), (False, "HTTP/1.1 by ALPN")):
        with httpx.Client(verify=context, http2=http2, timeout=TIMEOUT) as client:
            port = client.get(url).json()["port"]
        wait_closed_line(logs, port)
        opened, chosen = lines_of(logs, port)[:2]
        alpn = "h2" if http2 else "http/1.1"
        assert opened.startswith(f"127.0.0.1:{port} - connection opened on 127.0.0.1:{server.port} (TLSv1.")
        assert opened.endswith(f", ALPN {alpn})")
        assert chosen == f"127.0.0.1:{port} - protocol: {protocol}"


def test_info_level_logs_none_of_it(run_server: Any, trace_logs: LogRecords) -> None:
    logging.getLogger("tidegate.error").setLevel(logging.INFO)
    logging.getLogger("tidegate").setLevel(logging.INFO)
    asgi_logger.setLevel(logging.NOTSET)  # from tidegate: INFO
    assert not tracing()
    server = run_server(app)
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 200
    with ws_connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=TIMEOUT) as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    server.stop()
    assert not [r for r in trace_logs.records if r.levelno < logging.INFO]
    assert not [m for m in trace_logs.messages() if "connection opened" in m or "protocol:" in m or "{'type'" in m]


# ---------------------------------------------------------------------------------------------------- trace


def test_trace_over_a_real_server(run_server: Any, trace_logs: LogRecords) -> None:
    server = run_server(app, lifespan="on")
    with httpx.Client(timeout=TIMEOUT) as client:
        port = client.post(server.url + "/a%0A127.0.0.1%20-%20forged?q=1", content=b"x" * 1500).json()["port"]
    label = f'127.0.0.1:{port} - "POST /a\\n127.0.0.1 - forged?q=1" #'
    wait_returned(trace_logs, label)
    traced = [r for r in trace_logs.records if r.name == "tidegate.asgi"]
    assert all(r.levelno == TRACE for r in traced)
    mine = [r.getMessage()[len(label):].split(" ", 1)[1] for r in traced if r.getMessage().startswith(label)]
    assert mine[0].startswith("scope {'type': 'http', ") and "'method': 'POST'" in mine[0]
    received = [m for m in mine if m.startswith("receive ")]
    assert sum(int(m.split("'body': <")[1].split(" bytes>")[0]) for m in received) == 1500
    assert received[-1].endswith("'more_body': False}")
    assert mine[-3].startswith("send {'type': 'http.response.start', 'status': 200, 'headers': [")
    assert "(b'set-cookie', <hidden>)" in mine[-3] and "secret" not in mine[-3]
    assert mine[-2].startswith("send {'type': 'http.response.body', 'body': <") and mine[-1] == "app returned"
    assert not [r for r in traced if "\n" in r.getMessage()]
    assert [m for m in trace_logs.messages("tidegate.asgi") if m.startswith("lifespan #1 receive {'type': "
                                                                       "'lifespan.startup'}")]


def test_trace_of_a_websocket(run_server: Any, trace_logs: LogRecords) -> None:
    server = run_server(app)
    with ws_connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
        port = ws.local_address[1]
    label = f'127.0.0.1:{port} - "WebSocket /chat" #'
    wait_returned(trace_logs, label)
    mine = [m.split(" ", 5)[-1] for m in trace_logs.messages("tidegate.asgi") if m.startswith(label)]
    assert mine[1:] == ["receive {'type': 'websocket.connect'}", "send {'type': 'websocket.accept'}",
                        "receive {'type': 'websocket.receive', 'text': <5 chars>}",
                        "send {'type': 'websocket.send', 'text': <5 chars>}",
                        "receive {'type': 'websocket.disconnect', 'code': 1000, 'reason': ''}", "app returned"]


def test_trace_from_the_command_line() -> None:
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-level", "trace"])
    try:
        url = serving_url(proc)
        start = proc.mark()
        with httpx.Client(timeout=TIMEOUT) as client:
            assert client.get(url + "/").status_code == 200
        proc.wait_for(r"DEBUG +127\.0\.0\.1:\d+ - connection opened on ", start=start)
        proc.wait_for(r"DEBUG +127\.0\.0\.1:\d+ - protocol: HTTP/1\.1$", start=start)
        proc.wait_for(r"""TRACE +127\.0\.0\.1:\d+ - "GET /" #\d+ send \{'type': 'http\.response\.body', 'body': <\d+ """
                      r"bytes>", start=start)
        proc.wait_for(r"DEBUG +127\.0\.0\.1:\d+ - connection closed after \d+\.\d{3}s: client closed", start=start)
    finally:
        proc.stop()


def test_debug_from_the_command_line_has_no_trace() -> None:
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-level", "debug"])
    try:
        url = serving_url(proc)
        start = proc.mark()
        with httpx.Client(timeout=TIMEOUT) as client:
            assert client.get(url + "/").status_code == 200
        proc.wait_for(r"DEBUG +127\.0\.0\.1:\d+ - connection closed after ", start=start)
    finally:
        proc.stop()
    assert "TRACE" not in proc.output


# ---------------------------------------------------------------------------------------------------- the middleware


def run_traced(inner: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
    """Drive TraceMiddleware(inner) with fake receive/send; what reached send."""
    sent: list[Any] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(TraceMiddleware(inner)(scope, receive, send))
    return sent


HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/items", "query_string": b"", "http_version": "1.1",
              "client": ("10.0.0.7", 4242), "headers": [(b"authorization", b"Bearer token"), (b"accept", b"*/*")],
              "state": {"db": object()}, "extensions": {"http.response.trailers": {}}}


async def echo(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]})
    await send({"type": "http.response.body", "body": message["body"] * 1024, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_middleware_lines_and_messages_untouched(trace_logs: LogRecords) -> None:
    sent = run_traced(echo, HTTP_SCOPE, [{"type": "http.request", "body": b"x", "more_body": False}])
    assert sent[1] == {"type": "http.response.body", "body": b"x" * 1024, "more_body": True}
    label = '10.0.0.7:4242 - "GET /items" #1 '
    messages = trace_logs.messages("tidegate.asgi")
    assert messages[0] == label + (
        "scope {'type': 'http', 'method': 'GET', 'path': '/items', 'query_string': b'', 'http_version': '1.1', "
        "'client': ('10.0.0.7', 4242), 'headers': [(b'authorization', <hidden>), (b'accept', b'*/*')], "
        "'state': <1 items>, 'extensions': ['http.response.trailers']}")
    assert messages[1:] == [
        label + "receive {'type': 'http.request', 'body': <1 bytes>, 'more_body': False}",
        label + "send {'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'1024')]}",
        label + "send {'type': 'http.response.body', 'body': <1024 bytes>, 'more_body': True}",
        label + "send {'type': 'http.response.body', 'body': <0 bytes>}",
        label + "app returned",
    ]


def test_middleware_escapes_request_data(trace_logs: LogRecords) -> None:
    scope = {**HTTP_SCOPE, "method": "GET\x1b[31m", "path": "/x\n10.0.0.1 - forged", "query_string": b"a=\r",
             "headers": [(b"x-note", b"a\nb")]}
    run_traced(echo, scope, [{"type": "http.request", "body": b"", "more_body": False}])
    messages = trace_logs.messages("tidegate.asgi")
    assert messages and not [m for m in messages if "\n" in m or "\r" in m or "\x1b" in m]
    assert messages[0].startswith('10.0.0.7:4242 - "GET\\x1b[31m /x\\n10.0.0.1 - forged?a=\\r" #1 scope ')
    assert "(b'x-note', b'a\\nb')" in messages[0]


def test_middleware_app_failure_is_traced_and_raised(trace_logs: LogRecords) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("broken\nline")

    with pytest.raises(ValueError, match="broken"):
        run_traced(failing, HTTP_SCOPE, [])
    last = trace_logs.messages("tidegate.asgi")[-1]
    assert last == '10.0.0.7:4242 - "GET /items" #1 app raised ValueError: broken\\nline'


def test_middleware_websocket_and_lifespan_labels(trace_logs: LogRecords) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if scope["type"] == "websocket":
            await send({"type": "websocket.send", "bytes": b"\x00" * 3, "text": None})
        else:
            await send({"type": message["type"] + ".complete"})

    traced = TraceMiddleware(inner)

    async def main() -> None:
        async def nothing(message: Any) -> None:
            pass

        async def text() -> dict[str, Any]:
            return {"type": "websocket.receive", "text": "héllo"}

        async def startup() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        await traced({"type": "websocket", "path": "/ws", "client": None}, text, nothing)
        await traced({"type": "lifespan", "state": {}}, startup, nothing)

    asyncio.run(main())
    assert trace_logs.messages("tidegate.asgi") == [
        "- - \"WebSocket /ws\" #1 scope {'type': 'websocket', 'path': '/ws', 'client': None}",
        "- - \"WebSocket /ws\" #1 receive {'type': 'websocket.receive', 'text': <5 chars>}",
        "- - \"WebSocket /ws\" #1 send {'type': 'websocket.send', 'bytes': <3 bytes>, 'text': None}",
        "- - \"WebSocket /ws\" #1 app returned",
        "lifespan #2 scope {'type': 'lifespan', 'state': <0 items>}",
        "lifespan #2 receive {'type': 'lifespan.startup'}",
        "lifespan #2 send {'type': 'lifespan.startup.complete'}",
        "lifespan #2 app returned",
    ]


def test_message_text_leaves_iterators_alone() -> None:
    headers = iter([(b"a", b"1")])
    assert message_text({"type": "http.response.start", "headers": headers}) == (
        "{'type': 'http.response.start', 'headers': <list_iterator>}")
    assert list(headers) == [(b"a", b"1")]
    assert message_text(["not", "a", "dict"]) == "['not', 'a', 'dict']"
    assert message_text({"headers": [("Cookie", "c=1"), (b"x",)]}) == "{'headers': [('Cookie', <hidden>), (b'x',)]}"


def test_tracing_follows_the_level(trace_level: None) -> None:
    assert tracing()
    asgi_logger.setLevel(logging.DEBUG)
    assert not tracing()

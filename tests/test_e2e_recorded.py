"""Every response is recorded: an access line and a metrics count for the app's responses, the server's own answers
(400, 408, 413, 414, 431, 501, 503, 500) and responses cut short (by the client, or by the app failing mid-body), on
HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import h2.events
from h2.errors import ErrorCodes

from tidegate.metrics import Metrics

from .test_e2e_http2 import H2Client, status

TIMEOUT = 10.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom before the response")
    if path == "/stream":
        # a first piece, then more until the client has gone
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        await send({"type": "http.response.body", "body": b"y" * 1000, "more_body": True})
        return
    if path == "/fail-mid-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"z" * 500, "more_body": True})
        raise RuntimeError("boom after the body started")
    if path == "/wait":
        # nothing is answered until the client has gone
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    out = b""
    while marker not in out:
        chunk = sock.recv(65536)
        assert chunk, out
        out += chunk
    return out


def access_lines(logs: Any, count: int) -> list[str]:
    logs.wait_for(lambda r: len(logs.messages("tidegate.access")) >= count, timeout=TIMEOUT)
    return logs.messages("tidegate.access")


def test_http1_server_answers_get_a_line_and_a_count(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, limit_request_line=100, limit_request_headers=200,
                        limit_request_body=10, timeout_request_header=0.3)
    sent = {
        400: exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"),
        414: exchange(server.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
        431: exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"b" * 300 + b"\r\n\r\n"),
        413: exchange(server.port, b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 99\r\n\r\n"),
        408: exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n"),
        500: exchange(server.port, b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    }
    lines = access_lines(logs, len(sent))
    for code, response in sent.items():
        assert response.startswith(b"HTTP/1.1 %d " % code)
        body = response.partition(b"\r\n\r\n")[2]
        assert any(f" {code} {len(body)} " in line for line in lines), (code, lines)
    assert '"POST /upload HTTP/1.1" 413' in "\n".join(lines)
    assert '"GET /boom HTTP/1.1" 500' in "\n".join(lines)
    snapshot = metrics.snapshot()
    assert snapshot["requests"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 5, "5xx": 1}
    # the next client is served, and counted
    assert exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").endswith(b"ok")
    access_lines(logs, len(sent) + 1)
    assert metrics.snapshot()["requests"]["2xx"] == 1


def test_a_503_under_the_concurrency_limit_is_counted(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, limit_concurrency=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as held:
        held.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        # the held request is in progress once a second one is refused
        for _ in range(100):
            if exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").startswith(b"HTTP/1.1 503 "):
                break
        else:
            raise AssertionError("no 503")
    lines = access_lines(logs, 2)
    assert any('"GET / HTTP/1.1" 503 ' in line for line in lines), lines
    assert metrics.snapshot()["requests"]["5xx"] >= 1


def test_http1_client_gone_mid_body_is_logged_cut(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, b"x" * 100)
    [line] = access_lines(logs, 1)
    # the status sent, the body bytes written for it, then "-": the response did not complete
    assert '"GET /stream HTTP/1.1" 200 ' in line and line.endswith(" -"), line
    sent = int(line.split('" 200 ')[1].split()[0])
    assert 1000 <= sent <= 2000
    snapshot = metrics.snapshot()
    assert snapshot["requests"]["2xx"] == 1 and snapshot["responses_cut"] == 1


def test_http1_client_gone_before_any_response_is_499(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, access_log_json=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
    record = json.loads(access_lines(logs, 1)[0])
    assert (record["path"], record["status"], record["bytes"], record["completed"]) == ("/wait", 499, 0, False)
    snapshot = metrics.snapshot()
    assert snapshot["requests"]["4xx"] == 1 and snapshot["responses_cut"] == 1


def test_an_app_failing_mid_body_is_logged_cut_with_the_bytes_sent(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, access_log_format="{status} {bytes} {completion}")
    response = exchange(server.port, b"GET /fail-mid-body HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ") and b"z" * 500 in response
    lines = access_lines(logs, 1)
    assert lines == ["200 500 -"]
    assert metrics.snapshot()["responses_cut"] == 1


def test_complete_responses_say_ok(run_server: Any, logs: Any) -> None:
    server = run_server(app, access_log=True, access_log_format="{status} {bytes} {completion}")
    exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert access_lines(logs, 1) == ["200 2 OK"]


def connect_h2(port: int) -> H2Client:
    client = H2Client(port)
    client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    return client


def test_http2_server_answers_get_a_line_and_a_count(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, h2_max_header_list_size=4096, limit_request_body=10)
    client = connect_h2(server.port)
    try:
        too_big = client.request("/big-head", headers=[(b"x-big", b"a" * 5000)])
        assert status(client.response(too_big)[0]) == 431
        tunnel = client.conn.get_next_available_stream_id()
        client.conn.send_headers(tunnel, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
                                 end_stream=True)
        client.flush()
        assert status(client.response(tunnel)[0]) == 400
        body = client.request("/upload", method="POST", body=b"b" * 100)
        assert status(client.response(body)[0]) == 413
        failing = client.request("/boom")
        headers, failed_body = client.response(failing)
        assert status(headers) == 500
        assert status(client.response(client.request("/"))[0]) == 200
    finally:
        client.close()
    lines = access_lines(logs, 5)
    text = "\n".join(lines)
    assert '"GET /big-head HTTP/2" 431 ' in text
    assert '"CONNECT example.com:443 HTTP/2" 400 ' in text
    assert '"POST /upload HTTP/2" 413 ' in text
    assert f'"GET /boom HTTP/2" 500 {len(failed_body)} ' in text
    assert metrics.snapshot()["requests"] == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 3, "5xx": 1}


def test_http2_503_under_the_concurrency_limit(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, limit_concurrency=1)
    client = connect_h2(server.port)
    try:
        held = client.request("/wait")
        refused = client.request("/second")
        assert status(client.response(refused)[0]) == 503
        client.conn.reset_stream(held, ErrorCodes.CANCEL)
        client.flush()
        lines = access_lines(logs, 2)
    finally:
        client.close()
    text = "\n".join(lines)
    assert '"GET /second HTTP/2" 503 ' in text
    assert '"GET /wait HTTP/2" 499 0 ' in text and text.count(" -") >= 1
    snapshot = metrics.snapshot()
    assert snapshot["requests"]["5xx"] == 1 and snapshot["requests"]["4xx"] == 1
    assert snapshot["responses_cut"] == 1


def test_http2_stream_reset_mid_body_is_logged_cut(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True)
    client = connect_h2(server.port)
    try:
        stream_id = client.request("/stream")
        client.until(lambda e: isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id)
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.flush()
        [line] = access_lines(logs, 1)
    finally:
        client.close()
    assert '"GET /stream HTTP/2" 200 ' in line and line.endswith(" -"), line
    assert metrics.snapshot()["responses_cut"] == 1


def test_cut_responses_are_recorded_once_at_a_forced_shutdown(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=True, timeout_graceful_shutdown=0.2)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    try:
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        waiter = threading.Thread(target=server.stop)
        waiter.start()
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
    finally:
        sock.close()
    lines = access_lines(logs, 1)
    assert len(lines) == 1 and '"GET /wait HTTP/1.1" 499 0 ' in lines[0] and lines[0].endswith(" -"), lines
    assert metrics.snapshot()["responses_cut"] == 1


def test_metrics_alone_record_without_an_access_log(run_server: Any, logs: Any) -> None:
    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=False)
    exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
    # nothing to wait for: each was recorded before its connection closed
    assert metrics.snapshot()["requests"]["2xx"] == 1 and metrics.snapshot()["requests"]["4xx"] == 1
    assert logs.messages("tidegate.access") == []


def test_the_request_of_an_h2c_upgrade_is_timed_with_metrics_alone(run_server: Any) -> None:
    # its duration starts at its head, access log or not (a start of 0 would count the whole uptime)
    import h2.config
    import h2.connection

    metrics = Metrics()
    server = run_server(app, metrics=metrics, access_log=False)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = client.initiate_upgrade_connection()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: " + settings + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        sock.sendall(client.data_to_send())
        events = client.receive_data(data.partition(b"\r\n\r\n")[2])
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            chunk = sock.recv(65536)
            assert chunk
            events += client.receive_data(chunk)
    snapshot = metrics.snapshot()
    assert snapshot["requests"]["2xx"] == 1
    assert snapshot["duration_sum"] < 10.0

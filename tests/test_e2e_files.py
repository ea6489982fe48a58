"""Files as response bodies: ``http.response.pathsend`` and ``http.response.zerocopysend``.

On cleartext HTTP/1.1 the bytes go with ``os.sendfile`` (counted here by wrapping it); over TLS and HTTP/2 they are
read and written in pieces.  Either way a client that reads slowly gets every byte, one that never reads is dropped
after ``--timeout-write``, and the server's memory does not hold the file (RSS of a real process)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tidegate.asgi.errors import ASGIError
from tidegate.asgi.http import HTTPExchange, Stream
from tidegate.protocol.events import ProtocolError, Request
from tidegate.protocol.http1 import H1Connection, ResponseDefaults

from .ops_helpers import Proc
from .test_e2e_http2 import H2Client, status

TIMEOUT = 20.0
SIZE = 5 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes sent by each os.sendfile() call the server makes (it runs in this process)."""
    calls: list[int] = []
    real = os.sendfile

    def counted(out: int, in_: int, offset: int | None, count: int) -> int:
        sent = real(out, in_, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counted)
    return calls


def file_app(path: Path) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        where = scope["path"]
        assert "http.response.pathsend" in scope["extensions"]
        assert "http.response.zerocopysend" in scope["extensions"]
        if where == "/path":  # as Starlette's FileResponse does: the length, then the path
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(SIZE).encode())]})
            await send({"type": "http.response.pathsend", "path": str(path)})
        elif where == "/path-no-length":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": str(path)})
        elif where == "/pieces":  # no length: chunked; a range, then the rest from the file's position, then bytes
            await send({"type": "http.response.start", "status": 200, "headers": []})
            with open(path, "rb") as file:
                await send({"type": "http.response.zerocopysend", "file": file, "offset": 10, "count": 1000,
                            "more_body": True})
                file.seek(2000)
                await send({"type": "http.response.zerocopysend", "file": file.fileno(), "count": 3000,
                            "more_body": True})
                assert file.tell() == 5000  # the file's position moved past what was sent
                await send({"type": "http.response.body", "body": b"<end>", "more_body": True})
                await send({"type": "http.response.zerocopysend", "file": file, "more_body": False})
        elif where == "/relative":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": "relative/file"})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})

    return app


def expected_pieces(data: bytes) -> bytes:
    return data[10:1010] + data[2000:5000] + b"<end>" + data[5000:]


def test_pathsend_over_cleartext_http1_uses_sendfile(run_server: Any, big_file: Path,
                                                     sendfile_calls: list[int]) -> None:
    server = run_server(file_app(big_file))
    data = big_file.read_bytes()
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(server.url + "/path")
        assert response.status_code == 200 and response.content == data
        # without a content-length from the app, the server gives one (the file's size is known)
        response = client.get(server.url + "/path-no-length")
        assert response.headers["content-length"] == str(SIZE) and response.content == data
        assert client.get(server.url + "/pieces").content == expected_pieces(data)
        head = client.head(server.url + "/path")
        assert head.headers["content-length"] == str(SIZE) and head.content == b""
        # the connection carried them all, and goes on
        assert client.get(server.url + "/other").status_code == 404
    assert sum(sendfile_calls) == 2 * SIZE + 1000 + 3000 + (SIZE - 5000)


def test_a_relative_path_fails_the_request(run_server: Any, big_file: Path) -> None:
    server = run_server(file_app(big_file))
    assert httpx.get(server.url + "/relative", timeout=TIMEOUT).status_code == 500


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    return ca, str(certfile), str(keyfile)


def test_over_tls_the_file_is_read_and_written(run_server: Any, big_file: Path, sendfile_calls: list[int],
                                               certificate: tuple[trustme.CA, str, str]) -> None:
    ca, certfile, keyfile = certificate
    server = run_server(file_app(big_file), ssl_certfile=certfile, ssl_keyfile=keyfile)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    data = big_file.read_bytes()
    url = f"https://127.0.0.1:{server.port}"
    with httpx.Client(timeout=TIMEOUT, verify=context) as client:
        assert client.get(url + "/path").content == data
        assert client.get(url + "/pieces").content == expected_pieces(data)
    with httpx.Client(timeout=TIMEOUT, verify=context, http2=True) as client:
        response = client.get(url + "/path-no-length")
        assert response.http_version == "HTTP/2" and response.content == data
    assert sendfile_calls == []


def test_over_http2_the_file_goes_under_flow_control(run_server: Any, big_file: Path,
                                                     sendfile_calls: list[int]) -> None:
    server = run_server(file_app(big_file))
    client = H2Client(server.port)
    try:
        headers, body = client.response(client.request("/pieces"))
        assert status(headers) == 200 and body == expected_pieces(big_file.read_bytes())
        headers, body = client.response(client.request("/path"))
        assert hashlib.sha256(body).digest() == hashlib.sha256(big_file.read_bytes()).digest()
    finally:
        client.close()
    assert sendfile_calls == []


def test_a_slow_reader_gets_every_byte(run_server: Any, tmp_path: Path, sendfile_calls: list[int]) -> None:
    size = 48 * 1024 * 1024  # more than the socket buffers hold: the server waits for the socket many times
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as out:
        out.seek(size - 3)
        out.write(b"end")
    server = run_server(file_app(sparse))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /path-no-length HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = bytearray()
        while chunk := sock.recv(4096):  # small reads: the server waits for the socket again and again
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"content-length: %d" % size in head.lower()
    assert len(body) == size and body.endswith(b"end") and not body[:-3].strip(b"\0")
    assert len(sendfile_calls) > 1 and sum(sendfile_calls) == size


def test_a_client_that_never_reads_is_dropped_after_the_write_timeout(run_server: Any, big_file: Path,
                                                                      logs: Any) -> None:
    server = run_server(file_app(big_file), access_log=True, timeout_write=0.5)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /path HTTP/1.1\r\nHost: t\r\n\r\n")
        line = logs.wait_for(lambda r: r.name == "tidegate.access", timeout=TIMEOUT).getMessage()
    # cut: the status sent, then "-"
    assert '"GET /path HTTP/1.1" 200 ' in line and line.endswith(" -"), line
    assert any("has not read for 0.5s" in m for m in logs.messages("tidegate.error"))


# ---------------------------------------------------------------------------------------------------- sans-IO


def test_file_framing() -> None:
    written: list[bytes] = []
    conn = H1Connection(ResponseDefaults(server=b"", extra=b""), written.append)
    request = Request(b"GET", b"/", "1.1", [(b"host", b"t")], True, False)
    conn.start_response(request, 200, [])
    before, after, send = conn.file_framing(100, False)
    assert before.endswith(b"transfer-encoding: chunked\r\n\r\n64\r\n") and after == b"\r\n" and send
    before, after, send = conn.file_framing(16, True)
    assert (before, after, send) == (b"10\r\n", b"\r\n0\r\n\r\n", True)
    with pytest.raises(ProtocolError):
        conn.file_framing(1, True)  # the response is complete

    conn = H1Connection(ResponseDefaults(server=b"", extra=b""), written.append)
    conn.start_response(request, 200, [(b"content-length", b"10")])
    assert conn.file_framing(4, False)[1:] == (b"", True)
    with pytest.raises(ProtocolError, match="more body than its content-length"):
        conn.file_framing(7, True)

    conn = H1Connection(ResponseDefaults(server=b"", extra=b""), written.append)
    conn.start_response(Request(b"HEAD", b"/", "1.1", [(b"host", b"t")], True, False), 200, [])
    before, after, send = conn.file_framing(50, True)
    assert before.startswith(b"HTTP/1.1 200 OK\r\n") and before.endswith(b"\r\n\r\n") and not send  # no body


class _Stream(Stream):
    def __init__(self) -> None:
        self.write_paused = False
        self.reading_paused = False
        self.files: list[tuple[int, int, bool]] = []

    def send_head(self, status: int, headers: Any) -> None:
        pass

    async def send_file(self, fd: int, offset: int, count: int, end: bool) -> None:
        self.files.append((offset, count, end))

    def response_done(self) -> None:
        pass

    def response_cut(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.mark.parametrize(("message", "error"), [
    ({"type": "http.response.pathsend", "path": b"/bytes"}, "absolute path"),
    ({"type": "http.response.zerocopysend", "file": "name"}, "open file or a file descriptor"),
    ({"type": "http.response.zerocopysend", "file": 0, "offset": -1}, "'offset' must be a non-negative int"),
    ({"type": "http.response.zerocopysend", "file": 0, "count": 1.5}, "'count' must be a non-negative int"),
])
def test_bad_file_messages_name_their_field(message: dict[str, Any], error: str) -> None:
    import asyncio

    stream = _Stream()
    exchange = HTTPExchange(stream, {"type": "http", "extensions": {}})

    async def go() -> None:
        await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
        await exchange.send(message)

    with pytest.raises(ASGIError, match=error):
        asyncio.run(go())


def test_a_file_before_the_start_is_refused() -> None:
    import asyncio

    exchange = HTTPExchange(_Stream(), {"type": "http", "extensions": {}})
    with pytest.raises(ASGIError, match=r"before 'http\.response\.start'"):
        asyncio.run(exchange.send({"type": "http.response.pathsend", "path": "/x"}))


# ---------------------------------------------------------------------------------------------------- memory

MEMORY_APP = '''
import os

PATH = os.environ["FILE"]


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/rss":
        body = str(rss_kib()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.pathsend", "path": PATH})
'''


@pytest.mark.parametrize("tls", [False, True], ids=["sendfile", "tls-copy"])
def test_clients_that_never_read_do_not_make_the_server_hold_the_file(
        tmp_path: Path, tls: bool, certificate: tuple[trustme.CA, str, str]) -> None:
    size = 32 * 1024 * 1024
    path = tmp_path / "file.bin"
    with open(path, "wb") as out:
        out.truncate(size)  # sparse: 32 MiB on the wire, nothing on the disk
    (tmp_path / "memory_app.py").write_text(MEMORY_APP)
    ca, certfile, keyfile = certificate
    args = ["memory_app:app", "--app-dir", str(tmp_path), "--port", "0", "--no-access-log", "--timeout-write", "60"]
    if tls:
        args += ["--ssl-certfile", certfile, "--ssl-keyfile", keyfile]
    proc = Proc(args, env={"FILE": str(path)})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sockets: list[socket.socket] = []
    try:
        url = proc.wait_for(r"serving on (https?://\S+)").group(1)
        port = int(url.rsplit(":", 1)[1])
        scheme = "https" if tls else "http"

        def rss() -> int:
            with httpx.Client(timeout=TIMEOUT, verify=context) as client:
                return int(client.get(f"{scheme}://127.0.0.1:{port}/rss").text)

        before = rss()
        for _ in range(4):
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
            sockets.append(sock)
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.recv(1)  # the response has started: from now on, this client reads nothing
        # the server is blocked on these clients: its memory stays flat over a while (this observes, it does not
        # wait for an outcome)
        peak = before
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            peak = max(peak, rss())
        grown_mib = (peak - before) / 1024
        # 4 clients x 32 MiB would be 128 MiB held without back-pressure
        assert grown_mib < 8, f"RSS grew by {grown_mib:.1f} MiB"
    finally:
        for sock in sockets:
            sock.close()
        assert proc.stop() == 0

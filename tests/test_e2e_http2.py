"""HTTP/2 end to end: real sockets on 127.0.0.1, real clients (h2 over a socket, httpx, curl, nghttp, h2load)."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest
import trustme

from .conftest import ServerThread

ErrorCodes = h2.errors.ErrorCodes
TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------------- apps


async def info(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the scope as JSON (and the request body's length)."""
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({
        "http_version": scope["http_version"], "scheme": scope["scheme"], "method": scope["method"],
        "path": scope["path"], "query_string": scope["query_string"].decode(), "size": size,
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "extensions": sorted(scope["extensions"]),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Probe:
    """An app whose requests report to the test thread, and wait for the test's go-ahead."""

    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        if name not in self.gates:
            self.gates[name] = asyncio.Event()
        return self.gates[name]

    def open(self, name: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self.gate(name).set())

    def next(self, kind: str | None = None) -> Any:
        while True:
            got, value = self.seen.get(timeout=TIMEOUT)
            if kind is None or got == kind:
                return value

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        path = scope["path"]
        if path == "/wait-disconnect":
            self.seen.put(("started", path))
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            self.seen.put(("disconnect", path))
            return
        if path == "/slow-reader":
            # reads nothing until told to, then everything
            self.seen.put(("started", path))
            await self.gate("read").wait()
            size, more = 0, True
            while more:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            self.seen.put(("read", size))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(size).encode()})
            return
        if path == "/big-writer":
            # 40 pieces of 64 KiB: send() must wait for a client that does not read
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(40):
                await send({"type": "http.response.body", "body": b"w" * 65536, "more_body": True})
                self.seen.put(("sent", i))
            await send({"type": "http.response.body", "body": b""})
            self.seen.put(("done", path))
            return
        if path == "/until-told":
            self.seen.put(("started", path))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first ", "more_body": True})
            await self.gate("finish").wait()
            await send({"type": "http.response.body", "body": b"last"})
            return
        await info(scope, receive, send)


# ---------------------------------------------------------------------------------------------------- clients


class H2Client:
    """h2 over a real socket: send requests, read events until a condition holds."""

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None, validate: bool = True,
                 settings: dict[int, int] | None = None, auto_ack: bool = True, preface: bool = True) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config)
        self.auto_ack = auto_ack
        self.events: list[Any] = []
        self.closed = False
        if preface:
            self.conn.initiate_connection()
            if settings:
                self.conn.update_settings(settings)
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read(self) -> list[Any]:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise EOFError("the server closed the connection")
        events = self.conn.receive_data(data)
        for event in events:
            if self.auto_ack and isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        self.events += events
        return events

    def until(self, predicate: Callable[[Any], bool]) -> Any:
        """The first event (old or new) matching ``predicate``."""
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            self.read()

    def request(self, path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
                body: bytes | None = None, end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()),
                  (b":authority", b"localhost")] + (headers or [])
        self.conn.send_headers(stream_id, fields, end_stream=end and body is None)
        if body is not None:  # within the initial windows
            size = self.conn.max_outbound_frame_size
            for i in range(0, max(len(body), 1), size):
                self.conn.send_data(stream_id, body[i:i + size], end_stream=end and i + size >= len(body))
        self.flush()
        return stream_id

    def response(self, stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The stream's response headers and body (its end awaited)."""
        self.until(lambda e: isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                   and e.stream_id == stream_id)
        mine = [e for e in self.events if getattr(e, "stream_id", None) == stream_id]
        resets = [e for e in mine if isinstance(e, h2.events.StreamReset)]
        if resets:
            raise AssertionError(f"stream {stream_id} reset: {resets[0].error_code!r}")
        [head] = [e for e in mine if isinstance(e, h2.events.ResponseReceived)]
        return head.headers, b"".join(e.data for e in mine if isinstance(e, h2.events.DataReceived))

    def json(self, stream_id: int) -> Any:
        return json.loads(self.response(stream_id)[1])

    def close(self) -> None:
        self.sock.close()


def raw_frames_until_closed(sock: socket.socket) -> list[tuple[int, int, int, bytes]]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    frames = []
    while len(data) >= 9:
        high, low, ftype, flags, stream_id = struct.unpack_from(">HBBBL", data)
        length = (high << 8) | low
        frames.append((ftype, flags, stream_id, data[9:9 + length]))
        data = data[9 + length:]
    return frames


def status(headers: list[tuple[bytes, bytes]]) -> int:
    return int(dict(headers)[b":status"])


@pytest.fixture
def h2_client() -> Iterator[Callable[..., H2Client]]:
    clients: list[H2Client] = []

    def connect(port: int, **options: Any) -> H2Client:
        client = H2Client(port, **options)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(run_server: Any, ca: trustme.CA, tmp_path: Any) -> Callable[..., ServerThread]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    with open(certfile, "ab") as chain:
        for pem in cert.cert_chain_pems[1:]:
            chain.write(pem.bytes())

    def start(app: Any, **settings: Any) -> ServerThread:
        return run_server(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), **settings)

    return start


def client_context(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(alpn)
    return context


def has(tool: str) -> bool:
    return shutil.which(tool) is not None


# ---------------------------------------------------------------------------------------------------- selection


def test_prior_knowledge_on_the_cleartext_port(run_server: Any, h2_client: Any) -> None:
    server = run_server(info)
    client = h2_client(server.port)
    stream_id = client.request("/a%20b?x=1", headers=[(b"accept", b"*/*")])
    scope = client.json(stream_id)
    assert scope["http_version"] == "2" and scope["scheme"] == "http"
    assert scope["path"] == "/a b" and scope["query_string"] == "x=1"
    assert scope["headers"][:2] == [["host", "localhost"], ["accept", "*/*"]]
    # and HTTP/1.1 still works on the same port
    assert httpx.get(server.url + "/", timeout=TIMEOUT).json()["http_version"] == "1.1"


def test_httpx_http2(run_server: Any) -> None:
    server = run_server(info)
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        responses = [client.post(server.url + f"/n{i}", content=b"x" * (i * 1000)) for i in range(5)]
    for i, response in enumerate(responses):
        assert response.http_version == "HTTP/2"
        assert response.json()["size"] == i * 1000 and response.json()["path"] == f"/n{i}"


def test_upgrade_h2c_answers_the_request_on_stream_1(run_server: Any) -> None:
    server = run_server(info)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = client.initiate_upgrade_connection()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /up?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\nX-Kept: yes\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: h2c" in head.lower()
        sock.sendall(client.data_to_send())
        events = client.receive_data(rest)
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            chunk = sock.recv(65536)
            assert chunk
            events += client.receive_data(chunk)
            sock.sendall(client.data_to_send())
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == 1)
    scope = json.loads(body)
    assert scope["http_version"] == "2" and scope["path"] == "/up" and scope["query_string"] == "q=1"
    names = [name for name, _ in scope["headers"]]
    assert "x-kept" in names and "upgrade" not in names and "http2-settings" not in names


def test_upgrade_h2c_with_a_body(run_server: Any) -> None:
    server = run_server(info)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = client.initiate_upgrade_connection()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\nContent-Length: 5\r\n\r\nhel")
        sock.sendall(b"lo")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        _, _, rest = data.partition(b"\r\n\r\n")
        sock.sendall(client.data_to_send())
        events = client.receive_data(rest)
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            events += client.receive_data(sock.recv(65536))
            sock.sendall(client.data_to_send())
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert json.loads(body)["size"] == 5


def test_upgrade_h2c_without_valid_settings_stays_http11(run_server: Any) -> None:
    server = run_server(info)
    for settings in (b"", b"HTTP2-Settings: !!!\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + settings
                         + b"\r\nGET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.count(b"HTTP/1.1 200 ") == 2
        assert b'"path": "/second"' in data


def test_upgrade_h2c_with_a_chunked_body_is_refused(run_server: Any) -> None:
    server = run_server(info)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_http_1_only_refuses_the_preface_and_the_upgrade(run_server: Any) -> None:
    server = run_server(info, http="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert sock.recv(65536).startswith(b"HTTP/1.1 505 ")
    response = httpx.get(server.url + "/", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                                    "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}, timeout=TIMEOUT)
    assert response.status_code == 200 and response.json()["http_version"] == "1.1"


@pytest.mark.parametrize("preface", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ", b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n",
                                     b"INVALID CONNECTION PREFACE\r\n\r\n"])
def test_an_invalid_preface_with_prior_knowledge_gets_goaway_protocol_error(run_server: Any, preface: bytes) -> None:
    # the client began HTTP/2's preface, or sent a first line that is no HTTP/1 request line: it is answered in
    # HTTP/2 (h2spec http2/3.5/2 over h2c), not with an HTTP/1.1 head
    server = run_server(info)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(preface)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    offset = 0
    frames = []
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        frames.append((data[offset + 3], data[offset + 9:offset + 9 + length]))
        offset += 9 + length
    assert offset == len(data)
    goaways = [payload for kind, payload in frames if kind == 0x7]
    assert len(goaways) == 1 and int.from_bytes(goaways[0][4:8], "big") == ErrorCodes.PROTOCOL_ERROR
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n")  # another version: not HTTP/2's preface
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    assert httpx.get(server.url + "/", timeout=TIMEOUT).status_code == 200


def test_the_preface_after_a_request_is_not_a_switch(run_server: Any) -> None:
    server = run_server(info)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 505 " in data


def test_http_2_only_on_cleartext(run_server: Any, h2_client: Any) -> None:
    server = run_server(info, http="2")
    client = h2_client(server.port)
    assert client.json(client.request())["http_version"] == "2"
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/", timeout=TIMEOUT)


def test_tls_alpn_h2_and_http11(tls_server: Any, ca: trustme.CA, h2_client: Any) -> None:
    server = tls_server(info)
    client = h2_client(server.port, context=client_context(ca, ["h2", "http/1.1"]))
    assert client.sock.selected_alpn_protocol() == "h2"
    scope = client.json(client.request())
    assert scope["http_version"] == "2" and scope["scheme"] == "https"
    url = f"https://localhost:{server.port}/"
    verify = client_context(ca, ["h2", "http/1.1"])
    with httpx.Client(http2=True, verify=verify, timeout=TIMEOUT) as http:
        response = http.get(url)
        assert response.http_version == "HTTP/2" and response.json()["scheme"] == "https"
    with httpx.Client(verify=client_context(ca, ["http/1.1"]), timeout=TIMEOUT) as http:
        response = http.get(url)
        assert response.http_version == "HTTP/1.1" and response.json() == {**response.json(), "http_version": "1.1",
                                                                            "scheme": "https"}
    # no ALPN at all: HTTP/1.1
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.selected_alpn_protocol() is None
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_tls_http_modes(tls_server: Any, ca: trustme.CA, h2_client: Any) -> None:
    server = tls_server(info, http="1")
    client = h2_client(server.port, context=client_context(ca, ["h2", "http/1.1"]), preface=False)
    assert client.sock.selected_alpn_protocol() == "http/1.1"
    server = tls_server(info, http="2")
    client = h2_client(server.port, context=client_context(ca, ["h2", "http/1.1"]))
    assert client.sock.selected_alpn_protocol() == "h2"
    assert client.json(client.request())["http_version"] == "2"


@pytest.mark.parametrize("settings", [{"ssl_keyfile": "k.pem"}, {"ssl_cert_reqs": "required"},
                                      {"ssl_certfile": "/nonexistent/cert.pem"}])
def test_bad_tls_settings_stop_the_start(settings: dict[str, str]) -> None:
    from tidegate.config import ConfigError

    with pytest.raises(ConfigError):
        ServerThread(info, **settings).start()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_event_loops(loop: str, run_server: Any, tls_server: Any, ca: trustme.CA, h2_client: Any) -> None:
    server = run_server(info, loop=loop)
    client = h2_client(server.port)
    assert client.json(client.request(method="POST", body=b"x" * 60000))["size"] == 60000
    response = httpx.get(server.url + "/", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                                    "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}, timeout=TIMEOUT)
    assert response.status_code == 101  # httpx does not follow an upgrade: the switch happened
    server = tls_server(info, loop=loop)
    client = h2_client(server.port, context=client_context(ca, ["h2", "http/1.1"]))
    assert client.json(client.request())["scheme"] == "https"


# ---------------------------------------------------------------------------------------------------- streams


def test_many_concurrent_streams_each_their_own_app_call(run_server: Any, h2_client: Any) -> None:
    server = run_server(info)
    client = h2_client(server.port)
    streams = [client.request(f"/s{i}", method="POST", body=str(i).encode() * i) for i in range(1, 80)]
    for i, stream_id in enumerate(streams, 1):
        scope = client.json(stream_id)
        assert scope["path"] == f"/s{i}" and scope["size"] == len(str(i)) * i


def test_max_concurrent_streams(run_server: Any, h2_client: Any) -> None:
    probe = Probe()
    server = run_server(probe, h2_max_concurrent_streams=2)
    client = h2_client(server.port)
    client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    assert client.conn.remote_settings.max_concurrent_streams == 2
    first = client.request("/wait-disconnect", end=False)
    second = client.request("/wait-disconnect", end=False)
    probe.next("started")
    probe.next("started")
    # h2 keeps to the limit; go past it by hand
    client.conn.remote_settings.acknowledge()
    client.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = [10]
    third = client.request("/")
    reset = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == third)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM
    client.conn.reset_stream(first)
    client.flush()
    probe.next("disconnect")
    fourth = client.request("/")
    assert client.json(fourth)["path"] == "/"
    client.conn.reset_stream(second)
    client.flush()


def test_malformed_requests_are_reset_and_the_connection_goes_on(run_server: Any, h2_client: Any) -> None:
    server = run_server(info)
    client = h2_client(server.port, validate=False)
    bad = [
        [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"Upper", b"x")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"connection", b"close")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b"x", b"y"), (b":path", b"/")],
    ]
    for fields in bad:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, fields, end_stream=True)
        client.flush()
        reset = client.until(lambda e, s=stream_id: isinstance(e, h2.events.StreamReset) and e.stream_id == s)
        assert reset.error_code == ErrorCodes.PROTOCOL_ERROR
    assert client.json(client.request("/fine"))["path"] == "/fine"


def test_client_reset_disconnects_that_stream_only(run_server: Any, h2_client: Any) -> None:
    probe = Probe()
    server = run_server(probe)
    client = h2_client(server.port)
    waiting = client.request("/wait-disconnect", end=False)
    assert probe.next("started") == "/wait-disconnect"
    other = client.request("/other", end=False)
    client.conn.reset_stream(waiting, ErrorCodes.CANCEL)
    client.flush()
    assert probe.next("disconnect") == "/wait-disconnect"
    client.conn.send_data(other, b"abc", end_stream=True)
    client.flush()
    assert client.json(other)["size"] == 3


def test_request_window_is_given_back_only_as_the_app_reads(run_server: Any, h2_client: Any) -> None:
    probe = Probe()
    server = run_server(probe, limit_request_buffer=16384)
    client = h2_client(server.port)
    client.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
    stream_id = client.request("/slow-reader", end=False)
    probe.next("started")
    window = client.conn.local_flow_control_window(stream_id)
    assert window == 16384
    client.conn.send_data(stream_id, b"x" * window)
    client.conn.ping(b"sync0001")
    client.flush()
    # the PING is answered after the DATA was taken in: any WINDOW_UPDATE for it would have come first
    client.until(lambda e: isinstance(e, h2.events.PingAckReceived))
    assert client.conn.local_flow_control_window(stream_id) == 0
    assert not any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == stream_id for e in client.events)
    probe.open("read")
    client.until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == stream_id)
    assert client.conn.local_flow_control_window(stream_id) == 16384
    client.conn.send_data(stream_id, b"y" * 100, end_stream=True)
    client.flush()
    assert probe.next("read") == window + 100
    assert client.response(stream_id)[1] == str(window + 100).encode()


def test_a_slow_reader_makes_send_wait(run_server: Any, h2_client: Any) -> None:
    probe = Probe()
    server = run_server(probe)
    # a client with a small window that never gives any back
    client = h2_client(server.port, auto_ack=False,
                       settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65536})
    stream_id = client.request("/big-writer")
    client.until(lambda e: isinstance(e, h2.events.DataReceived))
    client.conn.ping(b"sync0001")
    client.flush()
    client.until(lambda e: isinstance(e, h2.events.PingAckReceived))
    received = sum(len(e.data) for e in client.events if isinstance(e, h2.events.DataReceived))
    assert received == 65535  # the connection window, no more
    # the first 64 KiB piece did not fit in the window: the app still waits in that send(), nothing more is made
    assert probe.seen.empty()
    # opening the window lets it finish
    client.auto_ack = True
    client.conn.increment_flow_control_window(2**20)
    client.conn.increment_flow_control_window(2**20, stream_id)
    client.flush()
    _, body = client.response(stream_id)
    assert len(body) == 40 * 65536
    assert probe.next("done") == "/big-writer"


def test_rapid_reset_flood_gets_goaway_enhance_your_calm(run_server: Any, h2_client: Any) -> None:
    server = run_server(info)
    client = h2_client(server.port)
    with pytest.raises(EOFError):
        for _ in range(300):
            stream_id = client.request("/", end=False)
            client.conn.reset_stream(stream_id)
            client.flush()
        client.until(lambda e: False)
    [terminated] = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # the server goes on
    other = h2_client(server.port)
    assert other.json(other.request())["path"] == "/"


def test_header_list_size_limit(run_server: Any, h2_client: Any) -> None:
    server = run_server(info, h2_max_header_list_size=4096)
    client = h2_client(server.port)
    client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    assert client.conn.remote_settings.max_header_list_size == 4096
    stream_id = client.request(headers=[(b"x-big", b"a" * 5000)])
    headers, _ = client.response(stream_id)
    assert status(headers) == 431
    assert client.json(client.request())["path"] == "/"
    client.request(headers=[(b"x-huge", b"a" * 9000)])
    terminated = client.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
    assert terminated.error_code == ErrorCodes.COMPRESSION_ERROR


def test_graceful_shutdown_sends_goaway_and_finishes_open_streams(run_server: Any, h2_client: Any) -> None:
    probe = Probe()
    server = run_server(probe)
    client = h2_client(server.port)
    stream_id = client.request("/until-told")
    probe.next("started")
    client.until(lambda e: isinstance(e, h2.events.DataReceived))
    server.request_stop()
    terminated = client.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
    assert (terminated.error_code, terminated.last_stream_id) == (ErrorCodes.NO_ERROR, stream_id)
    probe.open("finish")
    # h2 takes nothing after a GOAWAY: read the last frames raw, until the server closes
    frames = raw_frames_until_closed(client.sock)
    assert (0, 0x1, stream_id, b"last") in frames  # DATA with END_STREAM


def test_idle_connection_is_closed_with_goaway(run_server: Any, h2_client: Any) -> None:
    server = run_server(info, timeout_keep_alive=0.2)
    client = h2_client(server.port)
    assert client.json(client.request())["path"] == "/"
    with pytest.raises(EOFError):
        client.until(lambda e: False)
    terminated = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == ErrorCodes.NO_ERROR


def test_protocol_error_closes_the_connection(run_server: Any, h2_client: Any) -> None:
    server = run_server(info)
    client = h2_client(server.port)
    client.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
    client.sock.sendall(struct.pack(">HBBBL", 0, 8, 6, 0, 1) + b"12345678")  # PING on a stream
    with pytest.raises(EOFError):
        client.until(lambda e: False)
    [terminated] = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated.error_code == ErrorCodes.PROTOCOL_ERROR


def test_app_errors_on_http2(run_server: Any, h2_client: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/before":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after")

    server = run_server(app)
    client = h2_client(server.port)
    headers, _ = client.response(client.request("/before"))
    assert status(headers) == 500
    stream_id = client.request("/after")
    reset = client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    headers, _ = client.response(client.request("/before"))  # the connection is fine
    assert status(headers) == 500


def test_access_log_says_http2(run_server: Any, h2_client: Any, logs: Any) -> None:
    server = run_server(info, access_log=True)
    client = h2_client(server.port)
    client.response(client.request("/logged?x=1"))
    record = logs.wait_for(lambda r: r.name == "tidegate.access")
    assert "HTTP/2" in record.getMessage() and "/logged?x=1" in record.getMessage() and " 200 " in record.getMessage()


def test_access_log_json_on_http2(run_server: Any, h2_client: Any, logs: Any) -> None:
    server = run_server(info, access_log=True, access_log_json=True)
    client = h2_client(server.port)
    client.response(client.request("/as-json"))
    line = json.loads(logs.wait_for(lambda r: r.name == "tidegate.access").getMessage())
    assert (line["status"], line["http_version"], line["path"]) == (200, "2", "/as-json")


# ---------------------------------------------------------------------------------------------------- real tools


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(not has("curl"), reason="curl is not installed")
def test_curl(run_server: Any, tls_server: Any, ca: trustme.CA, tmp_path: Any) -> None:
    server = run_server(info)
    for flag in ("--http2-prior-knowledge", "--http2"):
        result = run_tool("curl", "-s", "-S", flag, "-w", "\n%{http_version}", server.url + "/curl")
        body, _, version = result.stdout.rpartition("\n")
        assert version == "2" and json.loads(body)["http_version"] == "2", result.stderr
    server = tls_server(info)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    result = run_tool("curl", "-s", "-S", "--http2", "--cacert", str(cafile), "-w", "\n%{http_version}",
                      "-d", "posted", f"https://localhost:{server.port}/tls")
    body, _, version = result.stdout.rpartition("\n")
    assert version == "2", result.stderr
    assert json.loads(body)["size"] == 6 and json.loads(body)["scheme"] == "https"


@pytest.mark.skipif(not has("nghttp"), reason="nghttp (Debian nghttp2-client) is not installed")
def test_nghttp(run_server: Any) -> None:
    server = run_server(info)
    for extra in ([], ["-u"]):  # prior knowledge, then the Upgrade dance
        result = run_tool("nghttp", "-n", "-s", *extra, server.url + "/nghttp", server.url + "/second")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "requests: 2 total" not in result.stdout or "0 failed" in result.stdout
    result = run_tool("nghttp", server.url + "/body")
    assert json.loads(result.stdout)["path"] == "/body"


@pytest.mark.skipif(not has("h2load"), reason="h2load (Debian nghttp2-client) is not installed")
def test_h2load(run_server: Any) -> None:
    server = run_server(info)
    result = run_tool("h2load", "-n", "400", "-c", "4", "-m", "20", server.url + "/load")
    assert "400 succeeded, 0 failed, 0 errored" in result.stdout, result.stdout + result.stderr
    assert "status codes: 400 2xx" in result.stdout


def test_threaded_clients_share_the_server(run_server: Any) -> None:
    server = run_server(info)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                for i in range(20):
                    assert client.get(server.url + f"/t{i}").json()["path"] == f"/t{i}"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not errors

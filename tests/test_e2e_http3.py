"""HTTP/3 end to end: tidegate serving QUIC on 127.0.0.1, aioquic's client side talking to it.

Skipped where the ``http3`` extra (aioquic) is not installed; ``scripts/test`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from tidegate.config import Config

from .conftest import ServerThread

if sys.version_info < (3, 11):
    pytest.skip("HTTP/3 needs Python 3.11 or later (--http3 refuses older ones)", allow_module_level=True)
aioquic = pytest.importorskip("aioquic", reason="the http3 extra (aioquic) is not installed")

from aioquic.asyncio.client import connect  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset  # noqa: E402

TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------------- the client

class Response:
    """What came back on one request stream."""

    def __init__(self) -> None:
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.ended = asyncio.get_running_loop().create_future()
        self.reset: int | None = None
        self.changed = asyncio.Event()

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.heads[-1]) if self.heads else {}

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    def finish(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)
        self.changed.set()


class H3Client(QuicConnectionProtocol):
    """aioquic's HTTP/3 client side, kept simple: one :class:`Response` per request stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, Response] = {}
        self.terminated: ConnectionTerminated | None = None
        #: what the server sent on its control stream (stream 3: SETTINGS, then GOAWAY)
        self.control = bytearray()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == 3:
            self.control += event.data
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for response in self.responses.values():
                response.finish()
        for h3_event in self.h3.handle_event(event):
            response = self.responses.get(getattr(h3_event, "stream_id", -1))
            if response is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                if response.heads and not dict(response.heads[-1])[b":status"].startswith(b"1"):
                    response.trailers = h3_event.headers
                else:
                    response.heads.append(h3_event.headers)
            elif isinstance(h3_event, DataReceived):
                response.body += h3_event.data
            response.changed.set()
            if getattr(h3_event, "stream_ended", False):
                response.finish()
        if isinstance(event, StreamReset) and event.stream_id in self.responses:
            self.responses[event.stream_id].reset = event.error_code
            self.responses[event.stream_id].finish()

    def start(self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None,
              body: bytes | None = b"", end: bool = True, authority: bytes = b"localhost") -> int:
        """Send a request head (and a body, unless ``body`` is None); returns its stream id."""
        stream_id = self._quic.get_next_available_stream_id()
        self.responses[stream_id] = Response()
        fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority),
                  (b":path", path.encode()), *(headers or [])]
        self.h3.send_headers(stream_id, fields, end_stream=end and not body and body is not None)
        if body:
            self.h3.send_data(stream_id, body, end)
        self.transmit()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.h3.send_data(stream_id, data, end)
        self.transmit()

    def reset(self, stream_id: int, code: int = ErrorCode.H3_REQUEST_CANCELLED) -> None:
        self._quic.reset_stream(stream_id, code)
        try:
            self._quic.stop_stream(stream_id, code)
        except ValueError:
            pass  # the server ended the stream already
        self.transmit()

    async def response(self, stream_id: int, timeout: float = TIMEOUT) -> Response:
        response = self.responses[stream_id]
        await asyncio.wait_for(asyncio.shield(response.ended), timeout)
        return response

    async def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None,
                      body: bytes = b"") -> Response:
        return await self.response(self.start(method, path, headers, body))


def client_configuration(ca: trustme.CA | None = None) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    if ca is None:
        configuration.verify_mode = ssl.CERT_NONE
    else:
        configuration.cadata = ca.cert_pem.bytes().decode().encode()
    return configuration


@asynccontextmanager
async def h3_client(port: int, ca: trustme.CA | None = None, **kwargs: Any) -> AsyncIterator[H3Client]:
    async with connect("127.0.0.1", port, configuration=client_configuration(ca), create_protocol=H3Client,
                       **kwargs) as client:
        assert isinstance(client, H3Client)
        yield client


def run(coroutine: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


# ---------------------------------------------------------------------------------------------------- apps


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET: the scope as JSON; POST: the body back, streamed as it comes."""
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return
    body = json.dumps({
        "http_version": scope["http_version"], "scheme": scope["scheme"], "method": scope["method"],
        "path": scope["path"], "query_string": scope["query_string"].decode(),
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "client": scope["client"], "server": scope["server"], "extensions": scope["extensions"],
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Probe:
    """An app whose requests report what they hear to the test, each in its own queue."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.seen: list[Any] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/wait-disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            self.seen.append(("disconnect", path))
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(10):
                await send({"type": "http.response.body", "body": b"piece %d\n" % i, "more_body": True})
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/trailers":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")],
                        "trailers": True})
            await send({"type": "http.response.body", "body": b"data", "more_body": True})
            await send({"type": "http.response.body", "body": b"more"})
            await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")]})
            return
        if path == "/hints":
            await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hinted"})
            return
        if path == "/big":
            size = int(scope["query_string"] or b"1000000")
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(size).encode())]})
            piece = b"x" * 65536
            left = size
            while left:
                chunk = piece[:min(left, len(piece))]
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": bool(left)})
            return
        if path == "/slow":
            await asyncio.sleep(float(scope["query_string"].partition(b"&")[0] or b"0.5"))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"slow"})
            return
        if path == "/fail":
            raise RuntimeError("boom")
        if path == "/head":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"yes")]})
            await send({"type": "http.response.body", "body": b"hello"})
            return
        if path == "/count":
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.seen.append(("disconnect", path))
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(size).encode()})
            return
        await echo(scope, receive, send)


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certificate(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("h3cert")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    return str(certfile), str(keyfile)


@pytest.fixture
def h3_server(run_server: Any, certificate: tuple[str, str]) -> Callable[..., ServerThread]:
    def start(app: Any = echo, **settings: Any) -> ServerThread:
        certfile, keyfile = certificate
        server: ServerThread = run_server(app, ssl_certfile=certfile, ssl_keyfile=keyfile, http3=True, **settings)
        return server

    return start


# ---------------------------------------------------------------------------------------------------- tests


def test_get_over_http3_through_the_same_exchange(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(echo)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            response = await client.request("GET", "/path/x?q=1", [(b"user-agent", b"aioquic")])
            assert response.status == 200
            seen = json.loads(response.body)
            assert seen["http_version"] == "3"
            assert seen["scheme"] == "https"
            assert seen["path"] == "/path/x" and seen["query_string"] == "q=1"
            assert ["host", "localhost"] in seen["headers"] and ["user-agent", "aioquic"] in seen["headers"]
            assert seen["client"][0] == "127.0.0.1"
            tls = seen["extensions"]["tls"]
            assert tls["tls_version"] == 0x0304 and tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
            assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
            assert response.headers[b"server"] == b"tidegate" and b"date" in response.headers
            assert b"alt-svc" not in response.headers  # it is HTTP/3 already

    run(main())


def test_the_health_path_is_answered_over_http3_without_the_app(h3_server: Any, ca: trustme.CA, logs: Any) -> None:
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await echo(scope, receive, send)

    server = h3_server(app, health_path="/healthz", access_log=True)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            health = await client.request("GET", "/healthz")
            assert health.status == 200 and bytes(health.body).startswith(b"ok")
            assert (await client.request("GET", "/other")).status == 200

    run(main())
    assert calls == ["/other"]  # the health path never reaches the app
    line = logs.wait_for(lambda r: r.name == "tidegate.access").getMessage()
    assert "/other" in line and not [m for m in logs.messages("tidegate.access") if "/healthz" in m]


def test_post_bodies_and_streaming_both_ways(h3_server: Any, ca: trustme.CA) -> None:
    probe = Probe()
    server = h3_server(probe)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            # a body in one piece, echoed as it comes
            response = await client.request("POST", "/", [(b"content-type", b"text/plain")], b"hello over quic")
            assert response.status == 200 and bytes(response.body) == b"hello over quic"
            # a body sent in pieces, the response read as it is made
            stream_id = client.start("POST", "/", body=b"first ", end=False)
            for piece in (b"second ", b"third"):
                await asyncio.sleep(0.05)
                client.send(stream_id, piece)
            client.send(stream_id, b"", end=True)
            response = await client.response(stream_id)
            assert bytes(response.body) == b"first second third"
            # a large upload, counted by the app (flow control gives the window back as it reads)
            big = os.urandom(3_000_000)
            response = await client.request("POST", "/count", body=big)
            assert bytes(response.body) == b"3000000"
            # a streamed response, piece by piece
            stream_id = client.start("GET", "/stream")
            response = client.responses[stream_id]
            await asyncio.wait_for(response.changed.wait(), TIMEOUT)
            assert not response.ended.done()  # the first pieces came before the last was made
            await client.response(stream_id)
            assert bytes(response.body) == b"".join(b"piece %d\n" % i for i in range(10))
            # a large response under back-pressure
            response = await client.request("GET", "/big?5000000")
            assert len(response.body) == 5_000_000 and response.headers[b"content-length"] == b"5000000"

    run(main())


def test_trailers_early_hints_head_and_errors(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(Probe())

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            response = await client.request("GET", "/trailers", [(b"te", b"trailers")])
            assert response.status == 200 and bytes(response.body) == b"datamore"
            assert response.trailers == [(b"x-checksum", b"abc123")]
            # without TE: trailers the body ends, no trailers
            response = await client.request("GET", "/trailers")
            assert bytes(response.body) == b"datamore" and response.trailers is None
            # 103 Early Hints before the response
            response = await client.request("GET", "/hints")
            assert [dict(h)[b":status"] for h in response.heads] == [b"103", b"200"]
            assert dict(response.heads[0])[b"link"] == b"</style.css>; rel=preload; as=style"
            assert bytes(response.body) == b"hinted"
            # HEAD: the head, no body, whatever the app sends (aioquic's client checks a content-length against
            # the body even for HEAD, so the app sends none here)
            response = await client.request("HEAD", "/head")
            assert response.status == 200 and response.headers[b"x-app"] == b"yes" and not response.body
            # the app fails before its response: 500
            response = await client.request("GET", "/fail")
            assert response.status == 500
            # 100-continue: the app's first receive() is the go-ahead
            stream_id = client.start("POST", "/count", [(b"expect", b"100-continue"), (b"content-length", b"4")],
                                     body=None, end=False)
            response = client.responses[stream_id]
            await asyncio.wait_for(response.changed.wait(), TIMEOUT)
            assert response.heads and dict(response.heads[0])[b":status"] == b"100"
            client.send(stream_id, b"abcd", end=True)
            await client.response(stream_id)
            assert response.status == 200 and bytes(response.body) == b"4"

    run(main())


def test_a_client_reset_is_http_disconnect(h3_server: Any, ca: trustme.CA) -> None:
    probe = Probe()
    server = h3_server(probe)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            stream_id = client.start("GET", "/wait-disconnect")
            response = client.responses[stream_id]
            await asyncio.wait_for(response.changed.wait(), TIMEOUT)
            assert bytes(response.body) == b"started"
            client.reset(stream_id)
            for _ in range(100):
                if probe.seen:
                    break
                await asyncio.sleep(0.05)
            assert probe.seen == [("disconnect", "/wait-disconnect")]
            # the connection goes on
            assert (await client.request("GET", "/")).status == 200

    run(main())


def test_connection_loss_is_http_disconnect(h3_server: Any, ca: trustme.CA) -> None:
    probe = Probe()
    server = h3_server(probe)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            stream_id = client.start("GET", "/wait-disconnect")
            await asyncio.wait_for(client.responses[stream_id].changed.wait(), TIMEOUT)
            client.close(error_code=0x100)
            await client.wait_closed()
        for _ in range(100):
            if probe.seen:
                break
            await asyncio.sleep(0.05)
        assert probe.seen == [("disconnect", "/wait-disconnect")]

    run(main())


def test_many_concurrent_streams(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(Probe())

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            ids = [client.start("GET", f"/slow?0.2&{i}") for i in range(90)]
            responses = await asyncio.gather(*(client.response(i) for i in ids))
            assert [r.status for r in responses] == [200] * 90
            # and more than the connection's limit in turns: QUIC's MAX_STREAMS lets them in as others end
            ids = [client.start("GET", f"/?{i}") for i in range(300)]
            responses = await asyncio.gather(*(client.response(i) for i in ids))
            assert all(r.status == 200 for r in responses)

    run(main())


class Gauge:
    """An app that counts the requests it is handling at once (ignoring disconnects: a slow app)."""

    def __init__(self, hold: float = 0.5) -> None:
        self.now = 0
        self.most = 0
        self.calls = 0
        self.hold = hold

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.now += 1
        self.calls += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.hold)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
        finally:
            self.now -= 1


def test_limits_header_size_body_size_and_concurrent_streams(h3_server: Any, ca: trustme.CA) -> None:
    gauge = Gauge(0.3)
    server = h3_server(Probe(), h3_max_header_list_size=2000, limit_request_body=1000)
    limited = h3_server(gauge, h3_max_concurrent_streams=3)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            # a header section over the limit: 431, the app never sees it; the connection goes on
            response = await client.request("GET", "/", [(b"x-big", os.urandom(1200).hex().encode())])
            assert response.status == 431
            # far over it (its HEADERS frame past twice the limit): the stream is refused
            response = await client.request("GET", "/", [(b"x-big", os.urandom(5000).hex().encode())])
            assert response.reset == ErrorCode.H3_EXCESSIVE_LOAD
            # a body over --limit-request-body: 413
            response = await client.request("POST", "/count", [(b"content-length", b"5000")], b"x" * 5000)
            assert response.status == 413
            response = await client.request("POST", "/count", body=b"x" * 5000)
            assert response.status == 413
            assert (await client.request("GET", "/")).status == 200
        async with h3_client(limited.port, ca) as client:
            # 9 requests, 3 streams at once: QUIC's MAX_STREAMS holds the others back until some end
            started = time.monotonic()
            ids = [client.start("GET", f"/{i}") for i in range(9)]
            responses = await asyncio.gather(*(client.response(i) for i in ids))
            assert [r.status for r in responses] == [200] * 9
            assert gauge.most == 3
            assert time.monotonic() - started >= 0.85

    run(main())


def test_a_flood_of_reset_streams_does_not_pile_up_app_tasks(h3_server: Any, ca: trustme.CA) -> None:
    gauge = Gauge(2.0)
    server = h3_server(gauge, h3_max_concurrent_streams=5)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            for _ in range(60):
                stream_id = client.start("GET", "/")
                await asyncio.sleep(0.002)
                client.reset(stream_id)
            await asyncio.sleep(0.5)
            assert gauge.most <= 5
            assert client.terminated is None or client.terminated.error_code == ErrorCode.H3_EXCESSIVE_LOAD

    run(main())


def varint(data: bytes, at: int) -> tuple[int, int]:
    first = data[at]
    size = 1 << (first >> 6)
    value = first & 0x3F
    for byte in data[at + 1:at + size]:
        value = (value << 8) | byte
    return value, at + size


def test_malformed_datagrams_never_break_the_endpoint(h3_server: Any, ca: trustme.CA, logs: Any) -> None:
    server = h3_server(echo)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            assert (await client.request("GET", "/")).status == 200
            their_cid = client._quic._peer_cid.cid
            junk = [b"", b"\x00", b"\x40", b"\x80", b"\xc0", b"\xff" * 7, b"\xc0\x00\x00\x00\x01\xff" + b"\x00" * 40,
                    b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x15" + os.urandom(1300),
                    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\xff" * 1200,
                    b"\xc0\x00\x00\x00\x01\x14" + os.urandom(20) + b"\x00\x00" + os.urandom(1200),
                    b"\x40" + their_cid + os.urandom(60), b"\xc0\x00\x00\x00\x01\x08" + their_cid + os.urandom(1300),
                    b"\xe0\x00\x00\x00\x01\x08" + their_cid + b"\x00" + os.urandom(40)]
            junk += [os.urandom(size) for size in (1, 20, 100, 1200, 1400, 2000) for _ in range(20)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for datagram in junk:
                    raw.sendto(datagram, ("127.0.0.1", server.port))
            await asyncio.sleep(0.3)
            # the endpoint and the connection are fine
            assert (await client.request("GET", "/again")).status == 200
        async with h3_client(server.port, ca) as client:
            assert (await client.request("GET", "/")).status == 200

    run(main())
    assert not [r for r in logs.records if r.levelno >= 40], [r.getMessage() for r in logs.records]


def first_initial(server_name: str = "localhost") -> tuple[bytes, Any]:
    """A client's first Initial datagram (1200 bytes, padded), from aioquic's client connection."""
    from aioquic.quic.connection import QuicConnection

    configuration = client_configuration()
    configuration.server_name = server_name
    connection = QuicConnection(configuration=configuration)
    connection.connect(("127.0.0.1", 9), now=time.monotonic())
    datagrams = connection.datagrams_to_send(now=time.monotonic())
    return datagrams[0][0], connection


def collect(sock: socket.socket, seconds: float) -> list[bytes]:
    sock.settimeout(0.05)
    got: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            continue
    return got


def test_anti_amplification_version_negotiation_and_retry(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(echo)
    always = h3_server(echo, quic_retry="always")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        # an Initial from an address that never answers: the server sends at most three times what it received
        initial, _ = first_initial()
        assert len(initial) >= 1200
        raw.sendto(initial, ("127.0.0.1", server.port))
        answers = collect(raw, 2.5)
        assert answers and sum(len(a) for a in answers) <= 3 * len(initial)
        # a version it does not speak: a Version Negotiation packet naming QUIC v1
        raw.sendto(b"\xc0\x0a\x1a\x2a\x3a\x08" + b"A" * 8 + b"\x08" + b"B" * 8 + b"\x00" * 1200,
                   ("127.0.0.1", server.port))
        (negotiation,) = collect(raw, 0.5)
        assert negotiation[1:5] == b"\x00\x00\x00\x00" and b"\x00\x00\x00\x01" in negotiation[5:]
        # --quic-retry always: the first answer to an Initial is a Retry (address validation), nothing else
        initial, _ = first_initial()
        raw.sendto(initial, ("127.0.0.1", always.port))
        answers = collect(raw, 0.5)
        assert len(answers) == 1 and answers[0][0] & 0xF0 == 0xF0 and len(answers[0]) < 200

    async def main() -> None:
        # and a real client goes through the Retry
        async with h3_client(always.port, ca) as client:
            assert (await client.request("GET", "/")).status == 200

    run(main())


def test_a_flood_of_initials_is_answered_with_retry_and_bounded(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(echo)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        raw.bind(("127.0.0.1", 0))
        for _ in range(150):
            raw.sendto(first_initial()[0], ("127.0.0.1", server.port))
        answers = collect(raw, 1.0)
    retries = [a for a in answers if a[0] & 0xF0 == 0xF0]
    # the connections made: one per client connection ID the server's long-header packets are sent to
    made = {a[6:6 + a[5]] for a in answers if a[0] & 0x80 and a[0] & 0xF0 != 0xF0}
    # past RETRY_ABOVE handshakes in progress, new Initials get a Retry rather than a connection
    assert len(made) <= 64 and len(made) + len(retries) >= 140

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            assert (await client.request("GET", "/")).status == 200

    run(main())


def test_access_lines_and_metrics_say_http3(h3_server: Any, ca: trustme.CA, logs: Any) -> None:
    from tidegate.metrics import Metrics, _protocol
    from tidegate.runtime.h3 import H3Driver

    metrics = Metrics()
    server = h3_server(Probe(), access_log=True, metrics=metrics)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            assert (await client.request("GET", "/x?y=1")).status == 200
            assert (await client.request("POST", "/", body=b"abc")).status == 200

    run(main())
    lines = [r.getMessage() for r in logs.records if r.name == "tidegate.access"]
    assert any('"GET /x?y=1 HTTP/3" 200' in line for line in lines), lines
    assert any('"POST / HTTP/3" 200 3' in line for line in lines), lines
    assert sum(metrics.requests) >= 2
    assert _protocol(object.__new__(H3Driver)) == "h3"


def test_graceful_shutdown_sends_goaway_and_answers_what_is_in_flight(run_server: Any, certificate: Any,
                                                                      ca: trustme.CA) -> None:
    certfile, keyfile = certificate
    server = ServerThread(Probe(), ssl_certfile=certfile, ssl_keyfile=keyfile, http3=True).start()
    control = bytearray()

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            stream_id = client.start("GET", "/slow?1.0")
            await asyncio.sleep(0.2)
            server.request_stop()
            response = await client.response(stream_id)
            assert response.status == 200 and bytes(response.body) == b"slow"
            for _ in range(100):
                if client.terminated is not None:
                    break
                await asyncio.sleep(0.05)
            assert client.terminated is not None and client.terminated.error_code == ErrorCode.H3_NO_ERROR
            control.extend(client.control)

    run(main())
    server.stop()
    data = bytes(control)
    at, frames = 1, []  # past the stream type (0x00, control)
    while at < len(data):
        kind, at = varint(data, at)
        length, at = varint(data, at)
        frames.append((kind, data[at:at + length]))
        at += length
    goaways = [payload for kind, payload in frames if kind == 0x07]
    assert goaways and varint(goaways[0], 0)[0] == 4  # stream 0 is answered, 4 and beyond are not


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(h3_server: Any, ca: trustme.CA) -> None:
    server = h3_server(echo, timeout_keep_alive=0.5)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            assert (await client.request("GET", "/")).status == 200
            await asyncio.sleep(1.5)
            assert client.terminated is not None and client.terminated.error_code == ErrorCode.H3_NO_ERROR

    run(main())


def test_http3_needs_a_certificate_and_the_extra(tmp_path: Path) -> None:
    from tidegate.runtime.server import serve

    async def main(config: Config) -> None:
        await serve(echo, config, shutdown_trigger=asyncio.sleep, sockets=[])

    with pytest.raises(Exception, match="ssl-certfile"):
        run(main(Config.from_flat(port=0, http3=True, lifespan="off")))


async def own_alt_svc(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"alt-svc", b'h3=":9999"; ma=60'), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("http2", [False, True], ids=["http/1.1", "http/2"])
def test_tls_responses_advertise_http3_with_alt_svc(h3_server: Any, run_server: Any, certificate: Any,
                                                     ca: trustme.CA, http2: bool) -> None:
    import httpx

    server = h3_server(echo)
    own = h3_server(own_alt_svc)
    certfile, keyfile = certificate
    plain_tls = run_server(echo, ssl_certfile=certfile, ssl_keyfile=keyfile)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(verify=context, http2=http2, http1=not http2) as client:
        response = client.get(f"https://localhost:{server.port}/")
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert response.headers.get_list("alt-svc") == [f'h3=":{server.port}"; ma=86400']
        # the server's own answers say it too
        response = client.get(f"https://localhost:{server.port}/", headers={"x-big": "x" * 100_000})
        assert response.status_code == 431 and "alt-svc" in response.headers
        # an app's own alt-svc is the only one (on every response: HTTP/2's encoded-field cache keeps no such field)
        for _ in range(3):
            response = client.get(f"https://localhost:{own.port}/")
            assert response.headers.get_list("alt-svc") == ['h3=":9999"; ma=60']
        # without --http3, none
        response = client.get(f"https://localhost:{plain_tls.port}/")
        assert "alt-svc" not in response.headers


def test_quic_bind_serves_http3_on_another_port_and_alt_svc_names_it(h3_server: Any, ca: trustme.CA) -> None:
    import httpx

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        quic_port = probe.getsockname()[1]
    server = h3_server(echo, quic_bind=f"127.0.0.1:{quic_port}")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(verify=context) as client:
        assert client.get(f"https://localhost:{server.port}/").headers["alt-svc"] == f'h3=":{quic_port}"; ma=86400'

    async def main() -> None:
        async with h3_client(quic_port, ca) as client:
            assert (await client.request("GET", "/")).status == 200

    run(main())


# ---------------------------------------------------------------------------------------------------- workers


@pytest.fixture
def h3_workers(server_process: Any, certificate: tuple[str, str]) -> Callable[..., Any]:
    """``python -m tidegate tests.ops_apps:app --workers N --http3`` over TLS; returns the process once every
    worker is ready."""

    def start(workers: int = 2, *args: str) -> Any:
        certfile, keyfile = certificate
        process = server_process("tests.ops_apps:app", "--workers", str(workers), "--http3", "--port", "0",
                                 "--ssl-certfile", certfile, "--ssl-keyfile", keyfile, "--no-access-log",
                                 "--timeout-graceful-shutdown", "5", *args)
        process.wait_serving(30)
        for _ in range(workers):
            process.stderr.wait_for(") ready", timeout=30)
        return process

    return start


async def migrate(client: H3Client) -> asyncio.BaseTransport:
    """The client's address changes (a new UDP port, as behind a NAT rebinding): same connection, new path.
    Returns the new transport (aioquic's ``connect`` closes only the first one)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    old = client._transport
    transport, _ = await loop.create_datagram_endpoint(lambda: client, sock=sock)
    assert old is not None
    old.close()
    return transport


@pytest.mark.timeout(180)
def test_two_workers_fifty_clients_many_requests(h3_workers: Any, ca: trustme.CA) -> None:
    process = h3_workers(2)
    port = process.port

    async def one_client(number: int) -> tuple[set[int], int]:
        pids: set[int] = set()
        done = 0
        moved = None
        async with h3_client(port, ca) as client:
            for batch in range(4):
                ids = [client.start("GET", f"/?client={number}&request={batch}-{i}") for i in range(5)]
                for stream_id in ids:
                    response = await client.response(stream_id, timeout=30)
                    assert response.status == 200, (response.heads, response.reset, client.terminated)
                    pids.add(json.loads(response.body)["pid"])
                    done += 1
            if number % 10 == 0:
                # a client whose address changes mid-connection stays with its worker (its connection IDs say which)
                moved = await migrate(client)
                response = await client.request("GET", "/after-migration")
                assert response.status == 200 and json.loads(response.body)["pid"] in pids
                done += 1
        if moved is not None:
            moved.close()
        return pids, done

    async def main() -> None:
        results = await asyncio.gather(*(one_client(n) for n in range(50)))
        assert sum(done for _, done in results) == 50 * 20 + 5
        # every connection was served by one worker, and both workers served
        assert all(len(pids) == 1 for pids, _ in results)
        assert len(set().union(*(pids for pids, _ in results))) == 2

    run(main(), timeout=150)
    process.signal()
    assert process.wait(30) == 0


@pytest.mark.timeout(180)
def test_rolling_restart_drains_quic_connections_with_goaway(h3_workers: Any, ca: trustme.CA) -> None:
    import signal

    process = h3_workers(2)
    port = process.port

    async def main() -> None:
        async with h3_client(port, ca) as old:
            first = json.loads((await old.request("GET", "/")).body)["pid"]
            in_flight = old.start("GET", "/slow?2")
            await asyncio.sleep(0.3)
            process.signal(signal.SIGHUP)  # new workers first, then the old ones drain
            process.stderr.wait_for("rolling restart done", timeout=30)
            # new connections reach the new workers meanwhile
            for _ in range(5):
                async with h3_client(port, ca) as fresh:
                    response = await fresh.request("GET", "/")
                    assert response.status == 200 and json.loads(response.body)["pid"] != first
            # the old connection's request in flight is answered by its (draining) worker, then GOAWAY closes it
            response = await old.response(in_flight, timeout=20)
            assert response.status == 200 and json.loads(response.body)["pid"] == first
            for _ in range(100):
                if old.terminated is not None:
                    break
                await asyncio.sleep(0.1)
            assert old.terminated is not None and old.terminated.error_code == ErrorCode.H3_NO_ERROR

    run(main(), timeout=150)
    process.signal()
    assert process.wait(30) == 0


# ---------------------------------------------------------------------------------------------------- WebSocket


async def ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket echo (text reversed, bytes doubled); 'bye' closes with 4000."""
    if scope["type"] != "websocket":
        await echo(scope, receive, send)
        return
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/deny":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": [(b"x-why", b"no")]})
        await send({"type": "websocket.http.response.body", "body": b"go away"})
        return
    await send({"type": "websocket.accept", "subprotocol": None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4000})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"][::-1]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"] * 2})


def ws_frames(data: bytes) -> list[Any]:
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        except EOFError:
            return frames


def test_websocket_over_http3_extended_connect(h3_server: Any, ca: trustme.CA, logs: Any) -> None:
    from websockets.frames import Close, Frame, Opcode

    server = h3_server(ws_echo, access_log=True)

    def connect_fields(path: str) -> list[tuple[bytes, bytes]]:
        return [(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")]

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            # the server says it takes extended CONNECT (RFC 9220) in its SETTINGS
            assert client.h3.received_settings is not None and client.h3.received_settings.get(0x8) == 1
            stream_id = client.start("CONNECT", "/chat", connect_fields("/chat"), body=None, end=False)
            response = client.responses[stream_id]
            await asyncio.wait_for(response.changed.wait(), TIMEOUT)
            assert response.status == 200
            for frame in (Frame(Opcode.TEXT, b"hello"), Frame(Opcode.BINARY, b"\x01\x02")):
                client.send(stream_id, frame.serialize(mask=True, extensions=[]))
            for _ in range(100):
                if len(ws_frames(bytes(response.body))) >= 2:
                    break
                await asyncio.sleep(0.02)
            frames = ws_frames(bytes(response.body))
            assert frames[:2] == [Frame(Opcode.TEXT, b"olleh"), Frame(Opcode.BINARY, b"\x01\x02\x01\x02")]
            # the app closes: its close frame, then the stream ends once the client's close frame is back
            client.send(stream_id, Frame(Opcode.TEXT, b"bye").serialize(mask=True, extensions=[]))
            for _ in range(100):
                if len(ws_frames(bytes(response.body))) >= 3:
                    break
                await asyncio.sleep(0.02)
            close = ws_frames(bytes(response.body))[2]
            assert close.opcode == Opcode.CLOSE and Close.parse(close.data).code == 4000
            client.send(stream_id, Frame(Opcode.CLOSE, Close(4000, "").serialize()).serialize(
                mask=True, extensions=[]), end=True)
            await client.response(stream_id)
            assert response.reset is None
            # a denial: the app's own HTTP response
            stream_id = client.start("CONNECT", "/deny", connect_fields("/deny"), body=None, end=False)
            denied = await client.response(stream_id)
            assert denied.status == 403 and bytes(denied.body) == b"go away"
            # the connection serves plain requests too
            assert (await client.request("GET", "/")).status == 200

    run(main())
    line = logs.wait_for(lambda r: r.name == "tidegate.access" and "WebSocket /chat" in r.getMessage()).getMessage()
    assert "WebSocket /chat HTTP/3" in line and line.endswith(" 200")


# ---------------------------------------------------------------------------------------------------- back-pressure


class Pacer:
    """``POST /slow-reader``: reads one piece, then waits for the test before reading on; ``GET /firehose``: sends
    64 KiB pieces as fast as the client takes them, counting what send() accepted."""

    def __init__(self) -> None:
        self.read_on: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.received = 0

    def go(self) -> None:
        assert self.loop is not None and self.read_on is not None
        self.loop.call_soon_threadsafe(self.read_on.set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.loop = asyncio.get_running_loop()
        if scope["path"] == "/slow-reader":
            self.read_on = asyncio.Event()
            message = await receive()
            self.received += len(message.get("body", b""))
            await self.read_on.wait()
            while message.get("more_body"):
                message = await receive()
                self.received += len(message.get("body", b""))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(self.received).encode()})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"y" * 65536
        for _ in range(1000):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.sent += len(piece)
        await send({"type": "http.response.body", "body": b""})


def test_back_pressure_both_ways(h3_server: Any, ca: trustme.CA) -> None:
    pacer = Pacer()
    server = h3_server(pacer, limit_request_buffer=65536)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            # upload: while the app does not read, the client may send one window more, not its 8 MB
            stream_id = client.start("POST", "/slow-reader", body=b"z" * 8_000_000)
            await asyncio.sleep(1.0)
            sender = client._quic._streams[stream_id]
            assert sender.max_stream_data_remote <= 3 * 65536 + 1024
            pacer.go()
            response = await client.response(stream_id, timeout=30)
            assert bytes(response.body) == b"8000000"
        # download: a client that gives no window back holds the app in send() after a few pieces
        async with h3_client(server.port, ca) as client:
            client._quic._write_stream_limits = lambda *args, **kwargs: None  # type: ignore[method-assign]
            stream_id = client.start("GET", "/firehose")
            await asyncio.sleep(1.0)
            assert 0 < pacer.sent <= 4 * 1024 * 1024
            client.reset(stream_id)

    run(main())


def test_concurrency_limit_body_timeout_and_no_websocket(h3_server: Any, ca: trustme.CA, logs: Any) -> None:
    busy = h3_server(Gauge(1.0), limit_concurrency=1, access_log=True)
    probe = Probe()
    stalled = h3_server(probe, timeout_request_body=0.3, ws_implementation="none")

    async def main() -> None:
        async with h3_client(busy.port, ca) as client:
            first = client.start("GET", "/one")
            await asyncio.sleep(0.2)
            refused = await client.request("GET", "/two")
            assert refused.status == 503 and refused.headers[b"retry-after"] == b"1"
            assert (await client.response(first)).status == 200
        async with h3_client(stalled.port, ca) as client:
            # a body the app waits for that does not come: 408, the app hears http.disconnect
            stream_id = client.start("POST", "/count", body=b"part", end=False)
            response = await client.response(stream_id)
            assert response.status == 408
            assert ("disconnect", "/count") in probe.seen
            # --ws none: no extended CONNECT (not in SETTINGS), and one is refused
            assert client.h3.received_settings is not None and 0x8 not in client.h3.received_settings
            stream_id = client.start("CONNECT", "/ws", [(b":protocol", b"websocket"), (b"sec-websocket-version",
                                                                                      b"13")], body=None, end=False)
            response = await client.response(stream_id)
            assert response.reset == ErrorCode.H3_MESSAGE_ERROR
            assert (await client.request("GET", "/")).status == 200

    run(main())
    assert any('"GET /two HTTP/3" 503' in r.getMessage() for r in logs.records if r.name == "tidegate.access")


def test_the_steering_program_sends_each_datagram_to_the_worker_its_connection_id_names() -> None:
    from tidegate.runtime.udp import SteeredGroup, connection_id_maker

    group = SteeredGroup("127.0.0.1", 0)
    group.grow(4)
    tag = 0x5A
    try:
        # slots 0..3 live (2 draining), 1 and 3 take new connections
        group.steer([0, 1, 2, 3], [1, 3], tag)

        def short(slot: int) -> bytes:
            return b"\x40" + connection_id_maker(slot, tag)() + os.urandom(30)

        def long(cid: bytes) -> bytes:
            return b"\xc0\x00\x00\x00\x01" + bytes([len(cid)]) + cid + b"\x00" + os.urandom(1200)

        sent = {"short 0": short(0), "short 2": short(2), "short 3": short(3),
                "long 1": long(connection_id_maker(1, tag)()), "long 2": long(connection_id_maker(2, tag)())}
        def fresh() -> bytes:  # a client's connection ID (one in 16384 looks like one of ours: not here)
            cid = os.urandom(8)
            return cid if cid[1] != cid[0] ^ tag else fresh()

        new = {f"new {i}": long(fresh()) for i in range(40)}
        new |= {f"new short {i}": b"\x40" + fresh() + os.urandom(30) for i in range(10)}
        names = {data: name for name, data in (sent | new).items()}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in names:
                client.sendto(data, ("127.0.0.1", group.port))
                client.sendto(data, ("127.0.0.1", group.port))  # the same datagram twice: the same socket
        time.sleep(0.2)
        got: dict[int, list[str]] = {}
        for index, sock in enumerate(group.sockets):
            while True:
                try:
                    got.setdefault(index, []).append(names[sock.recv(4096)])
                except BlockingIOError:
                    break
        where = {name: index for index, received in got.items() for name in received}
        assert {n: where[n] for n in sent} == {"short 0": 0, "short 2": 2, "short 3": 3, "long 1": 1, "long 2": 2}
        # a connection ID no live worker issued goes to one that takes new connections, always the same one
        assert {where[n] for n in new} == {1, 3}
        assert all(got[where[n]].count(n) == 2 for n in new)
    finally:
        group.close()


def test_files_wrong_lengths_and_the_write_deadline(h3_server: Any, ca: trustme.CA, tmp_path: Path) -> None:
    content = os.urandom(300_000)
    (tmp_path / "file.bin").write_bytes(content)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/file":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "file.bin")})
        elif path in ("/too-long", "/too-short"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"123456" if path == "/too-long" else b"123"})
        elif path == "/bad-header":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nb")]})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/empty-204":
            await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        else:
            await Pacer()(scope, receive, send)

    server = h3_server(app, timeout_write=0.5)

    async def main() -> None:
        async with h3_client(server.port, ca) as client:
            response = await client.request("GET", "/file")
            assert response.status == 200 and bytes(response.body) == content
            assert (await client.request("GET", "/too-long")).reset == ErrorCode.H3_INTERNAL_ERROR
            assert (await client.request("GET", "/too-short")).reset == ErrorCode.H3_INTERNAL_ERROR
            assert (await client.request("GET", "/bad-header")).status == 500
            response = await client.request("GET", "/empty-204")
            assert response.status == 204 and b"content-length" not in response.headers
            # a client that takes nothing for --timeout-write: the stream is reset, the connection goes on
            client._quic._write_stream_limits = lambda *args, **kwargs: None  # type: ignore[method-assign]
            stream_id = client.start("GET", "/firehose")
            response = await client.response(stream_id, timeout=10)
            assert response.reset == ErrorCode.H3_REQUEST_CANCELLED

    run(main())


def test_a_binary_upgrade_is_refused_while_http3_is_served(h3_workers: Any) -> None:
    # the UDP sockets' connection-ID steering is the supervisor's own: a new generation could not join it
    process = h3_workers(1)
    process.signal(signal.SIGUSR2)
    process.stderr.wait_for("SIGUSR2 ignored: HTTP/3's UDP sockets are not handed to a new generation", timeout=20)
    assert process.process.poll() is None

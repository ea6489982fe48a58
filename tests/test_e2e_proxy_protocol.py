"""--proxy-protocol over real sockets: the PROXY header first, then HTTP/1.1, HTTP/2, WebSocket or TLS."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from tidegate.protocol.proxy import V2_SIGNATURE

from .apps import scope_json
from .conftest import RawClient

TIMEOUT = 10.0
REQUEST = b"GET /where HTTP/1.1\r\nhost: example.com\r\n\r\n"
V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n"


def v2(command: int = 1, family: int = 1, *, client: str = "192.0.2.7", port: int = 51000,
       extra: bytes = b"") -> bytes:
    body = b""
    if family == 1:
        body = (ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("198.51.100.1").packed
                + struct.pack("!HH", port, 443))
    elif family == 2:
        body = (ipaddress.IPv6Address(client).packed + ipaddress.IPv6Address("2001:db8::1").packed
                + struct.pack("!HH", port, 443))
    body += extra
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | 1]) + struct.pack("!H", len(body)) + body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"client": scope["client"],
                                                                  "scheme": scope["scheme"]})})
        await send({"type": "websocket.close", "code": 1000})
        return
    await scope_json(scope, receive, send)


def server(run_server: Any, **settings: Any) -> Any:
    settings.setdefault("forwarded_allow_ips", "127.0.0.1")
    return run_server(app, proxy_protocol=True, **settings)


def ask(client: RawClient) -> dict[str, Any]:
    client.send(REQUEST)
    response = client.read_response()
    assert response.status == 200
    return dict(json.loads(response.body))


def closed_unanswered(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` without a byte of answer (within the timeout)."""
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(("header", "client"), [
    (V1, ["192.0.2.7", 51000]),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 52000 443\r\n", ["2001:db8::7", 52000]),
    (v2(), ["192.0.2.7", 51000]),
    (v2(family=2, client="2001:db8::9"), ["2001:db8::9", 51000]),
    (v2(extra=b"\x01\x00\x02h2" + b"\x04\x00\x00"), ["192.0.2.7", 51000]),  # TLVs skipped
])
def test_the_header_names_the_client_of_every_request_on_the_connection(run_server, header, client):
    srv = server(run_server)
    raw = RawClient(srv.port)
    raw.send(header)
    first = ask(raw)
    assert first["client"] == client
    assert first["server"][1] == srv.port  # the server address stays the listener's
    assert ask(raw)["client"] == client  # keep-alive: the same connection, the same client
    raw.sock.close()


@pytest.mark.parametrize("header", [v2(command=0), v2(command=0, family=0), v2(family=0),
                                    b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_local_and_unknown_keep_the_connection_s_own_peer(run_server, header):
    srv = server(run_server)
    raw = RawClient(srv.port)
    raw.send(header)
    assert ask(raw)["client"][0] == "127.0.0.1"
    raw.sock.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_header_and_request_in_one_segment_and_a_byte_at_a_time(run_server, loop):
    srv = server(run_server, loop=loop)
    raw = RawClient(srv.port)
    raw.send(V1 + REQUEST)
    assert raw.read_response().status == 200
    raw.sock.close()
    raw = RawClient(srv.port)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in v2():
        raw.send(bytes([byte]))
    assert ask(raw)["client"] == ["192.0.2.7", 51000]
    raw.sock.close()


def test_http2_with_prior_knowledge(run_server):
    srv = server(run_server)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(v2(family=2, client="2001:db8::7") + conn.data_to_send())
        ids = []
        for _ in range(2):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                          (b":authority", b"example.com")], end_stream=True)
            ids.append(stream_id)
        sock.sendall(conn.data_to_send())
        bodies: dict[int, bytes] = dict.fromkeys(ids, b"")
        ended: set[int] = set()
        while ended != set(ids):
            data = sock.recv(65536)
            assert data, "closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    for body in bodies.values():
        scope = json.loads(body)
        assert scope["http_version"] == "2"
        assert scope["client"] == ["2001:db8::7", 51000]


def test_websocket(run_server):
    srv = server(run_server)
    raw = RawClient(srv.port)
    raw.send(V1 + b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
             b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
    _, status, _ = raw.read_head()
    assert status == 101
    opcode, length = raw.read_exactly(2)
    assert opcode == 0x81 and length < 126
    assert json.loads(raw.read_exactly(length)) == {"client": ["192.0.2.7", 51000], "scheme": "ws"}
    raw.sock.close()


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return {"cert": str(tmp_path / "server.pem"), "ca": str(tmp_path / "ca.pem")}


def complete(response: bytes) -> bool:
    head, found, body = response.partition(b"\r\n\r\n")
    if not found:
        return False
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    return len(body) >= length


def tls_exchange(port: int, header: bytes, cafile: str) -> dict[str, Any]:
    """The PROXY header and the TLS ClientHello in one segment (as a proxy may send them), then a request."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            sock.sendall((header if first else b"") + outgoing.read())
            first = False
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
        tls.write(REQUEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        sock.sendall(outgoing.read())
        received = b""
        while not complete(received):
            data = sock.recv(65536)
            assert data, "closed before the response"
            incoming.write(data)
            try:
                while chunk := tls.read(65536):
                    received += chunk
            except ssl.SSLWantReadError:
                continue
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_tls_after_the_header(run_server, pki, loop):
    srv = server(run_server, ssl_certfile=pki["cert"], loop=loop)
    scope = tls_exchange(srv.port, V1, pki["ca"])
    assert scope["client"] == ["192.0.2.7", 51000]
    assert scope["scheme"] == "https"
    assert tls_exchange(srv.port, v2(command=0), pki["ca"])["client"][0] == "127.0.0.1"


def test_untrusted_peer_is_closed_and_a_trusted_one_served(run_server):
    srv = server(run_server, forwarded_allow_ips="127.0.0.2")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(V1 + REQUEST)
        assert closed_unanswered(sock)
    raw = RawClient.__new__(RawClient)
    raw.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT, source_address=("127.0.0.2", 0))
    raw.buffer = b""
    raw.send(V1)
    assert ask(raw)["client"] == ["192.0.2.7", 51000]
    raw.sock.close()


MALFORMED = {
    "no header": REQUEST,
    "HTTP/2 preface without a header": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS without a header": b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03",
    "v1 bad address": b"PROXY TCP4 192.0.2.777 198.51.100.1 51000 443\r\n" + REQUEST,
    "v1 bad port": b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 443\r\n" + REQUEST,
    "v1 too long": b"PROXY UNKNOWN " + b"a" * 200 + b"\r\n" + REQUEST,
    "v1 LF alone": b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\n" + REQUEST,
    "v2 version 3": b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\0" * 12 + REQUEST,
    "v2 too short for IPv4": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + b"\0" * 4 + REQUEST,
    "v2 too long": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_header_closes_and_the_next_client_is_served(run_server, data):
    srv = server(run_server)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        assert closed_unanswered(sock)
    raw = RawClient(srv.port)
    raw.send(V1)
    assert ask(raw)["client"] == ["192.0.2.7", 51000]
    raw.sock.close()


def test_incomplete_header_is_closed_after_the_request_header_timeout(run_server):
    srv = server(run_server, timeout_request_header=0.3)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(V1[:20])
        assert closed_unanswered(sock)
    raw = RawClient(srv.port)
    raw.send(V1)
    assert ask(raw)["client"] == ["192.0.2.7", 51000]
    raw.sock.close()


def test_with_a_connection_limit(run_server):
    srv = server(run_server, limit_connections=2)
    clients = []
    for port in (1, 2):
        raw = RawClient(srv.port)
        raw.send(f"PROXY TCP4 192.0.2.{port} 198.51.100.1 {port} 443\r\n".encode())
        assert ask(raw)["client"] == [f"192.0.2.{port}", port]
        clients.append(raw)
    third = RawClient(srv.port)
    third.send(V1 + REQUEST)
    clients[0].sock.close()  # a place frees: the third is taken from the backlog
    assert third.read_response().status == 200
    for raw in [*clients[1:], third]:
        raw.sock.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_shutdown_while_a_header_is_awaited(run_server, loop):
    srv = server(run_server, loop=loop)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(V1[:10])
        deadline = time.monotonic() + TIMEOUT
        srv.stop()
        assert time.monotonic() < deadline
        assert closed_unanswered(sock)


def test_http2_over_tls_after_the_header(run_server, pki):
    srv = server(run_server, ssl_certfile=pki["cert"])
    context = ssl.create_default_context(cafile=pki["ca"])
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as raw:
        raw.sendall(v2(family=2, client="2001:db8::5", port=4000))
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                                  (b":authority", b"localhost")], end_stream=True)
            sock.sendall(conn.data_to_send())
            body = b""
            ended = False
            while not ended:
                data = sock.recv(65536)
                assert data, "closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                sock.sendall(conn.data_to_send())
    scope = json.loads(body)
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "https"
    assert scope["client"] == ["2001:db8::5", 4000]


def test_a_unix_socket_peer_is_trusted_with_unix(run_server, tmp_path):
    path = str(tmp_path / "tidegate.sock")
    srv = server(run_server, uds=path, forwarded_allow_ips="unix")
    raw = RawClient(uds=path)
    raw.send(v2())
    assert ask(raw)["client"] == ["192.0.2.7", 51000]
    raw.sock.close()
    srv.stop()
    srv = server(run_server, uds=path, forwarded_allow_ips="127.0.0.1")  # TCP peers only: a UNIX peer is not
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        try:
            sock.sendall(v2() + REQUEST)
        except BrokenPipeError:
            pass  # closed on arrival, before the bytes were sent: a UNIX socket says so on the send
        assert closed_unanswered(sock)

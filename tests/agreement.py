"""A corpus of client input for the sans-IO protocol cores, and what they make of it, as plain data.

``python -m tests.agreement`` prints, as JSON, every event and every byte written for each case: HTTP/1.1 requests
(valid, pipelined, chunked, malformed, fed whole, a byte at a time and in seeded random pieces, then answered),
HTTP/2 connections driven by the ``h2`` client, and WebSocket sessions driven by the ``websockets`` client.
``tests/test_build_agreement.py`` runs it on the compiled build and on the pure one and asks for the same output.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import random
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import h2.config
import h2.connection
import h2.settings
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

import tidegate
from tidegate.protocol.events import Request
from tidegate.protocol.http1 import H1Connection, RequestLimits, ResponseDefaults
from tidegate.protocol.http2 import H2Connection
from tidegate.protocol.websocket import WebSocketSession

Out = list[Any]
_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")


def plain(value: Any) -> Any:
    """An event, exception or value as JSON-able data: its type and public attributes, recursively."""
    if isinstance(value, str):
        return _ADDRESS.sub("0x?", value)  # an object's address in a message differs from run to run
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, BaseException):
        return {"raised": type(value).__name__, "message": str(value)}
    if callable(value):
        return "<callable>"
    fields = {name: getattr(value, name) for name in dir(value)
              if not name.startswith("_") and not callable(getattr(value, name))}
    return {"type": type(value).__name__, **{name: plain(item) for name, item in sorted(fields.items())}}


def attempt(out: Out, call: Callable[[], Any]) -> Any:
    """Call, and record what it returned or raised."""
    try:
        result = call()
    except Exception as exc:
        out.append(plain(exc))
        return None
    out.append(plain(result))
    return result


# ------------------------------------------------------------------------------------------------------ HTTP/1.1

GET = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: corpus\r\n\r\n"
H1_REQUESTS: list[bytes] = [
    GET,
    GET * 3,
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://other.example:8080/x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: b\r\n\r\n" + GET,
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x85abcd",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABk\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\nAccept: */*\r\nAccept: text/html\r\n\r\n",
    # small chunks (joined into one piece per read), a large one between them
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nz\r\n" * 40
    + b"400\r\n" + b"L" * 1024 + b"\r\n" + b"2\r\nzz\r\n" * 3 + b"0\r\n\r\n" + GET,
    # malformed, and the limits
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GE T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(120)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a@b/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"",
]

# app responses: status, headers, body pieces (the last one ends the response)
H1_RESPONSES: list[tuple[Any, Any, list[bytes]]] = [
    (200, [(b"content-type", b"text/plain")], [b"hello"]),
    (200, [(b"Content-Length", b"5")], [b"hel", b"lo"]),
    (204, [], [b""]),
    (304, [(b"etag", b'"x"')], [b""]),
    (200, [(b"connection", b"close"), (b"server", b"app"), (b"date", b"today")], [b"a", b"b", b""]),
    (404, [(b"transfer-encoding", b"chunked")], [b"x" * 100, b""]),
    (599, [[b"x-list", b"pair"]], [b"body"]),
    (200, ((b"x-tuple", b"headers"),), [b""]),
    (200, [(b"content-length", b"2")], [b"abc"]),
    (200, [(b"content-length", b"x")], [b""]),
    (200, [(b"bad name", b"v")], [b""]),
    (200, [(b"x", b"a\r\nb")], [b""]),
    (200, None, [b""]),
    (200, 5, [b""]),
    (200, [(b"a",)], [b""]),
    (103, [], [b""]),
    (1000, [], [b""]),
    ("200", [], [b""]),
]

DEFAULTS = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: Mon, 07 Dec 2026 00:00:00 GMT\r\n")


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8)))) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A request with a few bytes changed, dropped or repeated."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        kind = rng.randrange(4)
        if kind == 0:
            buf[at] = rng.choice(b"\r\n :\x00\x7f\tA0;,")
        elif kind == 1:
            del buf[at]
        elif kind == 2:
            buf[at:at] = buf[at:at + rng.randint(1, 6)]
        else:
            buf[at] = rng.randrange(256)
    return bytes(buf)


def h1_case(chunks: Iterable[bytes], response: tuple[Any, Any, list[bytes]]) -> Out:
    out: Out = []
    writes: list[bytes] = []
    conn = H1Connection(DEFAULTS, writes.append, RequestLimits(body=1 << 20))
    requests: list[Request] = []
    for chunk in chunks:
        events = attempt(out, lambda chunk=chunk: conn.receive_data(chunk))
        requests += [event for event in events or () if isinstance(event, Request)]
    status, headers, bodies = response
    for request in requests:
        attempt(out, functools.partial(conn.start_response, request, status, headers))
        if out[-1] is not None:
            break  # the response was refused (what it raised is recorded)
        for i, body in enumerate(bodies):
            attempt(out, functools.partial(conn.send_body, body, i == len(bodies) - 1))
    out.append(plain(b"".join(writes)))
    out.append({"keep_alive": conn.keep_alive, "broken": conn.broken})
    return out


def http1() -> dict[str, Out]:
    rng = random.Random(20261207)
    cases: dict[str, Out] = {}
    for n, data in enumerate(H1_REQUESTS):
        response = H1_RESPONSES[n % len(H1_RESPONSES)]
        cases[f"h1 {n} whole"] = h1_case([data], response)
        cases[f"h1 {n} bytewise"] = h1_case([data[i:i + 1] for i in range(len(data))] if len(data) < 2000
                                            else pieces(data, rng), response)
        cases[f"h1 {n} pieces"] = h1_case(pieces(data, rng), response)
    for n, response in enumerate(H1_RESPONSES):
        cases[f"h1 response {n}"] = h1_case([GET * 2], response)
    for n in range(400):
        data = mutate(rng.choice(H1_REQUESTS[:16]), rng)
        cases[f"h1 mutated {n}"] = h1_case(pieces(data, rng), H1_RESPONSES[0])
    return cases


# ------------------------------------------------------------------------------------------------------ HTTP/2


def h2_case(drive: Callable[[h2.connection.H2Connection, Callable[[bytes | None], None]], None],
            response_headers: Any = ((b"content-type", b"text/plain"),)) -> Out:
    out: Out = []
    writes: list[bytes | memoryview] = []
    server = H2Connection(writes.append)
    server.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                  validate_outbound_headers=False,
                                                                  normalize_outbound_headers=False))
    client.initiate_connection()

    def exchange(raw: bytes | None = None) -> None:
        data = client.data_to_send() if raw is None else raw
        events = attempt(out, lambda: server.receive_data(data))
        for event in events or ():
            if isinstance(event, Request):
                attempt(out, lambda sid=event.stream_id: server.start_response(sid, 200, list(response_headers)))
                attempt(out, lambda sid=event.stream_id: server.send_body(sid, b"answer " * 3, True))
        wire = b"".join(bytes(chunk) for chunk in writes)
        writes.clear()
        out.append(plain(wire))
        if wire:
            try:
                client.receive_data(wire)
            except Exception as exc:
                out.append(plain(exc))

    exchange()
    drive(client, exchange)
    return out


GET_H2 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/x?y=1"), (b":authority", b"example.com"),
          (b"user-agent", b"corpus")]


def http2() -> dict[str, Out]:
    cases: dict[str, Out] = {}

    def gets(count: int) -> Callable[[Any, Any], None]:
        def drive(client: Any, exchange: Any) -> None:
            for _ in range(count):
                client.send_headers(client.get_next_available_stream_id(), GET_H2, end_stream=True)
            exchange()
        return drive

    def post(client: Any, exchange: Any) -> None:
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"POST"), *GET_H2[1:], (b"content-length", b"10")])
        client.send_data(sid, b"01234")
        exchange()
        client.send_data(sid, b"56789", end_stream=True)
        exchange()

    def bad_headers(headers: list[tuple[bytes, bytes]]) -> Callable[[Any, Any], None]:
        def drive(client: Any, exchange: Any) -> None:
            client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
            exchange()
        return drive

    def raw(data: bytes) -> Callable[[Any, Any], None]:
        def drive(client: Any, exchange: Any) -> None:
            exchange(data)
        return drive

    def control(client: Any, exchange: Any) -> None:
        client.ping(b"12345678")
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
        exchange()
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, GET_H2, end_stream=True)
        exchange()
        client.increment_flow_control_window(1000, stream_id=sid)
        client.increment_flow_control_window(1000)
        exchange()
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, GET_H2)
        client.reset_stream(sid)
        exchange()

    cases["h2 one get"] = h2_case(gets(1))
    cases["h2 many gets"] = h2_case(gets(20))
    cases["h2 post"] = h2_case(post)
    cases["h2 control"] = h2_case(control)
    cases["h2 bad response headers"] = h2_case(gets(1), ((b"Bad Name", b"x"),))
    cases["h2 connection header"] = h2_case(bad_headers([*GET_H2, (b"connection", b"close")]))
    cases["h2 upper-case name"] = h2_case(bad_headers([*GET_H2, (b"X-Upper", b"x")]))
    cases["h2 no path"] = h2_case(bad_headers([h for h in GET_H2 if h[0] != b":path"]))
    cases["h2 pseudo after regular"] = h2_case(bad_headers([*GET_H2[1:], GET_H2[0]]))
    cases["h2 te gzip"] = h2_case(bad_headers([*GET_H2, (b"te", b"gzip")]))
    cases["h2 connect"] = h2_case(bad_headers([(b":method", b"CONNECT"), (b":authority", b"a:1")]))
    # raw frames: (length, type, flags, stream) headers
    cases["h2 ping wrong size"] = h2_case(raw(b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"x" * 7))
    cases["h2 data on stream 0"] = h2_case(raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"))
    cases["h2 even stream"] = h2_case(raw(b"\x00\x00\x00\x01\x05\x00\x00\x00\x02"))
    cases["h2 oversized frame"] = h2_case(raw(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 16385))
    cases["h2 unknown frame"] = h2_case(raw(b"\x00\x00\x03\xfa\x00\x00\x00\x00\x00abc"))
    cases["h2 window overflow"] = h2_case(raw(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\xff\xff"))
    cases["h2 bad hpack"] = h2_case(raw(b"\x00\x00\x02\x01\x05\x00\x00\x00\x01\xff\xff"))
    cases["h2 settings ack with payload"] = h2_case(raw(b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00" * 6))
    return cases


# ------------------------------------------------------------------------------------------------------ WebSocket


def ws_session(deflate: bool) -> tuple[ClientProtocol, WebSocketSession, list[bytes], Out]:
    out: Out = []
    extensions = [ClientPerMessageDeflateFactory()] if deflate else None
    client = ClientProtocol(parse_uri("ws://example/chat"), extensions=extensions, max_size=None)
    client.send_request(client.connect())
    request = H1Connection().receive_data(b"".join(client.data_to_send()))[0]
    writes: list[bytes] = []
    session = WebSocketSession(request, max_size=1 << 16, write=writes.append)
    status, headers = session.accept()
    out.append(plain((status, [(name, value) for name, value in headers if name != b"sec-websocket-accept"])))
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers)
                        + b"\r\n")
    client.events_received()
    return client, session, writes, out


def ws_case(deflate: bool, frames: list[Frame | bytes]) -> Out:
    client, session, writes, out = ws_session(deflate)
    for frame in frames:
        if isinstance(frame, Frame):
            client.send_frame(frame)
            data = b"".join(client.data_to_send())
        else:
            data = frame
        for piece in (data[:3], data[3:]):
            events = attempt(out, lambda piece=piece: session.receive_data(piece))
            for event in events or ():
                text = getattr(event, "text", None)
                if text is not None:
                    attempt(out, lambda text=text: session.send_text(text))
                payload = getattr(event, "data", None)
                if isinstance(payload, bytes):
                    attempt(out, lambda payload=payload: session.send_bytes(payload))
    attempt(out, lambda: session.send_close(1000, "bye"))
    if not deflate:  # a compressed stream's bytes depend on zlib's build, not on ours
        out.append(plain(b"".join(writes)))
    return out


def websocket() -> dict[str, Out]:
    cases: dict[str, Out] = {}
    for deflate in (False, True):
        name = "ws deflate" if deflate else "ws"
        cases[f"{name} text"] = ws_case(deflate, [Frame(Opcode.TEXT, "héllo".encode())])
        cases[f"{name} binary"] = ws_case(deflate, [Frame(Opcode.BINARY, bytes(range(256)))])
        cases[f"{name} fragmented"] = ws_case(deflate, [Frame(Opcode.TEXT, b"ab", fin=False), Frame(Opcode.PING, b"p"),
                                                        Frame(Opcode.CONT, b"cd", fin=False), Frame(Opcode.CONT, b"e")])
        cases[f"{name} bad utf-8"] = ws_case(deflate, [Frame(Opcode.TEXT, b"\xff\xfe")])
        cases[f"{name} too big"] = ws_case(deflate, [Frame(Opcode.BINARY, b"x" * 70000)])
        cases[f"{name} unmasked"] = ws_case(deflate, [b"\x81\x02hi"])
        cases[f"{name} bad opcode"] = ws_case(deflate, [b"\x83\x80abcd"])
        cases[f"{name} continuation first"] = ws_case(deflate, [Frame(Opcode.CONT, b"x")])
        cases[f"{name} long ping"] = ws_case(deflate, [b"\x89\xfe\x00\xc8\x00\x00\x00\x00" + b"x" * 200])
    return cases


def corpus() -> dict[str, Out]:
    return {**http1(), **http2(), **websocket()}


if __name__ == "__main__":
    json.dump({"build": tidegate.BUILD, "cases": corpus()}, sys.stdout, sort_keys=True)

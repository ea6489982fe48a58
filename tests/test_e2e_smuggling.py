"""Strict HTTP/1.1 parsing, end to end: every malformed-input class that request smuggling and header injection
have used (RFC 9112 §6.1, §6.3, §7.1; CVEs in peers), one row each, over a real socket.

For each row: the answer has the status the RFC calls for, the connection is closed after it, nothing of the
request reaches the app, and a client connecting right after is served normally.  Rows marked as served are
well-formed and must be answered by the app, unchanged."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import pytest

from .conftest import RawClient


class Case(NamedTuple):
    data: bytes
    status: int  # what the client is answered; 200: the request is well-formed and the app answers it


H = b"Host: example.com\r\n"
POST = b"POST / HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def get(field: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\n" + H + field + b"\r\n\r\n"


CASES: dict[str, Case] = {
    # ---- message framing: Content-Length and Transfer-Encoding (RFC 9112 §6.1, §6.3)
    "CL and TE": Case(POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE and CL": Case(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    "CL twice, same": Case(POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "CL twice, different": Case(POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "CL list, same": Case(POST + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    "CL list, different": Case(POST + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    "CL +5": Case(POST + b"Content-Length: +5\r\n\r\nabcde", 400),
    "CL 0x5": Case(POST + b"Content-Length: 0x5\r\n\r\nabcde", 400),
    "CL -5": Case(POST + b"Content-Length: -5\r\n\r\nabcde", 400),
    "CL 5_0": Case(POST + b"Content-Length: 5_0\r\n\r\nabcde", 400),
    "CL 1 5": Case(POST + b"Content-Length: 1 5\r\n\r\nabcde", 400),
    "CL VT 5": Case(POST + b"Content-Length: \x0b5\r\n\r\nabcde", 400),
    "CL non-ASCII digit": Case(POST + "Content-Length: \u0665\r\n\r\nabcde".encode(), 400),  # ARABIC-INDIC 5
    "CL empty": Case(POST + b"Content-Length: \r\n\r\n", 400),
    "CL overflow": Case(POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    "CL over the body limit": Case(POST + b"Content-Length: 99999999999\r\n\r\n", 413),
    # OWS around a value is not part of it (RFC 9110 §5.5): "Content-Length:  5" is 5
    "CL with more OWS (served)": Case(POST + b"Content-Length:  5 \r\n\r\nabcde", 200),
    "TE gzip": Case(POST + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    "TE chunked, gzip": Case(POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "TE gzip, chunked": Case(POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "TE gzip + TE chunked": Case(POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                 501),
    "TE chunked twice": Case(POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                             400),
    "TE identity": Case(POST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "TE xchunked": Case(POST + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    "TE chunked with VT": Case(POST + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400),
    "TE obs-fold": Case(POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "TE obs-fold after a value": Case(POST + b"Transfer-Encoding: gzip\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "TE in HTTP/1.0": Case(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE Chunked (served)": Case(POST + b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200),
    # ---- chunked framing (RFC 9112 §7.1)
    "chunk size of 17 hex digits": Case(CHUNKED + b"1" * 17 + b"\r\nabc\r\n0\r\n\r\n", 400),
    "chunk size 0x": Case(CHUNKED + b"0x5\r\nabcde\r\n0\r\n\r\n", 400),
    "chunk size negative": Case(CHUNKED + b"-5\r\nabcde\r\n0\r\n\r\n", 400),
    "chunk size with a space": Case(CHUNKED + b"5 \r\nabcde\r\n0\r\n\r\n", 400),
    "chunk size bare LF": Case(CHUNKED + b"5\nabcde\r\n0\r\n\r\n", 400),
    "no CRLF after chunk data (CVE-2025-43859)": Case(CHUNKED + b"5\r\nabcdeXX0\r\n\r\n", 400),
    "chunk data one byte long": Case(CHUNKED + b"5\r\nabcdef\r\n0\r\n\r\n", 400),
    "LF in chunk extension": Case(CHUNKED + b"5;a=b\nc\r\nabcde\r\n0\r\n\r\n", 400),
    "CR in chunk extension": Case(CHUNKED + b"5;a=b\rc\r\nabcde\r\n0\r\n\r\n", 400),
    "chunk extension (served)": Case(CHUNKED + b"5;name=value\r\nabcde\r\n0\r\n\r\n", 200),
    "TE in trailers": Case(CHUNKED + b"0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "CL in trailers": Case(CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n", 400),
    # ---- field lines (RFC 9112 §5, RFC 9110 §5.5)
    "obs-fold": Case(get(b"X-A: a\r\n b"), 400),
    "obs-fold with a tab": Case(get(b"X-A: a\r\n\tb"), 400),
    "name with a space": Case(get(b"Bad Header: x"), 400),
    "space before the colon": Case(get(b"X-A : x"), 400),
    "tab before the colon": Case(get(b"X-A\t: x"), 400),
    "line starting with a space": Case(get(b" X-A: x"), 400),
    "name with a colon": Case(get(b":X-A: x"), 400),
    "empty name": Case(get(b": x"), 400),
    "name with (": Case(get(b"X(A: x"), 400),
    "name with @": Case(get(b"X@A: x"), 400),
    "name with DEL": Case(get(b"X\x7fA: x"), 400),
    "name with 0xFF": Case(get(b"X\xffA: x"), 400),
    "line without a colon": Case(get(b"X-A"), 400),
    "NUL in a value": Case(get(b"X-A: a\x00b"), 400),
    "CR in a value": Case(get(b"X-A: a\rb"), 400),
    "bare LF in a value": Case(get(b"X-A: a\nb"), 400),
    "bare LF ending the head": Case(b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    "bare LF ending every line": Case(b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    # CVE-2026-44546 (daphne): a value split on Unicode line breaks; control characters are refused, obs-text is not
    "VT in a value": Case(get(b"X-A: a\x0bb"), 400),
    "FF in a value": Case(get(b"X-A: a\x0cb"), 400),
    "FS in a value": Case(get(b"X-A: a\x1cb"), 400),
    "GS in a value": Case(get(b"X-A: a\x1db"), 400),
    "RS in a value": Case(get(b"X-A: a\x1eb"), 400),
    "US in a value": Case(get(b"X-A: a\x1fb"), 400),
    "DEL in a value": Case(get(b"X-A: a\x7fb"), 400),
    "NEL (obs-text) in a value (served)": Case(get(b"X-A: a\x85b"), 200),
    # ---- request line (RFC 9112 §3)
    "method with (": Case(b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method with NUL": Case(b"GET\x00 / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "no method": Case(b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "unknown method token": Case(b"get / HTTP/1.1\r\n" + H + b"\r\n", 501),
    "space in the target": Case(b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "tab in the target": Case(b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400),
    "control character in the target": Case(b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "DEL in the target": Case(b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400),
    "raw 8-bit byte in the target": Case(b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "no target": Case(b"GET  HTTP/1.1\r\n" + H + b"\r\n", 400),
    "authority-form with GET": Case(b"GET example.com:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "asterisk with GET": Case(b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "asterisk with POST": Case(b"POST * HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", 400),
    "asterisk with OPTIONS (served)": Case(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 200),
    "CONNECT": Case(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + get(b"X-B: 1"), 400),
    "CONNECT with an origin-form target": Case(b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-form (served)": Case(b"GET http://example.com/abs?q=1 HTTP/1.1\r\n" + H + b"\r\n", 200),
    "HTTP/1.2, handled as 1.1 (served)": Case(b"GET / HTTP/1.2\r\n" + H + b"\r\n", 200),
    "HTTP/2.0 in a request line": Case(b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "HTTP/3.0": Case(b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    "HTTP/1.10": Case(b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400),
    "lower-case http": Case(b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    "a space after the version": Case(b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    "CR alone ending the request line": Case(b"GET / HTTP/1.1\r" + H + b"\r\n", 400),
    # ---- Host (RFC 9112 §3.2)
    "HTTP/1.1 without Host": Case(b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Host fields": Case(b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    "two different Host fields": Case(b"GET / HTTP/1.1\r\n" + H + b"Host: evil.example\r\n\r\n", 400),
    "Host with a space": Case(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "Host with a path": Case(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "Host with userinfo": Case(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    "HTTP/1.0 without Host (served)": Case(b"GET / HTTP/1.0\r\n\r\n", 200),
}


class Recorder:
    """The app: records each request it sees (method, path, headers, body) and answers 200 with a summary."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self.lock:
            self.requests.append({"method": scope["method"], "path": scope["path"], "query": scope["query_string"],
                                  "headers": scope["headers"], "body": body, "version": scope["http_version"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            seen, self.requests = self.requests, []
            return seen


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest) -> Any:
    from .conftest import ServerThread

    app = Recorder()
    thread = ServerThread(app, loop=str(request.param), limit_request_body=10 ** 9).start()
    yield thread, app
    thread.stop()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_request(server: Any, case: Case) -> None:
    thread, app = server
    app.take()
    with RawClient(thread.port) as client:
        client.send(case.data)
        response = client.read_response()
        assert response.status == case.status, response.body
        if case.status != 200:
            assert response.header(b"connection") == b"close"
            assert client.wait_closed() == b""  # closed after the answer: nothing more is read as a request
            assert app.take() == []  # nothing of it reached the app
        else:
            assert response.body == b"ok"
            assert len(app.take()) == 1
    with RawClient(thread.port) as client:  # the next client is served as usual
        client.send(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert client.read_response().body == b"ok"
    assert [r["path"] for r in app.take()] == ["/next"]


def served(server: Any, data: bytes) -> dict[str, Any]:
    thread, app = server
    app.take()
    with RawClient(thread.port) as client:
        client.send(data)
        assert client.read_response().status == 200
    (request,) = app.take()
    return request


def test_obs_text_reaches_the_app_as_one_opaque_value(server: Any) -> None:
    value = b"a\x85b\xa0c\xe2\x80\xa8d"  # NEL, NBSP, and the UTF-8 of U+2028: never line breaks here
    request = served(server, get(b"X-A: " + value + b"\r\nX-B: 2"))
    assert request["headers"] == [(b"host", b"example.com"), (b"x-a", value), (b"x-b", b"2")]


def test_served_rows_reach_the_app_unchanged(server: Any) -> None:
    assert served(server, CASES["HTTP/1.2, handled as 1.1 (served)"].data)["version"] == "1.1"
    absolute = served(server, CASES["absolute-form (served)"].data)
    assert (absolute["path"], absolute["query"]) == ("/abs", b"q=1")
    assert served(server, CASES["asterisk with OPTIONS (served)"].data)["path"] == "*"
    assert served(server, CASES["CL with more OWS (served)"].data)["body"] == b"abcde"
    assert served(server, CASES["chunk extension (served)"].data)["body"] == b"abcde"
    assert served(server, CASES["TE Chunked (served)"].data)["body"] == b"abc"


def test_data_after_connection_close_is_not_read_as_a_request(server: Any) -> None:
    thread, app = server
    app.take()
    with RawClient(thread.port) as client:
        client.send(b"GET /first HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
                    b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n")
        response = client.read_response()
        assert response.status == 200 and response.header(b"connection") == b"close"
        assert client.wait_closed() == b""
    assert [r["path"] for r in app.take()] == ["/first"]


def test_a_good_request_before_a_bad_one_is_answered_and_the_bad_one_is_not_served(server: Any) -> None:
    thread, app = server
    app.take()
    with RawClient(thread.port) as client:
        client.send(b"GET /good HTTP/1.1\r\n" + H + b"\r\n" + CASES["CL and TE"].data)
        assert client.read_response().status == 200
        assert client.read_response().status == 400
        assert client.wait_closed() == b""
    assert [r["path"] for r in app.take()] == ["/good"]


# ---------------------------------------------------------------------------------------------------- responses


async def bad_response(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Each path makes the app send something a response must not carry."""
    path = scope["path"]
    if path == "/ok":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    status, headers, first, second = {
        "/name-space": (200, [(b"x bad", b"1")], b"SECRET", None),
        "/name-colon": (200, [(b"x:bad", b"1")], b"SECRET", None),
        "/value-crlf": (200, [(b"x-a", b"1\r\nset-cookie: injected=1")], b"SECRET", None),
        "/value-lf": (200, [(b"x-a", b"1\ninjected: 1")], b"SECRET", None),
        "/value-nul": (200, [(b"x-a", b"1\x00")], b"SECRET", None),
        "/value-vt": (200, [(b"x-a", b"1\x0b2")], b"SECRET", None),
        "/value-fs": (200, [(b"x-a", b"1\x1c2")], b"SECRET", None),
        "/two-lengths": (200, [(b"content-length", b"6"), (b"content-length", b"3")], b"SECRET", None),
        "/body-on-204": (204, [], b"SECRET", None),
        "/body-on-304": (304, [], b"SECRET", None),
        "/later-body-on-204": (204, [], b"", b"SECRET"),
    }[path]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if second is None:
        await send({"type": "http.response.body", "body": first})
    else:
        await send({"type": "http.response.body", "body": first, "more_body": True})
        await send({"type": "http.response.body", "body": second})


@pytest.mark.parametrize(("path", "outcome"), [
    ("/name-space", 500), ("/name-colon", 500), ("/value-crlf", 500), ("/value-lf", 500), ("/value-nul", 500),
    ("/value-vt", 500), ("/value-fs", 500), ("/two-lengths", 500),
    ("/body-on-204", "closed"), ("/body-on-304", "closed"), ("/later-body-on-204", "closed"),
])
def test_the_app_cannot_send_an_invalid_response(run_server: Any, path: str, outcome: int | str) -> None:
    import logging

    server = run_server(bad_response)
    logging.getLogger("tidegate.error").disabled = True  # the app's errors are logged: expected here
    try:
        with RawClient(server.port) as client:
            client.send(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            everything = client.read_all()
    finally:
        logging.getLogger("tidegate.error").disabled = False
    assert b"SECRET" not in everything and b"injected" not in everything
    if outcome == 500:
        assert everything.startswith(b"HTTP/1.1 500 ")
    else:  # nothing, or a bodiless head, then the connection ends
        assert everything == b"" or everything.startswith(b"HTTP/1.1 " + path[-3:].encode())
    with RawClient(server.port) as client:
        client.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().body == b"ok"

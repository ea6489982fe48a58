"""The sans-IO HTTP/1.1 connection, without sockets: bytes in → events out; response calls → bytes written."""

from __future__ import annotations

from typing import Any

import h11
import pytest

from tidegate.protocol import http1
from tidegate.protocol.events import Data, EndOfMessage, Preface, ProtocolError, Request, RequestError, Upgrade
from tidegate.protocol.http1 import H1Connection, ResponseDefaults, status_line

# ---------------------------------------------------------------------------------------------------- helpers


def summary(events: list[Any]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples; consecutive Data pieces are joined (how a body is cut is not a behaviour)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, Request):
            out.append(("request", event.method, event.target, event.http_version))
        elif isinstance(event, Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
        elif isinstance(event, EndOfMessage):
            out.append(("end",))
        elif isinstance(event, RequestError):
            out.append(("error", event.status))
        elif isinstance(event, Upgrade):
            out.append(("upgrade", event.trailing))
        else:  # pragma: no cover - a new event kind must be added here
            raise AssertionError(event)
    return out


def feed(data: bytes, conn: H1Connection | None = None) -> list[Any]:
    return (conn or H1Connection()).receive_data(data)


def feed_bytewise(data: bytes, conn: H1Connection | None = None) -> list[Any]:
    conn = conn or H1Connection()
    events: list[Any] = []
    for i in range(len(data)):
        events += conn.receive_data(data[i:i + 1])
    return events


def only_request(events: list[Any]) -> Request:
    requests = [e for e in events if isinstance(e, Request)]
    assert len(requests) == 1, events
    return requests[0]


def error_status(data: bytes, *, bytewise: bool = False) -> int | None:
    events = feed_bytewise(data) if bytewise else feed(data)
    errors = [e.status for e in events if isinstance(e, RequestError)]
    assert len(errors) <= 1
    return errors[0] if errors else None


GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


# ---------------------------------------------------------------------------------------------------- inbound


def test_simple_get() -> None:
    events = feed(b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert summary(events) == [("request", b"GET", b"/index.html?x=1", "1.1"), ("end",)]
    request = events[0]
    assert request.headers == [(b"host", b"example.com")]
    assert request.keep_alive is True
    assert request.expect_continue is False
    assert request.upgrade is None
    assert request.stream_id == 0


def test_header_names_lower_cased_order_and_duplicates_kept() -> None:
    request = only_request(feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Multi: One\r\nAccept: */*\r\nx-multi: Two\r\nX-MULTI: three\r\n\r\n"))
    assert request.headers == [
        (b"host", b"a"), (b"x-multi", b"One"), (b"accept", b"*/*"), (b"x-multi", b"Two"), (b"x-multi", b"three")]


def test_header_values_keep_inner_spaces_and_lose_surrounding_whitespace() -> None:
    request = only_request(feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-A:   two  words \t\r\nX-B:\r\n\r\n"))
    assert request.headers[1:] == [(b"x-a", b"two  words"), (b"x-b", b"")]
    request = only_request(feed(b"GET / HTTP/1.1\r\nHost: a \r\nX-A: b\t\r\nX-B: \t \r\nX-C: c d\r\n\r\n"))
    assert request.headers == [(b"host", b"a"), (b"x-a", b"b"), (b"x-b", b""), (b"x-c", b"c d")]


def test_header_names_are_lowered_past_the_bounds_of_the_names_kept() -> None:
    # names are kept lowered for the next request, up to a count and a length; past them, lowered each time
    long_name = b"X-" + b"Long" * 40
    names = [b"X-Many-%d" % i for i in range(http1._REQUEST_NAMES_MAX + 10)] + [long_name]
    for _ in range(2):
        for name in names:
            request = only_request(feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\n\r\n"))
            assert request.headers == [(b"host", b"a"), (name.lower(), b"v")]
    assert len(http1._request_names) <= http1._REQUEST_NAMES_MAX
    assert long_name not in http1._request_names


SPLIT_CASES = {
    "get": GET,
    "headers": b"GET /a/b?c=d HTTP/1.1\r\nHost: a\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n",
    "content-length": b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n",
    "pipelined": GET + b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi" + GET,
}


@pytest.mark.parametrize("data", SPLIT_CASES.values(), ids=SPLIT_CASES.keys())
def test_request_split_byte_by_byte_parses_as_one_piece(data: bytes) -> None:
    whole = feed(data)
    assert not any(isinstance(e, RequestError) for e in whole)
    assert summary(feed_bytewise(data)) == summary(whole)
    assert [e.headers for e in feed_bytewise(data) if isinstance(e, Request)] == [
        e.headers for e in whole if isinstance(e, Request)]


def test_pipelined_requests_in_one_buffer_come_out_in_order() -> None:
    data = (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert summary(feed(data)) == [
        ("request", b"GET", b"/1", "1.1"), ("end",),
        ("request", b"POST", b"/2", "1.1"), ("data", b"abc"), ("end",),
        ("request", b"PUT", b"/3", "1.1"), ("data", b"de"), ("end",),
        ("request", b"GET", b"/4", "1.1"), ("end",),
    ]


def test_pipelined_request_cut_in_the_middle_completes_with_the_next_read() -> None:
    conn = H1Connection()
    first = conn.receive_data(GET + b"GET /next HTTP/1.1\r\nHo")
    assert summary(first) == [("request", b"GET", b"/", "1.1"), ("end",)]
    assert summary(conn.receive_data(b"st: a\r\n\r\n")) == [("request", b"GET", b"/next", "1.1"), ("end",)]


def test_content_length_body_is_delivered_as_it_arrives() -> None:
    conn = H1Connection()
    assert summary(conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel")) == [
        ("request", b"POST", b"/", "1.1"), ("data", b"hel")]
    assert summary(conn.receive_data(b"lo ")) == [("data", b"lo ")]
    assert summary(conn.receive_data(b"body")) == [("data", b"body"), ("end",)]


def test_zero_content_length_and_no_length_mean_no_body() -> None:
    assert summary(feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")) == [
        ("request", b"POST", b"/", "1.1"), ("end",)]
    assert summary(feed(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")) == [("request", b"POST", b"/", "1.1"), ("end",)]


def test_chunked_body_is_dechunked() -> None:
    events = feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n")
    assert summary(events) == [("request", b"POST", b"/", "1.1"), ("data", b"Wikipedia in\r\n\r\nchunks."), ("end",)]


def test_a_read_of_small_chunks_makes_one_data_event_per_body_not_one_per_chunk() -> None:
    # 10,000 one-byte chunks in one read: an event (and its object) each would cost ~100 bytes a byte of body
    head = b"POST /%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    small = b"1\r\nz\r\n" * 10_000
    large = b"800\r\n" + b"L" * 0x800 + b"\r\n"
    conn = H1Connection()
    events = conn.receive_data(head % 1 + small[:6000])
    assert [type(event) for event in events] == [Request, Data] and events[1].data == b"z" * 1000
    events = conn.receive_data(small[6000:] + large + small[:60] + b"0\r\n\r\n" + head % 2 + small[:60]
                               + b"0\r\n\r\n")
    # the pieces of the read join until a large one, which stays its own; a new request's body starts its own
    assert [type(event) for event in events] == [Data, Data, Data, EndOfMessage, Request, Data, EndOfMessage]
    assert [bytes(event.data) for event in events if type(event) is Data] == [
        b"z" * 9000, b"L" * 0x800, b"z" * 10, b"z" * 10]


def test_chunked_trailers_are_dropped_and_never_reach_the_request_headers() -> None:
    conn = H1Connection()
    events = conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    request = events[0]
    headers_before = list(request.headers)
    events = conn.receive_data(b"0\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n" + GET)
    assert summary(events) == [("end",), ("request", b"GET", b"/", "1.1"), ("end",)]
    assert request.headers == headers_before
    assert events[1].headers == [(b"host", b"example.com")]


def test_a_framing_field_in_chunked_trailers_is_refused() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    assert summary(feed(head + b"Content-Length: 5\r\n\r\n")) == [("error", 400)]


@pytest.mark.parametrize(("version", "expect", "flag"), [
    (b"1.1", b"100-continue", True),
    (b"1.1", b"100-Continue", True),
    (b"1.1", b"something-else", False),
    (b"1.0", b"100-continue", False),  # 100 Continue does not exist in HTTP/1.0
])
def test_expect_100_continue_flag(version: bytes, expect: bytes, flag: bool) -> None:
    request = only_request(feed(b"POST / HTTP/" + version + b"\r\nHost: a\r\nExpect: " + expect +
                                b"\r\nContent-Length: 3\r\n\r\n"))
    assert request.expect_continue is flag


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"1.1", None, True),
    (b"1.1", b"close", False),
    (b"1.1", b"Close", False),
    (b"1.1", b"keep-alive", True),
    (b"1.0", None, False),
    (b"1.0", b"keep-alive", True),
    (b"1.0", b"Keep-Alive", True),
    (b"1.0", b"close", False),
])
def test_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    head = b"GET / HTTP/" + version + b"\r\nHost: a\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    assert only_request(feed(head + b"\r\n")).keep_alive is keep_alive


KNOWN_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
                 b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT", b"SEARCH",
                 b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"MKCALENDAR", b"ACL", b"BIND", b"REBIND", b"UNBIND",
                 b"LINK", b"UNLINK", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"M-SEARCH", b"PURGE", b"SOURCE",
                 b"QUERY"]


SERVED_METHODS = [m for m in KNOWN_METHODS if m != b"CONNECT"]  # CONNECT is refused: see test_protocol_limits.py


@pytest.mark.parametrize("method", SERVED_METHODS, ids=[m.decode() for m in SERVED_METHODS])
def test_every_method_the_parser_knows_reaches_as_a_request(method: bytes) -> None:
    events = feed(method + b" / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert summary(events)[:2] == [("request", method, b"/", "1.1"), ("end",)]


UNKNOWN_METHODS = [b"FOO", b"get", b"Get", b"GETX", b"GE", b"P", b"M-FOO", b"PROPFINDX", b"X_Y.Z~1!",
                   b"DESCRIBE", b"SETUP", b"PLAY", b"FLUSH", b"GET_PARAMETER", b"BREW"]


@pytest.mark.parametrize("method", UNKNOWN_METHODS, ids=[m.decode() for m in UNKNOWN_METHODS])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_a_well_formed_method_the_parser_cannot_carry_gets_501(method: bytes, bytewise: bool) -> None:
    assert error_status(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=bytewise) == 501


def test_an_unknown_method_cut_after_a_known_prefix_gets_501() -> None:
    conn = H1Connection()
    assert conn.receive_data(b"GE") == []
    assert summary(conn.receive_data(b" / HTTP/1.1\r\nHost: a\r\n\r\n")) == [("error", 501)]


def test_the_verdict_on_a_method_waits_for_the_end_of_its_token() -> None:
    conn = H1Connection()
    assert conn.receive_data(b"FO") == []
    assert conn.receive_data(b"OBA") == []
    # then for the end of the request line: an HTTP/1 one gets 501 (another goes to HTTP/2, see below)
    assert conn.receive_data(b"R /") == []
    assert summary(conn.receive_data(b"x HTTP/1.1\r\n")) == [("error", 501)]
    assert conn.broken
    assert conn.receive_data(GET) == []


def test_a_method_longer_than_any_known_gets_501_without_waiting_for_its_end() -> None:
    assert summary(feed(b"X" * 40)) == [("error", 501)]


MALFORMED_METHODS = [b"G@T", b"(GET)", b"GET\t", b" ", b"\x00GET", b"GE\xc3\x89T", b"FOO\r\n"]


@pytest.mark.parametrize("method", MALFORMED_METHODS, ids=repr)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_a_malformed_method_gets_400(method: bytes, bytewise: bool) -> None:
    assert error_status(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=bytewise) == 400


@pytest.mark.parametrize(("second", "status"), [(b"FOO", 501), (b"G@T", 400)])
def test_method_verdict_for_a_request_pipelined_behind_others_in_one_buffer(second: bytes, status: int) -> None:
    data = GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody" + second + b" / HTTP/1.1\r\n\r\n"
    assert summary(feed(data)) == [
        ("request", b"GET", b"/", "1.1"), ("end",), ("request", b"POST", b"/", "1.1"), ("data", b"body"), ("end",),
        ("error", status)]
    assert summary(feed(GET + second + b" / HTTP/1.1\r\nHost: a\r\n\r\n"))[-1] == ("error", status)


def test_method_verdict_behind_a_body_that_began_in_an_earlier_read() -> None:
    conn = H1Connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    assert summary(conn.receive_data(b"cd\r\n\r\nFOO / HTTP/1.1\r\n")) == [("data", b"cd\r\n"), ("end",),
                                                                            ("error", 501)]


MALFORMED = {
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "space in header name": b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : x\r\n\r\n",
    "NUL in header value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
    "control in target": b"GET /\x1b[31m HTTP/1.1\r\nHost: a\r\n\r\n",
    "raw UTF-8 in target": b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    "not HTTP": b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
    "two-digit minor": b"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
    "two-digit major": b"GET / HTTP/11.1\r\nHost: a\r\n\r\n",
    "no minor": b"GET / HTTP/1\r\nHost: a\r\n\r\n",
    "content-length and chunked": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    "negative content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc",
    "chunked not last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "unknown transfer-coding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "HTTP/2 preface with 1.1": b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_and_are_not_delivered(data: bytes) -> None:
    events = feed(data)
    assert summary(events) == [("error", 400)]
    assert events[0].detail


def test_a_request_refused_for_its_body_after_earlier_data_is_not_delivered_either() -> None:
    conn = H1Connection()
    head = conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert summary(head) == [("request", b"POST", b"/", "1.1")]
    # the head went out in an earlier read: only the error is new (the driver owns what happens to the request)
    assert summary(conn.receive_data(b"3\r\nabc\r\nxyz\r\n")) == [("data", b"abc"), ("error", 400)]


def test_options_asterisk() -> None:
    assert summary(feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")) == [("request", b"OPTIONS", b"*", "1.1"),
                                                                       ("end",)]


@pytest.mark.parametrize("target", [b"http://example.com/a/b?c=d", b"https://example.com", b"http://h:8080/?q"])
def test_absolute_form_targets(target: bytes) -> None:
    request = only_request(feed(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"))
    assert request.target == target


@pytest.mark.parametrize(("target", "host"), [
    (b"http://a.example/x", b"a.example"),
    (b"https://a.example:8443?q", b"a.example:8443"),
    (b"http://[::1]:80/", b"[::1]:80"),
])
def test_an_absolute_form_target_gives_the_host_whatever_the_host_field_says(target: bytes, host: bytes) -> None:
    # RFC 9112 §3.2.2: the server ignores the Host field and uses the target's authority
    request = only_request(feed(b"GET " + target + b" HTTP/1.1\r\nHost: b.example\r\nX: 1\r\n\r\n"))
    assert request.headers == [(b"host", host), (b"x", b"1")]
    request = only_request(feed(b"GET " + target + b" HTTP/1.0\r\n\r\n"))
    assert request.headers == [(b"host", host)]


@pytest.mark.parametrize("target", [b"http:///x", b"http://user@a.example/", b"http://a b/", b"http://a\x7fb/"])
def test_an_absolute_form_target_without_a_valid_authority_gets_400(target: bytes) -> None:
    assert summary(feed(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"))[-1] == ("error", 400)


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", None),  # an empty Host is allowed when the URI has no authority
    (b"GET / HTTP/1.0\r\n\r\n", None),  # HTTP/1.0 need not send Host
])
def test_host_header_rules(head: bytes, status: int | None) -> None:
    assert error_status(head) == status


def test_missing_host_detail() -> None:
    assert feed(b"GET / HTTP/1.1\r\n\r\n")[0].detail == "missing Host header"
    assert feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0].detail == "more than one Host header"


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
def test_a_higher_http1_minor_version_is_handled_as_http11(version: bytes) -> None:
    # RFC 9110 §2.5: process it as the highest minor version of that major we speak
    request = only_request(feed(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n"))
    assert request.http_version == "1.1"
    assert request.keep_alive is True
    assert error_status(b"GET / HTTP/" + version + b"\r\n\r\n") == 400  # and it needs a Host, as 1.1 does


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"0.9", b"9.9"])
def test_other_major_versions_get_505(version: bytes) -> None:
    # RFC 9110 §15.6.6: 505 is for a major version the server does not support
    assert error_status(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n") == 505


# Versions in a stream of pipelined requests: the first request of a read that begins with its request line has its
# version read from that line; every other request's is the parser's.  However the stream is cut into reads, each
# request keeps its own version.
_MIXED_VERSIONS = (
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    # header lines that end as a request line of the other version would
    b"GET /b HTTP/1.0\r\nUser-Agent: x HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    b"GET /b2 HTTP/1.1\r\nUser-Agent: x HTTP/1.0\r\nHost: a\r\n\r\n"
    # a body whose bytes end a line as a request line would, right before a request of another version
    b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nx HTTP/1.1\n"
    b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"POST /e HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 11\r\n\r\nx HTTP/1.0\r"
    b"\nGET /f HTTP/1.1\r\nHost: a\r\n\r\n"
    b"\r\nGET /g HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"  # a blank line before a request
    b"GET /h HTTP/1.2\r\nHost: a\r\n\r\n"
    b"POST /i HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nx HTTP/1.1\r\n\r\n0\r\n\r\n"
    b"GET /j HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
)
_MIXED_EXPECTED = [("/a", "1.1"), ("/b", "1.0"), ("/b2", "1.1"), ("/c", "1.1"), ("/d", "1.0"), ("/e", "1.0"),
                   ("/f", "1.1"), ("/g", "1.0"), ("/h", "1.1"), ("/i", "1.1"), ("/j", "1.0")]


def _versions(reads: list[bytes]) -> list[tuple[str, str]]:
    conn = H1Connection(limits=http1.RequestLimits(pipeline=100))
    events: list[Any] = []
    for data in reads:
        events += conn.receive_data(data)
    assert not [e for e in events if isinstance(e, RequestError)], events
    return [(e.target.decode(), e.http_version) for e in events if isinstance(e, Request)]


def test_each_request_of_a_pipelined_stream_has_its_own_version_in_one_read() -> None:
    assert _versions([_MIXED_VERSIONS]) == _MIXED_EXPECTED


def test_each_request_has_its_own_version_however_the_stream_is_cut() -> None:
    for cut in range(1, len(_MIXED_VERSIONS)):
        assert _versions([_MIXED_VERSIONS[:cut], _MIXED_VERSIONS[cut:]]) == _MIXED_EXPECTED, cut
    for size in (1, 2, 3, 7, 10, 11, 13, 50):
        reads = [_MIXED_VERSIONS[i:i + size] for i in range(0, len(_MIXED_VERSIONS), size)]
        assert _versions(reads) == _MIXED_EXPECTED, size


def test_a_read_that_does_not_begin_a_request_tells_no_version() -> None:
    # the head began in the read before: what this read holds where a request line's version would be is not one
    # ("GET /x " is 7 bytes: a version there would begin at the read's 8th byte)
    assert _versions([b"GET /x HTTP/1.0\r\n", b"Y: abcdHTTP/1.1\r\nConnection: keep-alive\r\n\r\n"]) == [("/x", "1.0")]
    assert _versions([b"GET /x HTTP/1.1\r\n", b"Y: abcdHTTP/1.0\r\nHost: a\r\n\r\n"]) == [("/x", "1.1")]
    # nor one that begins inside a body
    assert _versions([b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n",
                      b"GET /abcHTTP/1.1\r\nGET /y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]
                     ) == [("/x", "1.1"), ("/y", "1.0")]


def test_each_request_read_on_its_own_has_its_version() -> None:
    # every request in a read of its own: each read begins with its request line (or the blank line before it)
    starts = [_MIXED_VERSIONS.index(m) for m in (b"GET /a", b"GET /b ", b"GET /b2", b"POST /c", b"GET /d", b"POST /e",
                                                 b"GET /f", b"\r\nGET /g", b"GET /h", b"POST /i", b"GET /j")]
    reads = [_MIXED_VERSIONS[a:b] for a, b in zip(starts, [*starts[1:], len(_MIXED_VERSIONS)], strict=True)]
    assert _versions(reads) == _MIXED_EXPECTED
    # the same, each request alone on a new connection
    for read, expected in zip(reads, _MIXED_EXPECTED, strict=True):
        assert _versions([read]) == [expected]


def test_http2_prior_knowledge_preface_is_handed_to_the_driver() -> None:
    # the driver switches to HTTP/2 (or answers 505 when it does not speak it): the event carries every byte
    frames = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    for chunks in ([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames], [b"PRI * HTT", b"P/2.0\r\n\r\nSM\r\n\r\n" + frames]):
        conn = H1Connection()
        events = [event for chunk in chunks for event in conn.receive_data(chunk)]
        assert len(events) == 1 and isinstance(events[0], Preface)
        assert events[0].data == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames


@pytest.mark.parametrize("version", [b"2.1", b"1.1", b"1.0", b"3.0", b"0.9"])
def test_a_pri_preface_with_another_version_is_refused(version: bytes) -> None:
    for chunks in ([b"PRI * HTTP/" + version + b"\r\n\r\nSM\r\n\r\n"],
                   [b"PRI * HTT", b"P/" + version + b"\r\n\r\nSM\r\n\r\n"]):
        conn = H1Connection()
        events = [event for chunk in chunks for event in conn.receive_data(chunk)]
        assert summary(events) == [("error", 400)] and conn.broken


def test_a_first_line_that_is_no_http1_request_line_goes_to_http2() -> None:
    # HTTP/2 prior knowledge with a broken preface (h2spec http2/3.5/2): the driver answers it in HTTP/2
    for chunks in ([b"INVALID CONNECTION PREFACE\r\n\r\n"], [b"INVALID CONN", b"ECTION PREFACE\r\n"]):
        conn = H1Connection()
        events = [event for chunk in chunks for event in conn.receive_data(chunk)]
        assert len(events) == 1 and isinstance(events[0], Preface) and events[0].data == b"".join(chunks)
    # an unknown method in an HTTP/1 request line is still 501, whatever the reads
    for chunks in ([b"INVALID / HTTP/1.1\r\nHost: a\r\n\r\n"], [b"INVALID / HT", b"TP/1.1\r\n"]):
        conn = H1Connection()
        assert summary([event for chunk in chunks for event in conn.receive_data(chunk)]) == [("error", 501)]


def test_after_a_request_no_first_line_goes_to_http2_whatever_the_reads() -> None:
    # a preface comes first on a connection or not at all (RFC 9113 §3.4): after a request, the line is answered as
    # an HTTP/1.1 one, and the same whether it came in the request's read or in a read of its own
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    frames = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    for line, status in ((b"FOO bar\r\n\r\n", 501), (b"\r\nUser-Agent0 fuzz\r\nAccept: */*\r\n\r\n", 501),
                         (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames, 505)):
        for chunks in ([request + line], [request, line], [request, line[:3], line[3:]]):
            conn = H1Connection()
            events = [event for chunk in chunks for event in conn.receive_data(chunk)]
            assert summary(events)[1:] == [("end",), ("error", status)], chunks
            assert conn.broken


def test_upgrade_request_carries_the_token_and_the_bytes_after_the_head() -> None:
    events = feed(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello")
    assert summary(events) == [("request", b"GET", b"/chat", "1.1"), ("end",), ("upgrade", b"\x81\x05hello")]
    assert events[0].upgrade == b"websocket"


def test_upgrade_header_without_connection_upgrade_is_a_plain_request() -> None:
    events = feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" + GET)
    assert summary(events) == [("request", b"GET", b"/", "1.1"), ("end",)] * 2
    assert events[0].upgrade is None


def test_nothing_is_delivered_after_a_request_error() -> None:
    conn = H1Connection()
    assert summary(conn.receive_data(b"GET / HTTP/1.1\r\n\r\n" + GET)) == [("error", 400)]
    assert conn.broken
    assert conn.receive_data(GET) == []
    assert conn.receive_data(b"more garbage") == []


@pytest.mark.parametrize("first", [
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nConnection: close\r\n\r\n",
], ids=["close", "http10", "close-in-trailers"])
def test_data_after_the_client_said_close_is_ignored_not_answered(first: bytes) -> None:
    conn = H1Connection()
    events = conn.receive_data(first + GET)
    assert summary(events) == [("request", events[0].method, b"/", events[0].http_version), ("end",)]
    assert conn.keep_alive is False
    assert conn.receive_data(GET) == []


def test_an_error_after_good_requests_in_one_buffer_keeps_them() -> None:
    events = feed(GET + GET + b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n")
    assert summary(events) == [("request", b"GET", b"/", "1.1"), ("end",)] * 2 + [("error", 400)]


# ---------------------------------------------------------------------------------------------------- outbound


def request(method: bytes = b"GET", version: str = "1.1", keep_alive: bool = True) -> Request:
    return Request(method, b"/", version, [(b"host", b"a")], keep_alive, False)


class Sink:
    """A connection whose writes are recorded one buffer each."""

    def __init__(self, defaults: ResponseDefaults | None = None) -> None:
        self.writes: list[bytes] = []
        self.conn = H1Connection(defaults, self.writes.append)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def respond(req: Request, status: int, headers: list[tuple[bytes, bytes]], *bodies: bytes,
            defaults: ResponseDefaults | None = None) -> Sink:
    """Start a response and send ``bodies`` (the last one ends it)."""
    sink = Sink(defaults)
    sink.conn.start_response(req, status, headers)
    for i, body in enumerate(bodies):
        sink.conn.send_body(body, i == len(bodies) - 1)
    return sink


def parse_response(data: bytes, method: bytes = b"GET") -> tuple[Any, bytes, str]:
    """Read our response with a real HTTP/1.1 peer (h11): (response, body, "framed" or "closed")."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = None
    body = b""
    ended = "framed"
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return response, body, ended
        elif event is h11.NEED_DATA and ended == "framed":
            client.receive_data(b"")  # the connection closes: only a close-delimited body ends here
            ended = "closed"
        else:  # pragma: no cover
            raise AssertionError(event)


def test_the_same_head_again_is_the_same_bytes() -> None:
    # the fields an app sends again are kept as whole lines: the head comes out the same the second and third time,
    # whether the pairs are tuples or lists, and the fields that change ours (server, date, connection,
    # content-length) keep doing so every time
    req = only_request(feed(GET))
    defaults = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: D\r\n")
    cases = [
        ([(b"Content-Type", b"text/plain"), (b"x-a", b"1"), (b"content-length", b"2")],
         [b"\r\nContent-Type: text/plain\r\nx-a: 1\r\ncontent-length: 2\r\n", b"\r\nserver: tidegate\r\n",
          b"\r\ndate: D\r\n"]),
        ([(b"server", b"app"), (b"x-a", b"1"), (b"date", b"app-date"), (b"connection", b"close")],
         [b"\r\nserver: app\r\nx-a: 1\r\ndate: app-date\r\nconnection: close\r\n"]),
        ([(b"x-a", b"1"), (b"connection", b"keep-alive"), (b"x-b", b"")],
         [b"\r\nx-a: 1\r\nconnection: keep-alive\r\nx-b: \r\n", b"\r\nserver: tidegate\r\n"]),
    ]
    for headers, lines in cases:
        heads = set()
        for pairs in (headers, headers, [list(pair) for pair in headers], list(headers)):
            head = respond(req, 200, pairs, b"ok", defaults=defaults).data  # type: ignore[arg-type]
            heads.add(head)
            _, body, _ = parse_response(head)
            assert body == b"ok"
        assert len(heads) == 1, heads
        head = heads.pop()
        for line in lines:
            assert line in head, (line, head)
        assert head.count(b"\r\nserver: ") == 1 and head.count(b"\r\ndate: ") == 1
    # a content-length kept with its line still frames the response, is still left out of a 204, and a second
    # one is still refused
    for _ in range(3):
        assert b"content-length" not in respond(req, 204, [(b"content-length", b"0"), (b"x-a", b"1")]).data
        with pytest.raises(ProtocolError, match="more than one content-length"):
            respond(req, 200, [(b"content-length", b"2"), (b"x-a", b"1"), (b"content-length", b"2")])
        with pytest.raises(ProtocolError, match="more body than its content-length"):
            respond(req, 200, [(b"content-length", b"2")], b"too long")


def test_content_length_from_the_app_is_respected() -> None:
    sink = respond(request(), 200, [(b"content-type", b"text/plain"), (b"content-length", b"5")], b"hello")
    assert sink.writes == [b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"]
    assert sink.conn.keep_alive
    assert sink.conn.response_complete


def test_content_length_body_in_pieces() -> None:
    sink = respond(request(), 200, [(b"content-length", b"11")], b"hello", b" ", b"", b"world")
    assert sink.data == b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"
    assert sink.conn.keep_alive


def test_more_body_than_content_length_is_refused_and_the_connection_closes() -> None:
    sink = Sink()
    sink.conn.start_response(request(), 200, [(b"content-length", b"3")])
    sink.conn.send_body(b"ab", False)
    with pytest.raises(ProtocolError, match="more body than its content-length"):
        sink.conn.send_body(b"cd", False)
    assert sink.data == b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab"  # the excess is never written
    assert sink.conn.keep_alive is False
    assert sink.conn.response_complete


def test_more_body_than_content_length_in_one_message() -> None:
    sink = Sink()
    sink.conn.start_response(request(), 200, [(b"content-length", b"3")])
    with pytest.raises(ProtocolError):
        sink.conn.send_body(b"abcd", True)
    assert sink.conn.keep_alive is False


def test_less_body_than_content_length_is_refused_and_the_connection_closes() -> None:
    sink = Sink()
    sink.conn.start_response(request(), 200, [(b"content-length", b"10")])
    sink.conn.send_body(b"abc", False)
    with pytest.raises(ProtocolError, match="7 bytes short"):
        sink.conn.send_body(b"", True)
    assert sink.conn.keep_alive is False


def test_a_body_in_one_message_without_content_length_gets_one() -> None:
    sink = respond(request(), 200, [(b"content-type", b"text/plain")], b"hello")
    assert sink.writes == [b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"]
    assert respond(request(), 200, [], b"").data == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def test_streamed_body_is_chunked_for_http11() -> None:
    sink = respond(request(), 200, [], b"abc", b"", b"0123456789abcdef", b"de")
    assert sink.writes == [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"10\r\n0123456789abcdef\r\n",
        b"2\r\nde\r\n0\r\n\r\n",
    ]  # an empty piece in the middle writes nothing (an empty chunk would end the body)
    assert sink.conn.keep_alive
    response, body, ended = parse_response(sink.data)
    assert (response.status_code, body, ended) == (200, b"abc0123456789abcdefde", "framed")


def test_streamed_body_ending_with_an_empty_piece() -> None:
    sink = respond(request(), 200, [], b"", b"abc", b"")
    assert sink.data == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


def test_streamed_body_for_http10_is_close_delimited() -> None:
    sink = respond(request(version="1.0", keep_alive=True), 200, [(b"x-a", b"1")], b"abc", b"def")
    assert sink.data == b"HTTP/1.0 200 OK\r\nx-a: 1\r\nconnection: close\r\n\r\nabcdef"
    assert sink.conn.keep_alive is False
    response, body, ended = parse_response(sink.data)
    assert (response.http_version, body, ended) == (b"1.0", b"abcdef", "closed")


def test_http10_keep_alive_is_announced_when_kept() -> None:
    sink = respond(request(version="1.0", keep_alive=True), 200, [(b"content-length", b"2")], b"ok")
    assert sink.data == b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok"
    assert sink.conn.keep_alive


def test_http10_without_keep_alive_closes() -> None:
    sink = respond(request(version="1.0", keep_alive=False), 200, [], b"ok")
    assert sink.data == b"HTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    assert sink.conn.keep_alive is False


def test_connection_close_from_the_client_is_answered_with_close() -> None:
    sink = respond(request(keep_alive=False), 200, [], b"ok")
    assert b"connection: close\r\n" in sink.data
    assert sink.conn.keep_alive is False


@pytest.mark.parametrize("headers", [[(b"content-length", b"5")], []], ids=["with-length", "without"])
def test_head_response_keeps_the_head_and_drops_the_body(headers: list[tuple[bytes, bytes]]) -> None:
    sink = respond(request(b"HEAD"), 200, headers, b"hello")
    expected = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    assert sink.data == expected
    assert sink.conn.keep_alive
    response, body, ended = parse_response(sink.data, method=b"HEAD")
    assert (response.status_code, body, ended) == (200, b"", "framed")


def test_head_response_streamed_drops_every_piece() -> None:
    sink = respond(request(b"HEAD"), 200, [], b"a", b"b", b"")
    assert sink.data == b"HTTP/1.1 200 OK\r\n\r\n"
    assert sink.conn.response_complete


def test_204_has_no_body_and_no_content_length() -> None:
    sink = respond(request(), 204, [(b"x-a", b"1"), (b"content-length", b"0"), (b"x-b", b"2")], b"")
    assert sink.data == b"HTTP/1.1 204 No Content\r\nx-a: 1\r\nx-b: 2\r\n\r\n"
    assert sink.conn.keep_alive


def test_a_body_on_204_is_refused() -> None:
    sink = Sink()
    sink.conn.start_response(request(), 204, [])
    with pytest.raises(ProtocolError, match="204 or 304"):
        sink.conn.send_body(b"x", True)
    assert sink.data == b""
    assert sink.conn.keep_alive is False


def test_304_keeps_its_content_length_and_sends_no_body() -> None:
    sink = respond(request(), 304, [(b"etag", b'"x"'), (b"content-length", b"1234")], b"")
    assert sink.data == b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\ncontent-length: 1234\r\n\r\n'
    assert sink.conn.keep_alive
    with pytest.raises(ProtocolError):
        respond(request(), 304, [], b"body")


@pytest.mark.parametrize("bad", [b"a\rb", b"a\nb", b"a\x00b", b"\r\nSet-Cookie: evil=1", b"x" * 100 + b"\n"],
                         ids=["CR", "LF", "NUL", "injection", "long"])
def test_cr_lf_nul_in_a_header_value_is_refused_and_nothing_is_written(bad: bytes) -> None:
    sink = Sink()
    with pytest.raises(ProtocolError, match="CR, LF or NUL"):
        sink.conn.start_response(request(), 200, [(b"x-ok", b"fine"), (b"x-bad", bad)])
    assert sink.writes == []
    assert not sink.conn.response_started
    # the connection can still answer with an error of its own
    assert sink.conn.error_response(500).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


def test_a_value_seen_valid_before_does_not_let_a_bad_one_through() -> None:
    respond(request(), 200, [(b"x-a", b"cached-value")], b"")
    with pytest.raises(ProtocolError):
        respond(request(), 200, [(b"x-a", b"cached-value\r\n")], b"")


@pytest.mark.parametrize("name", [b"bad name", b"bad:name", b"", b"x\r\ny", b"caf\xc3\xa9", b"(x)", b"a/b",
                                  b"x\x00"], ids=repr)
def test_invalid_header_names_are_refused(name: bytes) -> None:
    sink = Sink()
    with pytest.raises(ProtocolError, match="invalid header name"):
        sink.conn.start_response(request(), 200, [(name, b"v")])
    assert sink.writes == []


@pytest.mark.parametrize("header", [("x-a", b"v"), (b"x-a", "v"), ("content-length", b"1"),
                                    (b"content-length", "1"), (b"server", "me"), ("x", "y")], ids=repr)
def test_str_instead_of_bytes_is_refused_with_a_clear_message(header: tuple[Any, Any]) -> None:
    sink = Sink()
    with pytest.raises(ProtocolError, match=r"bytes|byte string"):
        sink.conn.start_response(request(), 200, [header])
    assert sink.writes == []


@pytest.mark.parametrize("headers", [None, [(b"a",)], [(b"a", b"b", b"c")], [b"ab"], 5], ids=repr)
def test_headers_of_the_wrong_shape_are_refused(headers: Any) -> None:
    with pytest.raises(ProtocolError, match="pairs"):
        Sink().conn.start_response(request(), 200, headers)


@pytest.mark.parametrize("value", [b"-1", b"1.5", b" 5", b"0x10", b"", b"5,5"])
def test_a_content_length_that_is_not_digits_is_refused(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="content-length"):
        Sink().conn.start_response(request(), 200, [(b"content-length", value)])


def test_a_second_content_length_is_refused() -> None:
    with pytest.raises(ProtocolError, match="more than one content-length"):
        Sink().conn.start_response(request(), 200, [(b"content-length", b"2"), (b"Content-Length", b"2")])


def test_the_apps_transfer_encoding_is_dropped() -> None:
    sink = respond(request(), 200, [(b"Transfer-Encoding", b"chunked"), (b"x-a", b"1")], b"hello")
    assert sink.data == b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
    sink = respond(request(), 200, [(b"transfer-encoding", b"gzip")], b"ab", b"c")
    assert sink.data.count(b"transfer-encoding") == 1
    assert b"transfer-encoding: chunked\r\n" in sink.data


def test_connection_close_from_the_app_ends_keep_alive() -> None:
    sink = respond(request(), 200, [(b"Connection", b"close")], b"ok")
    assert sink.data == b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok"
    assert sink.conn.keep_alive is False


DEFAULTS = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n",
                            extra=b"x-extra: 1\r\n")


@pytest.mark.parametrize(("app_headers", "expected"), [
    ([], [b"server: tidegate", b"date: Thu, 01 Jan 2026 00:00:00 GMT", b"x-extra: 1"]),
    ([(b"Server", b"mine")], [b"Server: mine", b"date: Thu, 01 Jan 2026 00:00:00 GMT", b"x-extra: 1"]),
    ([(b"date", b"then")], [b"date: then", b"server: tidegate", b"x-extra: 1"]),
    ([(b"server", b"mine"), (b"date", b"then")], [b"server: mine", b"date: then", b"x-extra: 1"]),
], ids=["defaults", "app-server", "app-date", "both"])
def test_default_headers_unless_the_app_sets_them(app_headers: list[tuple[bytes, bytes]],
                                                  expected: list[bytes]) -> None:
    sink = respond(request(), 200, app_headers, b"", defaults=DEFAULTS)
    head = sink.data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 200 OK"
    assert sorted(head[1:]) == sorted([*expected, b"content-length: 0"])


def test_date_refresh_reaches_the_next_response() -> None:
    defaults = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: one\r\n")
    assert b"date: one\r\n" in respond(request(), 200, [], b"", defaults=defaults).data
    defaults.set_date(b"date: two\r\n")
    data = respond(request(), 200, [], b"", defaults=defaults).data
    assert b"date: two\r\n" in data
    assert b"server: tidegate\r\n" in data


@pytest.mark.parametrize("status", [100, 199, 101, 0, 99, 600, 999, 1000, -200, "200", 200.5, None, True])
def test_a_final_status_must_be_an_int_from_200_to_599(status: Any) -> None:
    sink = Sink()
    with pytest.raises(ProtocolError):
        sink.conn.start_response(request(), status, [])
    assert not sink.conn.response_started


@pytest.mark.parametrize(("status", "line"), [(200, b"HTTP/1.1 200 OK\r\n"), (418, b"HTTP/1.1 418 I'm a Teapot\r\n"),
                                              (299, b"HTTP/1.1 299 \r\n"), (599, b"HTTP/1.1 599 \r\n")])
def test_status_lines(status: int, line: bytes) -> None:
    assert respond(request(), status, [], b"").data.startswith(line)
    assert status_line(status) == line


def test_informational_100_and_103() -> None:
    conn = H1Connection()
    assert conn.informational(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.informational(103, [(b"link", b"</style.css>; rel=preload; as=style"),
                                    (b"link", b"</app.js>; rel=preload")]) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n"
        b"link: </app.js>; rel=preload\r\n\r\n")
    assert not conn.response_started


@pytest.mark.parametrize("status", [101, 200, 99, 204])
def test_informational_refuses_other_statuses(status: int) -> None:
    with pytest.raises(ProtocolError):
        H1Connection().informational(status)


def test_informational_refuses_bad_headers_and_comes_only_before_the_response() -> None:
    with pytest.raises(ProtocolError):
        H1Connection().informational(103, [(b"link", b"a\r\nb")])
    with pytest.raises(ProtocolError):
        H1Connection().informational(103, [(b"bad name", b"a")])
    sink = Sink()
    sink.conn.start_response(request(), 200, [])
    sink.conn.send_body(b"head and a first piece are out", False)
    with pytest.raises(ProtocolError):
        sink.conn.informational(100)


def test_error_response_format() -> None:
    conn = H1Connection(DEFAULTS)
    data = conn.error_response(400, "missing Host header")
    body = b"Bad Request: missing Host header\n"
    assert data == (b"HTTP/1.1 400 Bad Request\r\nserver: tidegate\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                    b"x-extra: 1\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n" % len(body) + body)
    assert conn.keep_alive is False
    assert conn.response_complete


def test_error_response_without_detail_and_with_an_unusual_status() -> None:
    assert H1Connection().error_response(505).endswith(b"\r\n\r\nHTTP Version Not Supported\n")
    assert H1Connection().error_response(501, "caf\xe9").endswith(b"Not Implemented: caf\\xe9\n")
    assert H1Connection().error_response(599).startswith(b"HTTP/1.1 599 \r\n")


def test_large_bodies_are_written_as_their_own_buffers_in_order() -> None:
    big = b"x" * 20000
    sink = respond(request(), 200, [(b"content-length", b"40005")], big, b"small", big)
    assert sink.writes[0] == b"HTTP/1.1 200 OK\r\ncontent-length: 40005\r\n\r\n"
    assert sink.writes[1] is big  # handed over, not copied
    assert sink.writes[2:] == [b"small", big]

    sink = respond(request(), 200, [], big, b"mid", big, b"")
    assert sink.writes[0] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4e20\r\n"
    assert sink.writes[1] is big
    assert sink.writes[2:] == [b"\r\n", b"3\r\nmid\r\n", b"4e20\r\n", big, b"\r\n", b"0\r\n\r\n"]
    _, body, ended = parse_response(sink.data)
    assert (body, ended) == (big + b"mid" + big, "framed")

    sink = respond(request(), 200, [], b"a", big)
    assert sink.writes[-3:] == [b"4e20\r\n", big, b"\r\n0\r\n\r\n"]

    sink = respond(request(), 200, [], big)  # one message: a content-length, then the body as its own buffer
    assert sink.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 20000\r\n\r\n", big]


def test_response_order_is_enforced() -> None:
    sink = Sink()
    with pytest.raises(ProtocolError, match="not started"):
        sink.conn.send_body(b"x", True)
    sink.conn.start_response(request(), 200, [])
    assert not sink.conn.response_started  # the head waits for the first body piece
    with pytest.raises(ProtocolError, match="already started"):
        sink.conn.start_response(request(), 200, [])
    sink.conn.send_body(b"x", True)
    assert sink.conn.response_started and sink.conn.response_complete
    with pytest.raises(ProtocolError, match="complete"):
        sink.conn.send_body(b"y", True)


def test_next_response_answers_pipelined_requests_in_turn() -> None:
    sink = Sink()
    conn = sink.conn
    requests = [e for e in conn.receive_data(GET + GET) if isinstance(e, Request)]
    for i, req in enumerate(requests):
        conn.start_response(req, 200, [])
        conn.send_body(b"%d" % i, True)
        conn.next_response()
    assert sink.data == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n0" * 1 + \
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"
    assert conn.keep_alive


def test_a_failed_response_ends_keep_alive_for_the_next() -> None:
    sink = Sink()
    sink.conn.start_response(request(), 200, [(b"content-length", b"5")])
    with pytest.raises(ProtocolError):
        sink.conn.send_body(b"abc", True)
    sink.conn.next_response()
    sink.conn.start_response(request(), 200, [])
    sink.conn.send_body(b"", True)
    assert b"connection: close\r\n" in sink.writes[-1]


def test_te_trailers_in_chunked_trailers_does_not_reach_the_next_request() -> None:
    conn = H1Connection()
    events = conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nTE: trailers\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    requests = [e for e in events if isinstance(e, Request)]
    assert [r.target for r in requests] == [b"/", b"/next"]
    assert not requests[1].trailers


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"upgrade"])
def test_a_request_with_connection_close_gets_connection_close_whatever_the_app_set(value: bytes) -> None:
    sink = respond(request(keep_alive=False), 200, [(b"connection", value), (b"content-length", b"2")], b"ok")
    head = sink.data.split(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head
    assert head.count(b"\r\nconnection:") == 1
    assert not sink.conn.keep_alive


def test_the_apps_connection_header_stands_on_a_keep_alive_connection() -> None:
    sink = respond(request(), 200, [(b"connection", b"keep-alive"), (b"content-length", b"2")], b"ok")
    assert b"\r\nconnection: keep-alive\r\n" in sink.data
    assert sink.conn.keep_alive

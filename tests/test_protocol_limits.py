"""Limits of the sans-IO HTTP/1.1 connection (request line, header section, field count, body, pipelined bytes) and
its strict rules, without sockets.  The same behaviours end to end: test_e2e_limits.py, test_e2e_smuggling.py."""

from __future__ import annotations

from typing import Any

import pytest

from tidegate.asgi.http import HTTPExchange, Stream
from tidegate.protocol.events import Data, EndOfMessage, ProtocolError, Request, RequestError, Upgrade
from tidegate.protocol.http1 import H1Connection, RequestLimits

from .test_protocol_http1 import GET, feed, only_request, summary


def conn_with(**limits: Any) -> H1Connection:
    return H1Connection(limits=RequestLimits(**limits))


def feed_pieces(conn: H1Connection, data: bytes, size: int) -> list[Any]:
    events: list[Any] = []
    for i in range(0, len(data), size):
        events += conn.receive_data(data[i:i + size])
    return events


def errors(events: list[Any]) -> list[int]:
    return [e.status for e in events if isinstance(e, RequestError)]


def head_with_fields(fields: list[tuple[bytes, bytes]], target: bytes = b"/") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


def fields_of_size(size: int) -> list[tuple[bytes, bytes]]:
    """Header fields whose section counts exactly ``size`` bytes (name + value + 4 per field), Host first."""
    fields = [(b"host", b"a")]  # 9
    rest = size - 9
    while rest:
        value_size = min(rest - 5, 1000) if rest - 5 > 1000 else rest - 5
        fields.append((b"x", b"v" * value_size))
        rest -= 5 + value_size
    return fields


PIECES = [None, 1, 7, 1000]  # one read, or reads of that many bytes
PIECE_IDS = ["whole", "bytewise", "7-byte reads", "1000-byte reads"]


def run(data: bytes, piece: int | None, **limits: Any) -> list[Any]:
    conn = conn_with(**limits)
    return conn.receive_data(data) if piece is None else feed_pieces(conn, data, piece)


# ---------------------------------------------------------------------------------------------------- request line


@pytest.mark.parametrize("piece", PIECES, ids=PIECE_IDS)
def test_a_target_at_the_limit_passes_one_byte_more_gets_414(piece: int | None) -> None:
    target = b"/" + b"a" * 199
    assert summary(run(head_with_fields([(b"host", b"a")], target), piece, line=200)) == [
        ("request", b"GET", target, "1.1"), ("end",)]
    assert errors(run(head_with_fields([(b"host", b"a")], target + b"a"), piece, line=200)) == [414]


def test_414_comes_before_the_end_of_a_target_that_never_ends() -> None:
    conn = conn_with(line=8192)
    sent = conn.receive_data(b"GET /")
    assert sent == []
    received = 5
    while True:
        events = conn.receive_data(b"a" * 1000)
        received += 1000
        if events:
            break
        assert received < 20000
    assert summary(events) == [("error", 414)]
    assert received <= 8192 + 1000  # refused within one read of the limit: nothing more is kept
    assert conn.broken and not conn.in_head


# ---------------------------------------------------------------------------------------------------- header section


@pytest.mark.parametrize("piece", PIECES, ids=PIECE_IDS)
def test_a_header_section_at_the_limit_passes_one_byte_more_gets_431(piece: int | None) -> None:
    at_limit = fields_of_size(3000)
    request = [e for e in run(head_with_fields(at_limit), piece, fields=3000) if isinstance(e, Request)]
    assert len(request) == 1 and request[0].headers == at_limit
    over = fields_of_size(3001)
    assert errors(run(head_with_fields(over), piece, fields=3000)) == [431]


def test_a_field_value_that_never_ends_is_refused_within_a_read_of_the_limit() -> None:
    # the parser keeps a field until it is complete: the connection must stop it growing
    conn = conn_with(fields=65536)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    received = 0
    events: list[Any] = []
    while not events:
        events = conn.receive_data(b"v" * 4096)
        received += 4096
        assert received < 1_000_000
    assert summary(events) == [("error", 431)]
    assert received <= 65536 + 4096


def test_default_limits() -> None:
    limits = RequestLimits()
    assert (limits.line, limits.fields, limits.field_count, limits.body, limits.pipeline) == (
        8192, 65536, 100, 1024 ** 3, 16)
    conn = H1Connection()
    assert errors(conn.receive_data(head_with_fields([(b"host", b"a")], b"/" + b"a" * 8192))) == [414]
    assert errors(H1Connection().receive_data(head_with_fields(fields_of_size(65537)))) == [431]
    assert errors(H1Connection().receive_data(head_with_fields([(b"host", b"a")] + [(b"x", b"1")] * 100))) == [431]
    request = head_with_fields([(b"host", b"a")] + [(b"x", b"1")] * 99)
    assert summary(H1Connection().receive_data(request))[-1] == ("end",)


def test_requests_before_a_head_in_the_same_read_do_not_count_against_it() -> None:
    # 100 small pipelined requests and the start of a head near the limit: nothing is refused
    conn = conn_with(fields=2000, pipeline=1000)
    fields = fields_of_size(1990)
    head = head_with_fields(fields)
    events = conn.receive_data(GET * 100 + head[:-100])
    assert errors(events) == [] and len(events) == 200 and conn.in_head
    events = conn.receive_data(head[-100:])
    assert summary(events) == [("request", b"GET", b"/", "1.1"), ("end",)]
    assert not conn.in_head


@pytest.mark.parametrize("piece", PIECES, ids=PIECE_IDS)
def test_field_count_at_the_limit_passes_one_more_gets_431(piece: int | None) -> None:
    fields = [(b"host", b"a")] + [(b"x-%d" % i, b"1") for i in range(19)]
    assert summary(run(head_with_fields(fields), piece, field_count=20))[-1] == ("end",)
    assert errors(run(head_with_fields([*fields, (b"y", b"2")]), piece, field_count=20)) == [431]


def test_too_many_fields_are_refused_before_the_head_ends() -> None:
    conn = conn_with(field_count=100)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    events: list[Any] = []
    sent = 0
    while not events:
        events = conn.receive_data(b"x: 1\r\n" * 50)
        sent += 50
        assert sent < 10000
    assert summary(events) == [("error", 431)] and sent <= 150


def test_in_head() -> None:
    conn = H1Connection()
    assert not conn.in_head
    conn.receive_data(b"\r\n")  # an empty line before a request is no head yet
    assert not conn.in_head
    conn.receive_data(b"GE")
    assert conn.in_head
    conn.receive_data(GET[2:-1])
    assert conn.in_head
    conn.receive_data(b"\n")
    assert not conn.in_head


# ---------------------------------------------------------------------------------------------------- body


def post_head(length: int, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


def test_a_content_length_over_the_limit_gets_413_before_any_body() -> None:
    assert summary(conn_with(body=1000).receive_data(post_head(1001))) == [("error", 413)]
    # with Expect: 100-continue the request never reaches the app, so no 100 Continue is sent
    assert summary(conn_with(body=1000).receive_data(post_head(1001, b"Expect: 100-continue\r\n"))) == [
        ("error", 413)]
    assert summary(conn_with(body=1000).receive_data(post_head(1000) + b"x" * 1000)) == [
        ("request", b"POST", b"/", "1.1"), ("data", b"x" * 1000), ("end",)]


def test_body_limit_zero_is_no_limit() -> None:
    events = conn_with(body=0).receive_data(post_head(2 ** 40))
    assert summary(events) == [("request", b"POST", b"/", "1.1")]


def test_default_body_limit_is_one_gibibyte() -> None:
    assert summary(H1Connection().receive_data(post_head(1024 ** 3 + 1))) == [("error", 413)]
    assert summary(H1Connection().receive_data(post_head(1024 ** 3))) == [("request", b"POST", b"/", "1.1")]


class _Stream(Stream):
    def __init__(self) -> None:
        self.write_paused = False
        self.reading_paused = False


def test_the_exchange_refuses_body_past_its_limit() -> None:
    exchange = HTTPExchange(_Stream(), {}, body_limit=10)  # type: ignore[arg-type]
    assert exchange.on_data(b"x" * 6)
    assert exchange.on_data(b"x" * 4)
    assert not exchange.on_data(b"x")  # the piece that crosses the limit is dropped
    assert exchange.buffered == 10
    unlimited = HTTPExchange(_Stream(), {})  # type: ignore[arg-type]
    assert unlimited.on_data(b"x" * 10_000_000)


def chunked_head() -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_trailer_fields_that_never_end_are_refused() -> None:
    conn = conn_with(fields=10000)
    conn.receive_data(chunked_head() + b"3\r\nabc\r\n0\r\nX-Trailer: ")
    received = 0
    events: list[Any] = []
    while not events:
        events = conn.receive_data(b"t" * 1000)
        received += 1000
        assert received < 100_000
    assert summary(events) == [("error", 400)] and received <= 10000 + 1000


def test_chunk_size_lines_in_reads_of_their_own_are_not_counted_as_framing_overflow() -> None:
    conn = conn_with(fields=1000)
    conn.receive_data(chunked_head())
    for _ in range(2000):  # 2000 size lines (8000 bytes), each followed by its data in a read of its own
        assert conn.receive_data(b"2\r\n") == []
        assert summary(conn.receive_data(b"ab\r\n")) == [("data", b"ab")]
    assert summary(conn.receive_data(b"0\r\n\r\n")) == [("end",)]


def test_a_long_chunk_extension_is_refused() -> None:
    conn = conn_with(fields=1000)
    conn.receive_data(chunked_head() + b"3;ext=")
    events: list[Any] = []
    for _ in range(20):
        events = conn.receive_data(b"e" * 100)
        if events:
            break
    assert summary(events) == [("error", 400)]


def extension_flood(count: int, size: int = 8000) -> bytes:
    """``count`` chunks of one byte, each size line carrying an extension of ``size`` bytes."""
    return b"".join(b"1;e=" + b"x" * size + b"\r\nz\r\n" for _ in range(count))


@pytest.mark.parametrize("piece", [None, 1000, 8011, 65536, 300_000])
def test_chunk_extensions_count_against_the_header_section_limit_whatever_the_reads(piece: int | None) -> None:
    # 3.2 MB of 8 KB extensions, each before a 1-byte chunk, under an 8 KiB header limit and a 1 KiB body limit
    conn = conn_with(fields=8192, body=1024)
    conn.receive_data(chunked_head())
    flood = extension_flood(400)
    events: list[Any] = []
    received = 0
    step = piece or len(flood)
    while received < len(flood) and not conn.broken:
        events += conn.receive_data(flood[received:received + step])
        received += step
    assert errors(events) == [400] and conn.broken
    # refused within one read of the limit (a read over 64 KiB is parsed a slice at a time)
    data = sum(len(e.data) for e in events if isinstance(e, Data))
    assert data * 8011 <= 8192 + min(step, 65536) + 8011


@pytest.mark.parametrize("piece", [None, 1, 5, 4096])
def test_a_body_of_one_byte_chunks_and_short_extensions_is_not_refused(piece: int | None) -> None:
    chunks = b"".join(b"1;a=b\r\nz\r\n" for _ in range(5000)) + b"0;last\r\nTrailer-Field: 1\r\n\r\n"
    events = run(chunked_head() + chunks, piece, fields=1000)
    assert not errors(events)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == b"z" * 5000
    assert summary(events)[-1] == ("end",)


def test_requests_after_a_chunked_body_in_the_same_read_are_not_counted_as_its_extensions() -> None:
    big_head = head_with_fields(fields_of_size(900))
    data = b"3\r\nabc\r\n0\r\n\r\n" + big_head * 20
    for piece in (None, 700, 5000):
        conn = conn_with(fields=1000)
        conn.receive_data(chunked_head() + b"2\r\nab\r\n")  # the next read begins inside a chunked body
        events = conn.receive_data(data) if piece is None else feed_pieces(conn, data, piece)
        assert not errors(events)
        assert len([e for e in events if isinstance(e, Request)]) == 20


@pytest.mark.parametrize("piece", PIECES, ids=PIECE_IDS)
def test_a_header_field_over_the_field_size_limit_gets_431(piece: int | None) -> None:
    # gunicorn's --limit-request-field_size: a field's name and value (the section's own limit still applies)
    fields = [(b"host", b"a"), (b"x-token", b"t" * 93)]  # 7 + 93 = 100 bytes
    assert summary(run(head_with_fields(fields), piece, field=100))[-1] == ("end",)
    over = [(b"host", b"a"), (b"x-token", b"t" * 94)]
    assert errors(run(head_with_fields(over), piece, field=100)) == [431]
    assert summary(run(head_with_fields(over), piece))[-1] == ("end",)  # 0: no limit of its own


# ---------------------------------------------------------------------------------------------------- pipelining


def test_a_flood_of_pipelined_requests_is_parsed_only_as_far_as_may_be_queued() -> None:
    conn = conn_with(pipeline=16)
    flood = GET * 20_000  # 780 KB in one read
    events = conn.receive_data(flood)
    delivered = len([e for e in events if isinstance(e, Request)])
    # at most one small slice past the queue's depth: a few dozen requests, not the thousands a 64 KiB slice holds
    assert 16 <= delivered <= 16 + 1024 // len(GET) + 1
    assert conn.held
    total = delivered
    while conn.held:
        got = conn.receive_data(b"")
        assert got
        total += len([e for e in got if isinstance(e, Request)])
    assert total == 20_000


def test_bytes_arriving_while_some_are_held_are_parsed_after_them() -> None:
    conn = conn_with(pipeline=2)
    first = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5000)]
    events = conn.receive_data(b"".join(first))
    assert conn.held
    events += conn.receive_data(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    while conn.held:
        events += conn.receive_data(b"")
    targets = [e.target for e in events if isinstance(e, Request)]
    assert targets == [b"/%d" % i for i in range(5000)] + [b"/last"]


def test_a_large_read_of_body_data_is_delivered_whole_in_slices() -> None:
    conn = H1Connection()
    body = bytes(range(256)) * 1024  # 256 KiB
    events = conn.receive_data(post_head(len(body)) + body + GET)
    assert summary(events) == [("request", b"POST", b"/", "1.1"), ("data", body), ("end",),
                               ("request", b"GET", b"/", "1.1"), ("end",)]
    assert not conn.held


def test_an_upgrade_in_a_later_slice_keeps_every_byte_after_it() -> None:
    conn = H1Connection()
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    body = b"x" * 100_000
    after = bytes(range(256)) * 400
    events = conn.receive_data(post_head(len(body)) + body + upgrade + after)
    assert isinstance(events[-1], Upgrade) and events[-1].trailing == after
    assert [type(e) for e in events if not isinstance(e, Data)] == [Request, EndOfMessage, Request, EndOfMessage,
                                                                     Upgrade]


# ---------------------------------------------------------------------------------------------------- strict rules


def test_connect_is_refused_and_nothing_after_it_is_parsed() -> None:
    conn = H1Connection()
    events = conn.receive_data(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + GET)
    assert summary(events) == [("error", 400)]
    assert conn.receive_data(GET) == []


def test_connect_after_good_requests_keeps_them() -> None:
    events = feed(GET + b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n")
    assert summary(events) == [("request", b"GET", b"/", "1.1"), ("end",), ("error", 400)]


@pytest.mark.parametrize(("method", "status"), [(b"OPTIONS", None), (b"GET", 400), (b"POST", 400), (b"HEAD", 400)])
def test_the_asterisk_target_is_only_for_options(method: bytes, status: int | None) -> None:
    events = feed(method + b" * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert errors(events) == ([status] if status else [])


@pytest.mark.parametrize(("codings", "status"), [
    ([b"chunked"], None),
    ([b"Chunked"], None),
    ([b"CHUNKED"], None),
    ([b"gzip, chunked"], 501),
    ([b"gzip", b"chunked"], 501),
    ([b"deflate,chunked"], 501),
    ([b"gzip"], 400),
    ([b"chunked, gzip"], 400),
    ([b"chunked", b"gzip"], 400),
    ([b"chunked", b"chunked"], 400),
    ([b"identity"], 400),
    ([b"identity, chunked"], 501),
])
def test_transfer_codings(codings: list[bytes], status: int | None) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"Transfer-Encoding: " + c + b"\r\n" for c in codings)
    events = feed(head + b"\r\n0\r\n\r\n")
    assert errors(events) == ([status] if status else [])
    if status is None:
        assert summary(events) == [("request", b"POST", b"/", "1.1"), ("end",)]


def test_transfer_encoding_in_an_http10_request_is_refused() -> None:
    assert errors(feed(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")) == [400]


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]", b"[::1]:8000",
                                  b"xn--caf-dma.example", b"a_b.local", b"", b"h:", b"%41b.c", b"a,b!$&'()*+;="])
def test_valid_host_values(host: bytes) -> None:
    assert errors(feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")) == []


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"user@host", b"a:b:c", b"[::1", b"a\x85b", b"h:8x", b"a?b",
                                  b"a#b", b"\"a\""])
def test_invalid_host_values_get_400(host: bytes) -> None:
    assert errors(feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")) == [400]


def test_obs_text_in_a_field_value_is_an_opaque_byte() -> None:
    # RFC 9110 §5.5: obs-text (0x80-0xFF) may appear in a value; it is passed on as is, never as a line break
    events = feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x85b\xa0c\xffd\r\n\r\n")
    request = events[0]
    assert isinstance(request, Request)
    assert request.headers == [(b"host", b"a"), (b"x-a", b"a\x85b\xa0c\xffd")]


# ---------------------------------------------------------------------------------------------------- responses


def started(conn: H1Connection | None = None) -> tuple[H1Connection, list[bytes]]:
    out: list[bytes] = []
    conn = conn or H1Connection(write=out.append)
    conn.write = out.append
    return conn, out


@pytest.mark.parametrize("value", [b"a\x0bb", b"a\x0cb", b"a\x1cb", b"a\x1db", b"a\x1eb", b"a\x7fb", b"a\x01b",
                                   b"\x1f"])
def test_a_response_value_with_a_control_character_is_refused(value: bytes) -> None:
    conn, out = started()
    request = Request(b"GET", b"/", "1.1", [(b"host", b"a")], True, False)
    with pytest.raises(ProtocolError, match="control character"):
        conn.start_response(request, 200, [(b"x-bad", value)])
    assert out == []
    with pytest.raises(ProtocolError):
        conn.informational(103, [(b"link", value)])


def test_a_response_value_with_htab_or_obs_text_is_sent() -> None:
    conn, out = started()
    request = Request(b"GET", b"/", "1.1", [(b"host", b"a")], True, False)
    conn.start_response(request, 200, [(b"x-a", b"a\tb"), (b"x-b", b"caf\xe9")])
    conn.send_body(b"", True)
    assert b"x-a: a\tb\r\nx-b: caf\xe9\r\n" in b"".join(out)


def test_error_response_with_extra_lines() -> None:
    conn = H1Connection()
    response = conn.error_response(503, "busy", b"retry-after: 1\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nretry-after: 1" in head and b"\r\nconnection: close" in head
    assert body == b"Service Unavailable: busy\n"


def test_what_the_parser_keeps_of_what_it_checked_stays_bounded() -> None:
    """What a process keeps of the hosts, names and values it has checked stays within its bounds whatever clients
    and apps send, and what is past them is still checked (SECURITY.md, "Known bounds")."""
    from tidegate.protocol import http1

    for i in range(5000):
        request = only_request(feed(b"GET / HTTP/1.1\r\nHost: h%d.example\r\nX-In-%d: 1\r\n\r\n" % (i, i)))
        conn = H1Connection()
        conn.start_response(request, 200, [(b"X-Out-%d" % i, b"value-%d" % i), (b"Content-Length", b"%d" % i)])
        conn.send_body(b"x" * i, True)  # the length it declared
    assert len(http1._valid_hosts) <= http1._KNOWN_MAX
    assert len(http1._request_names) <= http1._REQUEST_NAMES_MAX
    assert len(http1._known_names) <= http1._KNOWN_MAX
    assert len(http1._known_values) <= http1._KNOWN_MAX
    assert len(http1._known_lengths) <= http1._KNOWN_LENGTHS_MAX
    assert len(http1._known_lines) <= http1._KNOWN_LINES_MAX
    assert len(http1._known_length_lines) <= http1._KNOWN_LENGTHS_MAX
    # a host, a name or a length seen after the caches filled is still checked
    assert summary(feed(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")) == [("error", 400)]
    with pytest.raises(ProtocolError, match="invalid header name"):
        H1Connection().start_response(only_request(feed(GET)), 200, [(b"bad name", b"v")])
    with pytest.raises(ProtocolError, match="ASCII digits"):
        H1Connection().start_response(only_request(feed(GET)), 200, [(b"content-length", b"1x")])

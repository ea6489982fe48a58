"""The sans-IO HTTP/2 connection, driven by h2 as the client peer (no sockets)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegate.protocol.events import (
    Answered,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    StreamReset,
    Writable,
)
from tidegate.protocol.http1 import ResponseDefaults
from tidegate.protocol.http2 import PREFACE, H2Connection, encode_field, parse_request

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.com")]
# GET http / with :authority example.com, made of static-table fields only: it leaves the HPACK table as it is
RAW_GET = b"\x82\x86\x84\x01\x0bexample.com"
ErrorCodes = h2.errors.ErrorCodes


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


class Pair:
    """Our connection and an h2 client, wired together by hand."""

    def __init__(self, *, client_settings: dict[int, int] | None = None, validate: bool = True,
                 **server: Any) -> None:
        self.out: list[bytes | memoryview] = []
        self.server = H2Connection(self.out.append, **server)
        self.server.initiate()
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=validate, normalize_outbound_headers=validate,
                                           validate_inbound_headers=True)
        self.client = h2.connection.H2Connection(config)
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.events: list[Any] = []
        self.server_events = self.to_server()
        self.to_client()

    def to_server(self, data: bytes | None = None) -> list[Any]:
        """Client bytes (or ``data``) → our events."""
        return self.server.receive_data(self.client.data_to_send() if data is None else data)

    def wire(self) -> bytes:
        data = b"".join(bytes(chunk) for chunk in self.out)
        self.out.clear()
        return data

    def to_client(self) -> list[Any]:
        """Our bytes → the client's events (also kept in ``self.events``)."""
        events = self.client.receive_data(self.wire())
        self.events += events
        return events

    def request(self, headers: list[tuple[bytes, bytes]] = GET, end: bool = True,
                stream_id: int | None = None) -> tuple[int, list[Any]]:
        stream_id = stream_id or self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers, end_stream=end)
        return stream_id, self.to_server()

    def respond(self, stream_id: int, body: bytes = b"ok", headers: Any = (), status: int = 200) -> list[Any]:
        self.server.start_response(stream_id, status, list(headers))
        self.server.send_body(stream_id, body, True)
        return self.to_client()


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def goaway(pair: Pair) -> h2.events.ConnectionTerminated:
    [event] = of(pair.to_client(), h2.events.ConnectionTerminated)
    return event


def raw_frames(pair: Pair) -> list[tuple[int, int, int, bytes]]:
    """Our pending bytes as (type, flags, stream id, payload), not shown to the client."""
    data = pair.wire()
    frames = []
    while data:
        high, low, ftype, flags, stream_id = struct.unpack_from(">HBBBL", data)
        length = (high << 8) | low
        frames.append((ftype, flags, stream_id, data[9:9 + length]))
        data = data[9 + length:]
    return frames


def raw_reset(pair: Pair, stream_id: int) -> int:
    [code] = [struct.unpack(">L", p)[0] for t, _, s, p in raw_frames(pair) if t == 3 and s == stream_id]
    return int(code)


def reset_code(pair: Pair, stream_id: int) -> int:
    [event] = [e for e in pair.to_client() if isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id]
    return int(event.error_code)


# ---------------------------------------------------------------------------------------------------- basics


def test_settings_exchange() -> None:
    pair = Pair(max_concurrent_streams=7, max_header_list_size=1000, initial_window_size=100000)
    assert pair.server_events == []
    remote = pair.client.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.max_header_list_size == 1000
    assert remote.initial_window_size == 100000
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in pair.events)
    # the connection window covers every stream's window
    assert pair.client.outbound_flow_control_window == 7 * 100000


def test_a_get_becomes_a_request_and_end_of_message() -> None:
    pair = Pair()
    _, events = pair.request([*GET, (b"accept", b"*/*")])
    assert kinds(events) == ["Request", "EndOfMessage"]
    request = events[0]
    assert (request.method, request.target, request.http_version, request.stream_id) == (b"GET", b"/", "2", 1)
    assert request.headers == [(b"host", b"example.com"), (b"accept", b"*/*")]
    assert request.keep_alive and not request.expect_continue and request.upgrade is None
    assert events[1].stream_id == 1


def test_path_and_query_and_host_header_kept_when_it_agrees() -> None:
    pair = Pair()
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/a/b?x=1"),
               (b":authority", b"example.com"), (b"host", b"example.com"), (b"content-length", b"3")]
    _, events = pair.request(headers, end=False)
    [request] = events
    assert request.target == b"/a/b?x=1"
    assert request.headers == [(b"host", b"example.com"), (b"content-length", b"3")]
    pair.client.send_data(1, b"abc", end_stream=True)
    events = pair.to_server()
    assert kinds(events) == ["Data", "EndOfMessage"]
    assert events[0].data == b"abc"


def test_response_with_defaults_and_content_length() -> None:
    defaults = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: Tue, 01 Jan 2030 00:00:00 GMT\r\n",
                                extra=b"x-extra: 1\r\n")
    pair = Pair(defaults=defaults)
    pair.request()
    events = pair.respond(1, b"hello", [(b"content-type", b"text/plain")])
    [response] = of(events, h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"tidegate"),
                                (b"date", b"Tue, 01 Jan 2030 00:00:00 GMT"), (b"x-extra", b"1"),
                                (b"content-length", b"5")]
    assert of(events, h2.events.DataReceived)[0].data == b"hello"
    assert of(events, h2.events.StreamEnded)
    assert pair.server.open_streams == 0


def test_app_date_and_server_replace_the_defaults() -> None:
    defaults = ResponseDefaults(server=b"server: tidegate\r\n", date=b"date: Tue, 01 Jan 2030 00:00:00 GMT\r\n")
    pair = Pair(defaults=defaults)
    pair.request()
    [response] = of(pair.respond(1, b"", [(b"Server", b"mine"), (b"date", b"yesterday")]), h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"server", b"mine"), (b"date", b"yesterday"),
                                (b"content-length", b"0")]


def test_response_headers_are_lowercased_and_connection_specific_ones_dropped() -> None:
    pair = Pair()
    pair.request()
    headers = [(b"X-Mixed", b"1"), (b"connection", b"close"), (b"transfer-encoding", b"chunked"),
               (b"keep-alive", b"5"), (b"upgrade", b"x"), (b"set-cookie", b"a=b")]
    [response] = of(pair.respond(1, b"", headers), h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"x-mixed", b"1"), (b"set-cookie", b"a=b"),
                                (b"content-length", b"0")]


@pytest.mark.parametrize("headers", [
    [(b"x", b"a\r\nb")], [(b"x", b"a\nb")], [(b"x", b"a\0b")], [(b"bad name", b"1")], [(b":status", b"201")],
    [(b"content-length", b"x")], [("x", "y")], [(b"x",)], 5,
], ids=["cr-lf", "lf", "nul", "space-in-name", "pseudo", "bad-length", "str", "short", "not-iterable"])
def test_invalid_response_headers_raise(headers: Any) -> None:
    pair = Pair()
    pair.request()
    with pytest.raises(ProtocolError):
        pair.server.start_response(1, 200, headers)
    assert pair.wire() == b""


@pytest.mark.parametrize("status", [99, 100, 101, 600, 999, 1000, "200", 200.0])
def test_invalid_status_raises(status: Any) -> None:
    pair = Pair()
    pair.request()
    with pytest.raises(ProtocolError):
        pair.server.start_response(1, status, [])


def test_head_204_304_have_no_body() -> None:
    pair = Pair()
    pair.request([(b":method", b"HEAD"), *GET[1:]])
    events = pair.respond(1, b"ignored", [(b"content-length", b"7")])
    assert of(events, h2.events.ResponseReceived)[0].headers[-1] == (b"content-length", b"7")
    assert not of(events, h2.events.DataReceived) and of(events, h2.events.StreamEnded)
    for status in (204, 304):
        stream_id, _ = pair.request()
        events = pair.respond(stream_id, b"", status=status)
        assert of(events, h2.events.ResponseReceived)[0].headers == [(b":status", str(status).encode())]
        assert not of(events, h2.events.DataReceived) and of(events, h2.events.StreamEnded)
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 204, [])
    with pytest.raises(ProtocolError, match="must not have a body"):
        pair.server.send_body(stream_id, b"x", True)


def test_content_length_is_checked_both_ways() -> None:
    pair = Pair()
    pair.request()
    pair.server.start_response(1, 200, [(b"content-length", b"3")])
    with pytest.raises(ProtocolError, match="more body"):
        pair.server.send_body(1, b"abcd", True)
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [(b"content-length", b"3")])
    pair.server.send_body(stream_id, b"ab", False)
    with pytest.raises(ProtocolError, match="short"):
        pair.server.send_body(stream_id, b"", True)


def test_streamed_response() -> None:
    pair = Pair()
    pair.request()
    pair.server.start_response(1, 200, [])
    for piece in (b"a", b"", b"bc"):
        assert pair.server.send_body(1, piece, False)
    pair.server.send_body(1, b"", True)
    events = pair.to_client()
    assert b"".join(e.data for e in of(events, h2.events.DataReceived)) == b"abc"
    assert (b"content-length", b"3") not in of(events, h2.events.ResponseReceived)[0].headers
    assert of(events, h2.events.StreamEnded)


def test_many_streams_interleave() -> None:
    pair = Pair()
    for _ in range(10):
        pair.request()
    for stream_id in range(19, 0, -2):
        pair.server.start_response(stream_id, 200, [])
        pair.server.send_body(stream_id, str(stream_id).encode(), True)
    events = pair.to_client()
    assert {e.stream_id: e.data for e in of(events, h2.events.DataReceived)} == {
        i: str(i).encode() for i in range(1, 20, 2)}


def test_trailers_end_the_stream() -> None:
    pair = Pair()
    pair.request([*GET, (b"te", b"trailers")])
    pair.server.start_response(1, 200, [])
    pair.server.send_body(1, b"body", False)
    pair.server.send_trailers(1, [(b"x-checksum", b"abc"), (b"X-Upper", b"1")])
    events = pair.to_client()
    assert of(events, h2.events.DataReceived)[0].data == b"body"
    [trailers] = of(events, h2.events.TrailersReceived)
    assert trailers.headers == [(b"x-checksum", b"abc"), (b"x-upper", b"1")]
    assert of(events, h2.events.StreamEnded)
    assert pair.server.open_streams == 0


def test_empty_trailers_just_end_the_stream() -> None:
    pair = Pair()
    pair.request()
    pair.server.start_response(1, 200, [])
    pair.server.send_trailers(1, [])
    events = pair.to_client()
    assert not of(events, h2.events.TrailersReceived) and of(events, h2.events.StreamEnded)


def test_request_te_trailers_is_noted() -> None:
    pair = Pair()
    _, events = pair.request([*GET, (b"te", b"trailers")])
    assert events[0].trailers
    _, events = pair.request()
    assert not events[0].trailers


def test_informational_responses_precede_the_head() -> None:
    pair = Pair()
    pair.request([*GET, (b"expect", b"100-continue")], end=False)
    pair.server.informational(1, 100)
    pair.server.start_response(1, 200, [])
    pair.server.informational(1, 103, [(b"link", b"</a.css>; rel=preload")])
    pair.server.send_body(1, b"x", True)
    events = pair.to_client()
    informational = of(events, h2.events.InformationalResponseReceived)
    assert [e.headers for e in informational] == [[(b":status", b"100")],
                                                  [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]]
    with pytest.raises(ProtocolError):
        pair.server.informational(1, 103)  # the stream is done
    stream_id, _ = pair.request()
    with pytest.raises(ProtocolError):
        pair.server.informational(stream_id, 101)
    pair.respond(stream_id)
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    pair.server.send_body(stream_id, b"x", False)
    with pytest.raises(ProtocolError, match="already started"):
        pair.server.informational(stream_id, 103)


def test_expect_continue_is_noted() -> None:
    pair = Pair()
    _, events = pair.request([*GET, (b"expect", b"100-continue")], end=False)
    assert events[0].expect_continue


def test_cookies_are_joined() -> None:
    pair = Pair()
    _, events = pair.request([*GET, (b"cookie", b"a=1"), (b"accept", b"x"), (b"cookie", b"b=2")])
    assert events[0].headers == [(b"host", b"example.com"), (b"cookie", b"a=1; b=2"), (b"accept", b"x")]


def test_connect_and_options_star() -> None:
    pair = Pair()
    stream_id, events = pair.request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")], end=False)
    # a tunnel is not opened: answered 400, the app never sees it; the answer is reported for the access log
    assert [(type(e).__name__, e.stream_id, e.status, e.method, e.target) for e in events] == [
        ("Answered", stream_id, 400, b"CONNECT", b"example.com:443")]
    response = of(pair.to_client(), h2.events.ResponseReceived)[0]
    assert response.headers[0] == (b":status", b"400")
    _, events = pair.request([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"),
                              (b":authority", b"x")])
    assert events[0].target == b"*"


def test_extended_connect_only_when_enabled() -> None:
    headers = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/chat"),
               (b":authority", b"example.com"), (b"sec-websocket-version", b"13")]
    pair = Pair(enable_connect_protocol=True)
    assert pair.client.remote_settings.enable_connect_protocol == 1
    _, events = pair.request(headers, end=False)
    assert events[0].upgrade == b"websocket" and events[0].target == b"/chat"
    pair = Pair(validate=False)
    stream_id, events = pair.request(headers, end=False)
    assert events == []
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------------- malformed

MALFORMED = {
    "no :method": [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
    "no :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],
    "no :scheme": [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")],
    "relative :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"a"), (b":authority", b"a")],
    "two :method": [*GET, (b":method", b"GET")],
    "pseudo after regular": [*GET[:3], (b"accept", b"x"), (b":authority", b"a")],
    "unknown pseudo": [*GET, (b":foo", b"x")],
    ":status in a request": [*GET, (b":status", b"200")],
    "upper-case name": [*GET, (b"Accept", b"x")],
    "space in name": [*GET, (b"acc ept", b"x")],
    "connection": [*GET, (b"connection", b"keep-alive")],
    "keep-alive": [*GET, (b"keep-alive", b"5")],
    "proxy-connection": [*GET, (b"proxy-connection", b"x")],
    "transfer-encoding": [*GET, (b"transfer-encoding", b"chunked")],
    "upgrade": [*GET, (b"upgrade", b"h2c")],
    "te gzip": [*GET, (b"te", b"gzip")],
    "CR in value": [*GET, (b"x", b"a\rb")],
    "NUL in value": [*GET, (b"x", b"a\x00b")],
    "leading space": [*GET, (b"x", b" a")],
    "host differs": [*GET, (b"host", b"other.example")],
    "two hosts": [*GET[:3], (b"host", b"a"), (b"host", b"a")],
    "bad content-length": [*GET, (b"content-length", b"x")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    "space in method": [(b":method", b"GE T"), *GET[1:]],
}


@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_a_stream_error(headers: list[tuple[bytes, bytes]]) -> None:
    pair = Pair(validate=False)
    stream_id, events = pair.request(headers)
    assert events == []  # the application never sees it
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR
    assert pair.server.resets == 1
    # the connection goes on
    stream_id, events = pair.request()
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert of(pair.respond(stream_id), h2.events.StreamEnded)


def test_parse_request_is_pure() -> None:
    head = parse_request(GET, False)
    assert not isinstance(head, str)
    assert head.method == b"GET" and head.size == sum(len(n) + len(v) + 32 for n, v in GET)


def test_body_longer_or_shorter_than_content_length_is_a_stream_error() -> None:
    pair = Pair()
    stream_id, _ = pair.request([*GET, (b"content-length", b"2")], end=False)
    pair.client.send_data(stream_id, b"abc")
    assert of(pair.to_server(), StreamReset)[0].code == ErrorCodes.PROTOCOL_ERROR
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR
    stream_id, _ = pair.request([*GET, (b"content-length", b"5")], end=False)
    pair.client.send_data(stream_id, b"abc", end_stream=True)
    assert kinds(pair.to_server()) == ["Data", "StreamReset"]
    stream_id, events = pair.request([*GET, (b"content-length", b"5")])
    assert events == []  # announced a body, ended at once
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR


def test_trailers_from_the_client_end_the_request() -> None:
    pair = Pair()
    stream_id, _ = pair.request(end=False)
    pair.client.send_data(stream_id, b"abc")
    pair.client.send_headers(stream_id, [(b"x-sum", b"1")], end_stream=True)
    assert kinds(pair.to_server()) == ["Data", "EndOfMessage"]


def test_trailers_without_end_stream_or_with_pseudo_fields_are_stream_errors() -> None:
    pair = Pair()
    stream_id, _ = pair.request(end=False)
    assert kinds(pair.to_server(frame(1, 0x4, stream_id, b"\x00\x01x\x011"))) == ["StreamReset"]
    assert raw_reset(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR
    stream_id, _ = pair.request(end=False)
    assert kinds(pair.to_server(frame(1, 0x5, stream_id, b"\x84"))) == ["StreamReset"]
    assert raw_reset(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------------- limits


def test_max_concurrent_streams_refuses_the_extra_stream() -> None:
    pair = Pair(max_concurrent_streams=2)
    pair.request(end=False)
    pair.request(end=False)
    # the client respects the limit; a raw HEADERS frame does not
    events = pair.to_server(frame(1, 0x5, 5, RAW_GET))
    assert events == []
    assert raw_reset(pair, 5) == ErrorCodes.REFUSED_STREAM
    # once a stream ends, a new one is accepted
    pair.client.send_data(1, b"", end_stream=True)
    pair.to_server()
    pair.respond(1)
    _, events = pair.request(stream_id=7)
    assert kinds(events) == ["Request", "EndOfMessage"]


def test_header_list_over_the_limit_gets_431_and_twice_the_limit_ends_the_connection() -> None:
    pair = Pair(max_header_list_size=1000, validate=False)
    _, events = pair.request([*GET, (b"x-big", b"a" * 1000)])
    [answered] = events
    assert isinstance(answered, Answered) and answered.status == 431 and answered.size > 0
    [response] = of(pair.to_client(), h2.events.ResponseReceived)
    assert response.headers[0] == (b":status", b"431")
    # the HPACK state stayed in step: the next request decodes
    _, events = pair.request([*GET, (b"x-small", b"b")])
    assert events[0].headers[-1] == (b"x-small", b"b")
    pair.request([*GET, (b"x-huge", b"a" * 2100)])
    assert goaway(pair).error_code == ErrorCodes.COMPRESSION_ERROR
    assert pair.server.closed


def test_a_header_block_split_in_continuations_is_bounded() -> None:
    pair = Pair(max_header_list_size=1000)
    block = Encoder().encode([*GET, (b"x-a", b"1")])
    events = pair.to_server(frame(1, 0x1, 1, block[:5]) + frame(9, 0, 1, block[5:10]) + frame(9, 0x4, 1, block[10:]))
    assert kinds(events) == ["Request", "EndOfMessage"]
    assert events[0].headers[-1] == (b"x-a", b"1")
    # a flood of CONTINUATION frames is cut at twice the limit, without waiting for its end
    data = frame(1, 0x1, 3, b"\x82") + frame(9, 0, 3, b"\x82" * 1000) * 3
    events = pair.to_server(data)
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.COMPRESSION_ERROR


def test_empty_continuations_count_as_abuse() -> None:
    pair = Pair(max_resets=20)
    data = frame(1, 0x1, 1, b"\x82") + frame(9, 0, 1) * 30
    events = pair.to_server(data)
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuation_interrupted_is_a_connection_error() -> None:
    pair = Pair()
    block = Encoder().encode(GET)
    events = pair.to_server(frame(1, 0x1, 1, block[:3]) + frame(6, 0, 0, b"12345678"))
    assert of(events, ConnectionClosed)
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR
    pair = Pair()
    events = pair.to_server(frame(9, 0x4, 1, block))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_undecodable_header_block_is_a_compression_error() -> None:
    pair = Pair()
    pair.to_server(frame(1, 0x5, 1, b"\xff\xff\xff\xff\xff"))
    assert goaway(pair).error_code == ErrorCodes.COMPRESSION_ERROR


# ---------------------------------------------------------------------------------------------------- flow control


def test_request_data_window_is_given_back_only_as_the_app_consumes() -> None:
    pair = Pair(initial_window_size=1000)
    stream_id, _ = pair.request(end=False)
    assert pair.client.local_flow_control_window(stream_id) == 1000
    pair.client.send_data(stream_id, b"x" * 1000)
    assert kinds(pair.to_server()) == ["Data"]
    pair.to_client()
    assert pair.client.local_flow_control_window(stream_id) == 0  # nothing acknowledged yet
    with pytest.raises(h2.exceptions.FlowControlError):
        pair.client.send_data(stream_id, b"y")
    pair.server.acknowledge(stream_id, 300)  # below half the window: no update yet
    pair.to_client()
    assert pair.client.local_flow_control_window(stream_id) == 0
    pair.server.acknowledge(stream_id, 700)
    pair.to_client()
    assert pair.client.local_flow_control_window(stream_id) == 1000
    # the connection window was given back with the data consumed
    assert pair.client.outbound_flow_control_window >= 100 * 1000 - 1000


def test_data_beyond_the_stream_window_is_a_stream_error() -> None:
    pair = Pair(initial_window_size=10)
    pair.to_server(frame(4, 0x1, 0))  # acknowledge our SETTINGS
    stream_id, _ = pair.request(end=False)
    events = pair.to_server(frame(0, 0, stream_id, b"x" * 11))
    assert kinds(events) == ["StreamReset"]
    assert reset_code(pair, stream_id) == ErrorCodes.FLOW_CONTROL_ERROR


def test_the_peer_may_use_the_default_window_until_it_acknowledges_ours() -> None:
    pair = Pair(initial_window_size=10)
    # h2 acknowledged our SETTINGS already (Pair sends its ACK); a raw peer that has not may send 65535
    raw = H2Connection(initial_window_size=10)
    raw.initiate()
    raw.receive_data(PREFACE + frame(4, 0, 0))
    raw.receive_data(frame(1, 0x4, 1, RAW_GET))
    assert kinds(raw.receive_data(frame(0, 0, 1, b"x" * 16384))) == ["Data"]
    assert pair.server.open_streams == 0


def test_data_beyond_the_connection_window_is_a_connection_error() -> None:
    # before our SETTINGS are acknowledged a stream may take 65535 bytes, more than the connection window here
    raw = H2Connection(max_concurrent_streams=2, initial_window_size=1000)
    raw.initiate()
    events = raw.receive_data(PREFACE + frame(4, 0, 0) + frame(1, 0x4, 1, RAW_GET) + frame(1, 0x4, 3, RAW_GET))
    assert kinds(events) == ["Request", "Request"]
    events = raw.receive_data(frame(0, 0, 1, b"x" * 16384) * 3 + frame(0, 0, 3, b"x" * 16384))
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.FLOW_CONTROL_ERROR


def test_response_data_waits_for_the_peer_window() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.to_server()
    pair.to_client()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    assert pair.server.send_body(stream_id, b"a" * 25, True) is False  # 10 sent, 15 wait
    assert pair.server.pending(stream_id) == 15
    events = pair.to_client()
    assert sum(len(e.data) for e in of(events, h2.events.DataReceived)) == 10
    assert not of(events, h2.events.StreamEnded)
    pair.client.acknowledge_received_data(10, stream_id)
    assert of(pair.to_server(), Writable) == []  # 10 more out, 5 still wait
    pair.client.increment_flow_control_window(100, stream_id)
    [writable] = of(pair.to_server(), Writable)
    assert writable.stream_id == stream_id
    events = pair.to_client()
    assert sum(len(e.data) for e in of(events, h2.events.DataReceived)) == 15
    assert of(events, h2.events.StreamEnded)
    assert pair.server.pending(stream_id) == 0 and pair.server.open_streams == 0


def test_trailers_wait_behind_blocked_data() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 3})
    pair.to_server()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    pair.server.send_body(stream_id, b"abcdef", False)
    pair.server.send_trailers(stream_id, [(b"x-t", b"1")])
    events = pair.to_client()
    assert not of(events, h2.events.TrailersReceived)
    pair.client.increment_flow_control_window(10, stream_id)
    pair.to_server()
    events = pair.to_client()
    assert of(events, h2.events.TrailersReceived) and of(events, h2.events.StreamEnded)


def test_a_settings_change_of_the_initial_window_releases_blocked_data() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    pair.to_server()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    assert not pair.server.send_body(stream_id, b"abc", True)
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    assert of(pair.to_server(), Writable)
    assert of(pair.to_client(), h2.events.StreamEnded)


def test_large_bodies_respect_the_peer_frame_size() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**20})
    pair.to_server()
    pair.client.increment_flow_control_window(2**20)
    pair.to_server()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    assert pair.server.send_body(stream_id, b"z" * 100000, True)
    events = pair.to_client()
    sizes = [len(e.data) for e in of(events, h2.events.DataReceived)]
    assert sum(sizes) == 100000 and max(sizes) <= 16384


def test_window_update_errors() -> None:
    pair = Pair()
    pair.to_server(frame(8, 0, 0, struct.pack(">L", 0)))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR
    pair = Pair()
    pair.to_server(frame(8, 0, 9, struct.pack(">L", 1)))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR  # idle stream
    pair = Pair()
    pair.to_server(frame(8, 0, 0, struct.pack(">L", 2**31 - 1)))
    assert goaway(pair).error_code == ErrorCodes.FLOW_CONTROL_ERROR
    pair = Pair()
    stream_id, _ = pair.request(end=False)
    pair.to_server(frame(8, 0, stream_id, struct.pack(">L", 2**31 - 1)))
    assert reset_code(pair, stream_id) == ErrorCodes.FLOW_CONTROL_ERROR
    stream_id, _ = pair.request(end=False)
    pair.to_server(frame(8, 0, stream_id, struct.pack(">L", 0)))
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR
    pair.to_server(frame(8, 0, 0, b"123"))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR


# ---------------------------------------------------------------------------------------------------- resets


def test_client_reset_is_reported_for_that_stream_only() -> None:
    pair = Pair()
    first, _ = pair.request(end=False)
    second, _ = pair.request(end=False)
    pair.client.reset_stream(first, ErrorCodes.CANCEL)
    [event] = pair.to_server()
    assert isinstance(event, StreamReset) and (event.stream_id, event.code) == (first, ErrorCodes.CANCEL)
    assert pair.server.resets == 1
    # sending on the reset stream does nothing; the other stream is answered
    pair.server.start_response(first, 200, [])
    assert pair.server.send_body(first, b"late", True)
    events = pair.respond(second, b"fine")
    assert [(e.stream_id, e.data) for e in of(events, h2.events.DataReceived)] == [(second, b"fine")]


def test_rapid_reset_flood_ends_with_enhance_your_calm() -> None:
    pair = Pair(max_resets=50)
    data = b""
    for i in range(60):
        stream_id = 2 * i + 1
        data += frame(1, 0x4, stream_id, RAW_GET) + frame(3, 0, stream_id, struct.pack(">L", 8))
    events = pair.to_server(data)
    assert len(of(events, Request)) <= 51
    [closed] = of(events, ConnectionClosed)
    assert closed.code == ErrorCodes.ENHANCE_YOUR_CALM and not closed.graceful
    assert goaway(pair).error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert pair.server.receive_data(frame(6, 0, 0, b"12345678")) == []  # nothing more is read


def test_resets_zeroed_by_the_caller_do_not_add_up() -> None:
    pair = Pair(max_resets=5)
    for _ in range(4):
        for _ in range(5):
            stream_id, _ = pair.request(end=False)
            pair.client.reset_stream(stream_id)
            pair.to_server()
        pair.server.resets = 0  # a new interval
    assert not pair.server.closed


def test_empty_data_frames_count_as_abuse() -> None:
    pair = Pair(max_resets=10)
    stream_id, _ = pair.request(end=False)
    events = pair.to_server(frame(0, 0, stream_id) * 12)
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_settings_flood_that_toggles_the_initial_window_over_open_streams_counts_as_abuse() -> None:
    # each change adjusts every open stream's window: 100 blocked streams make it 40 times a control frame's cost
    pair = Pair(max_resets=200)
    for _ in range(100):
        pair.request(end=False)
    toggle = b"".join(frame(4, 0, 0, struct.pack(">HL", 4, size)) for size in (0, 65535) * 150)
    events = pair.to_server(toggle)
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.ENHANCE_YOUR_CALM
    # a client that sets its window a few times, or changes it with no stream open, is not counted
    pair = Pair(max_resets=5)
    pair.to_server(b"".join(frame(4, 0, 0, struct.pack(">HL", 4, size)) for size in range(1000, 1100)))
    pair.request(end=False)
    pair.to_server(b"".join(frame(4, 0, 0, struct.pack(">HL", 4, size)) for size in (1 << 20, 1 << 21, 1 << 22)))
    assert not pair.server.closed


@pytest.mark.parametrize("path", [b"/a b", b"/a\tb", b"/\x7f", b"/caf\xc3\xa9", b"/\x00", b"/a\rb"])
def test_a_path_that_breaks_the_target_grammar_is_a_stream_error(path: bytes) -> None:
    pair = Pair(validate=False)
    stream_id, events = pair.request([(b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
                                      (b":authority", b"a")])
    assert not of(events, Request)
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR
    stream_id, events = pair.request()  # the connection goes on
    assert len(of(events, Request)) == 1


def test_a_header_field_over_the_field_size_limit_gets_431() -> None:
    pair = Pair(max_field_size=100)
    stream_id, events = pair.request([*GET, (b"x-token", b"t" * 93)])  # 7 + 93 bytes
    assert len(of(events, Request)) == 1
    stream_id, events = pair.request([*GET, (b"x-token", b"t" * 94)])
    assert not of(events, Request)
    [response] = [e for e in pair.to_client() if isinstance(e, h2.events.ResponseReceived)
                  and e.stream_id == stream_id]
    assert dict(response.headers)[b":status"] == b"431"


def test_reset_by_us_drops_pending_data_and_ignores_late_frames() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    pair.to_server()
    stream_id, _ = pair.request(end=False)
    pair.server.start_response(stream_id, 200, [])
    pair.server.send_body(stream_id, b"abc", False)
    pair.server.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
    assert pair.server.pending(stream_id) == 0
    assert reset_code(pair, stream_id) == ErrorCodes.INTERNAL_ERROR
    # DATA the client sent before it saw the reset is ignored, its window given back
    assert pair.to_server(frame(0, 0, stream_id, b"late")) == []
    assert not pair.server.closed


def test_data_on_a_closed_or_idle_stream() -> None:
    pair = Pair()
    stream_id, _ = pair.request()
    pair.respond(stream_id)
    pair.to_server(frame(0, 0, stream_id, b"x"))
    assert raw_reset(pair, stream_id) == ErrorCodes.STREAM_CLOSED
    pair.to_server(frame(0, 0, 99, b"x"))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed() -> None:
    pair = Pair()
    stream_id, _ = pair.request()
    pair.to_server(frame(0, 0, stream_id, b"x"))
    assert reset_code(pair, stream_id) == ErrorCodes.STREAM_CLOSED


def test_headers_on_a_closed_stream_or_going_backwards() -> None:
    pair = Pair()
    stream_id, _ = pair.request()
    pair.respond(stream_id)
    pair.to_server(frame(1, 0x5, stream_id, Encoder().encode(GET)))
    assert goaway(pair).error_code == ErrorCodes.STREAM_CLOSED
    pair = Pair()
    pair.to_server(frame(1, 0x5, 2, b"\x82\x86\x84"))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR
    pair = Pair()
    # RFC 9113 §5.1.1: a stream id lower than a previous one (h2spec http2/5.1.1/2)
    pair.to_server(frame(1, 0x5, 5, b"\x82\x86\x84\x41\x01a") + frame(1, 0x5, 3, b"\x82\x86\x84\xbe"))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_rst_stream_errors() -> None:
    pair = Pair()
    pair.to_server(frame(3, 0, 0, struct.pack(">L", 8)))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR
    pair = Pair()
    pair.to_server(frame(3, 0, 1, struct.pack(">L", 8)))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR  # idle
    pair = Pair()
    pair.request(end=False)
    pair.to_server(frame(3, 0, 1, b"12"))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR


# ---------------------------------------------------------------------------------------------------- control frames


def test_ping_is_answered() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.to_server()
    [ack] = of(pair.to_client(), h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"
    pair.to_server(frame(6, 1, 0, b"87654321"))  # an ACK is not answered
    assert pair.wire() == b""
    pair.to_server(frame(6, 0, 0, b"1234"))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR
    pair = Pair()
    pair.to_server(frame(6, 0, 1, b"12345678"))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


@pytest.mark.parametrize(("payload", "code"), [
    (struct.pack(">HL", 5, 100), ErrorCodes.PROTOCOL_ERROR),  # MAX_FRAME_SIZE too small
    (struct.pack(">HL", 5, 2**24), ErrorCodes.PROTOCOL_ERROR),
    (struct.pack(">HL", 4, 2**31), ErrorCodes.FLOW_CONTROL_ERROR),
    (struct.pack(">HL", 2, 2), ErrorCodes.PROTOCOL_ERROR),  # ENABLE_PUSH
    (struct.pack(">HL", 8, 2), ErrorCodes.PROTOCOL_ERROR),  # ENABLE_CONNECT_PROTOCOL
    (b"12345", ErrorCodes.FRAME_SIZE_ERROR),
], ids=["frame-small", "frame-big", "window", "push", "connect", "length"])
def test_bad_settings(payload: bytes, code: int) -> None:
    pair = Pair()
    pair.to_server(frame(4, 0, 0, payload))
    assert goaway(pair).error_code == code


def test_settings_ack_with_payload_and_settings_on_a_stream() -> None:
    pair = Pair()
    pair.to_server(frame(4, 1, 0, b"123456"))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR
    pair = Pair()
    pair.to_server(frame(4, 0, 1))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_unknown_settings_and_frames_are_ignored() -> None:
    pair = Pair()
    assert pair.to_server(frame(4, 0, 0, struct.pack(">HL", 0x99, 1)) + frame(0x42, 0xFF, 0, b"whatever")) == []
    assert not pair.server.closed


def test_header_table_size_setting_gets_a_size_update() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    pair.to_server()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [])
    pair.server.send_body(stream_id, b"x", True)
    data = pair.wire()
    assert b"\x20\x88" in data  # table size 0, then :status 200
    assert of(pair.client.receive_data(data), h2.events.ResponseReceived)


def test_priority_frames() -> None:
    pair = Pair()
    assert pair.to_server(frame(2, 0, 3, struct.pack(">LB", 1, 16))) == []  # on an idle stream: fine
    stream_id, _ = pair.request(end=False)
    pair.to_server(frame(2, 0, stream_id, struct.pack(">LB", stream_id, 16)))
    assert reset_code(pair, stream_id) == ErrorCodes.PROTOCOL_ERROR  # depends on itself
    pair.to_server(frame(2, 0, 0, struct.pack(">LB", 1, 16)))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_priority_in_headers_and_padding() -> None:
    pair = Pair()
    block = Encoder().encode(GET)
    payload = bytes([4]) + struct.pack(">LB", 0, 16) + block + b"\0" * 4
    events = pair.to_server(frame(1, 0x4 | 0x8 | 0x20, 1, payload))
    assert kinds(events) == ["Request"]
    events = pair.to_server(frame(0, 0x1 | 0x8, 1, bytes([3]) + b"abc" + b"\0\0\0"))
    assert kinds(events) == ["Data", "EndOfMessage"] and events[0].data == b"abc"
    events = pair.to_server(frame(1, 0x4 | 0x8, 3, bytes([200]) + block))
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.PROTOCOL_ERROR


def test_push_promise_from_a_client_is_a_connection_error() -> None:
    pair = Pair()
    pair.to_server(frame(5, 0x4, 1, struct.pack(">L", 2) + b"\x82"))
    assert goaway(pair).error_code == ErrorCodes.PROTOCOL_ERROR


def test_frame_larger_than_our_maximum() -> None:
    pair = Pair()
    pair.to_server(frame(0, 0, 1, b"x" * 16385))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", PREFACE[:-1] + b"X" + b"\0" * 9])
def test_bad_preface(data: bytes) -> None:
    conn = H2Connection()
    events = conn.receive_data(data)
    assert of(events, ConnectionClosed)[0].code == ErrorCodes.PROTOCOL_ERROR


def test_first_frame_must_be_settings_and_the_preface_may_come_in_pieces() -> None:
    conn = H2Connection()
    assert conn.receive_data(PREFACE[:5]) == []
    assert conn.receive_data(PREFACE[5:]) == []
    assert of(conn.receive_data(frame(6, 0, 0, b"12345678")), ConnectionClosed)[0].code == ErrorCodes.PROTOCOL_ERROR


def test_peer_goaway_is_reported_once() -> None:
    pair = Pair()
    pair.request(end=False)
    pair.client.close_connection()
    [event] = pair.to_server()
    assert isinstance(event, ConnectionClosed) and event.graceful
    assert pair.server.peer_going_away
    pair.to_server(frame(7, 0, 0, struct.pack(">LL", 1, 0)))
    pair.to_server(frame(7, 0, 0, b"123"))
    assert goaway(pair).error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_graceful_goaway_names_the_last_stream_and_ignores_later_ones() -> None:
    pair = Pair()
    pair.request(end=False)
    pair.request()
    assert pair.server.goaway() == 3
    event = goaway(pair)
    assert (event.error_code, event.last_stream_id) == (ErrorCodes.NO_ERROR, 3)
    assert pair.server.goaway() == 3
    assert pair.wire() == b""  # once only
    # a stream opened after it is ignored; the open ones finish
    assert pair.to_server(frame(1, 0x5, 5, RAW_GET)) == []
    assert pair.wire() == b""
    assert kinds(pair.to_server(frame(0, 0x1, 1))) == ["EndOfMessage"]
    for stream_id in (1, 3):
        pair.server.start_response(stream_id, 200, [])
        pair.server.send_body(stream_id, b"bye", True)
    assert [(t, s) for t, _, s, _ in raw_frames(pair)] == [(1, 1), (0, 1), (1, 3), (0, 3)]
    assert pair.server.open_streams == 0


# ---------------------------------------------------------------------------------------------------- h2c upgrade


def test_upgrade_starts_with_stream_1_half_closed() -> None:
    out: list[Any] = []
    conn = H2Connection(out.append)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = base64.urlsafe_b64decode(client.initiate_upgrade_connection())
    conn.initiate_upgrade(settings, head_only=False)
    client.receive_data(b"".join(out))
    out.clear()
    assert conn.receive_data(client.data_to_send()) == []
    conn.start_response(1, 200, [])
    conn.send_body(1, b"upgraded", True)
    events = client.receive_data(b"".join(bytes(x) for x in out))
    assert of(events, h2.events.DataReceived)[0].data == b"upgraded"
    assert conn.open_streams == 0
    with pytest.raises(ValueError):
        H2Connection().initiate_upgrade(b"12345", head_only=False)
    with pytest.raises(ValueError):
        H2Connection().initiate_upgrade(struct.pack(">HL", 4, 2**31), head_only=False)


# ---------------------------------------------------------------------------------------------------- HPACK cache


def test_repeated_requests_decode_the_same_and_get_their_own_header_lists() -> None:
    pair = Pair()
    _, first = pair.request([*GET, (b"accept", b"x")])
    _, second = pair.request([*GET, (b"accept", b"x")])
    _, third = pair.request([*GET, (b"accept", b"x")])
    assert first[0].headers == second[0].headers == third[0].headers
    assert second[0].headers is not third[0].headers


def test_cached_blocks_follow_changes_of_the_hpack_table() -> None:
    conn = H2Connection()
    conn.receive_data(PREFACE + frame(4, 0, 0))
    base = b"\x82\x86\x84"  # GET http /
    blocks = [base + b"\x40\x03x-a\x011", base + b"\xbe", base + b"\xbe", base + b"\x40\x03x-b\x012", base + b"\xbe"]
    seen = []
    for i, block in enumerate(blocks):
        [request, _] = conn.receive_data(frame(1, 0x5, 2 * i + 1, block))
        seen.append(request.headers[-1])
    assert seen == [(b"x-a", b"1")] * 3 + [(b"x-b", b"2")] * 2


def test_encode_field_uses_no_dynamic_table() -> None:
    assert encode_field(b":status", b"200") == b"\x88"
    assert encode_field(b"content-type", b"text/plain")[0] == 0x0F  # literal, static name, no indexing
    assert encode_field(b"x-new", b"v")[0] == 0x00
    assert encode_field(b"set-cookie", b"a")[0] & 0xF0 == 0x10  # never indexed
    from hpack import Decoder

    fields = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-" + b"n" * 200, b"v" * 300),
              (b"set-cookie", b"a=b"), (b"age", b"1")]
    decoder = Decoder()
    assert decoder.decode(b"".join(encode_field(n, v) for n, v in fields), raw=True) == fields
    assert decoder.header_table.dynamic_entries == type(decoder.header_table.dynamic_entries)()


def test_large_header_blocks_are_split_in_continuations() -> None:
    pair = Pair()
    stream_id, _ = pair.request()
    pair.server.start_response(stream_id, 200, [(b"x-big", b"v" * 40000)])
    pair.server.send_body(stream_id, b"", True)
    [response] = of(pair.to_client(), h2.events.ResponseReceived)
    assert response.headers[1] == (b"x-big", b"v" * 40000)


def test_error_response_and_stream_state_helpers() -> None:
    pair = Pair()
    stream_id, _ = pair.request(end=False)
    assert pair.server.is_open(stream_id) and pair.server.last_stream_id == stream_id
    pair.server.error_response(stream_id, 500)
    events = pair.to_client()
    assert of(events, h2.events.ResponseReceived)[0].headers[0] == (b":status", b"500")
    assert b"Internal Server Error" in of(events, h2.events.DataReceived)[0].data
    assert of(events, h2.events.StreamReset)[0].error_code == ErrorCodes.NO_ERROR  # the request body is not wanted
    assert not pair.server.is_open(stream_id)


# ---------------------------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    for i in range(3):
        stream_id = 2 * i + 1
        client.send_headers(stream_id, [*GET, (b"x-i", str(i).encode())])
        client.send_data(stream_id, b"body" * (i + 1), end_stream=True)
    client.ping(b"pingpong")
    data = client.data_to_send()

    def describe(events: list[Any]) -> list[Any]:
        return [(type(e).__name__, getattr(e, "stream_id", None), getattr(e, "data", None),
                 getattr(e, "headers", None)) for e in events]

    whole = describe(H2Connection().receive_data(data))
    conn = H2Connection()
    pieces: list[Any] = []
    start = 0
    for cut in cuts:
        pieces += conn.receive_data(data[start:start + cut])
        start += cut
    pieces += conn.receive_data(data[start:])
    assert describe(pieces) == whole
    assert [k for k, *_ in whole].count("Request") == 3


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_the_preface_never_raises(garbage: bytes) -> None:
    conn = H2Connection()
    conn.receive_data(PREFACE + frame(4, 0, 0))
    events = conn.receive_data(garbage)
    assert all(isinstance(e, (Request, Data, EndOfMessage, StreamReset, ConnectionClosed, Writable)) for e in events)


def test_the_http1_connection_hands_over_a_large_first_read_whole() -> None:
    # prior knowledge: the HTTP/1.1 parser sees the preface; every byte after it belongs to the HTTP/2 connection,
    # however large the read (the parser takes large reads in slices)
    from tidegate.protocol.events import Preface
    from tidegate.protocol.http1 import H1Connection

    data = PREFACE + frame(4, 0, 0) + frame(4, 1, 0) + frame(1, 0x4, 1, RAW_GET) + b"".join(
        frame(0, 0, 1, bytes([i]) * 16384) for i in range(8))
    events = H1Connection().receive_data(data)
    assert len(events) == 1 and isinstance(events[0], Preface) and events[0].data == data
    conn = H2Connection(initial_window_size=2**20, max_concurrent_streams=1)
    conn.initiate()
    events = conn.receive_data(events[0].data)
    assert kinds(events) == ["Request"] + ["Data"] * 8

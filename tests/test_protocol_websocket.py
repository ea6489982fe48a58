"""The sans-IO WebSocket session, driven by websockets' own sans-IO client as the peer.  No sockets."""

from __future__ import annotations

import base64
import os
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tidegate.protocol.events import ProtocolError, Request
from tidegate.protocol.http1 import H1Connection
from tidegate.protocol.websocket import (
    CLOSED,
    CLOSING,
    OPEN,
    Close,
    PerMessageDeflate,
    Pong,
    WebSocketSession,
    _TooBig,
    accept_key,
    negotiate_deflate,
)

KEY = base64.b64encode(b"0123456789abcdef")


def head(method: bytes = b"GET", version: str = "1.1", *, drop: tuple[bytes, ...] = (),
         extra: list[tuple[bytes, bytes]] | None = None, upgrade: bytes | None = b"websocket") -> Request:
    headers = [(b"host", b"example"), (b"upgrade", b"websocket"), (b"connection", b"keep-alive, Upgrade"),
               (b"sec-websocket-key", KEY), (b"sec-websocket-version", b"13")]
    headers = [(k, v) for k, v in headers if k not in drop] + (extra or [])
    return Request(method, b"/chat", version, headers, True, False, 0, upgrade)


class Pair:
    """A session and a websockets client connected through lists of bytes."""

    def __init__(self, client: ClientProtocol, session: WebSocketSession, out: list[bytes],
                 response_headers: list[tuple[bytes, bytes]]) -> None:
        self.client = client
        self.session = session
        self.out = out
        self.response_headers = response_headers

    def to_server(self, data: bytes | None = None) -> list[Any]:
        """Move what the client wrote (or ``data``) to the session; return its events."""
        if data is None:
            data = b"".join(self.client.data_to_send())
        return self.session.receive_data(data)

    def to_client(self) -> list[Frame]:
        data = b"".join(self.out)
        self.out.clear()
        if data:
            self.client.receive_data(data)
        return [e for e in self.client.events_received() if isinstance(e, Frame)]


def connect(*, extensions: list[Any] | None = None, subprotocols: list[str] | None = None,
            max_size: int = 1 << 20, per_message_deflate: bool = True, accept_subprotocol: str | None = None,
            accept_headers: list[tuple[bytes, bytes]] | None = None) -> Pair:
    client = ClientProtocol(parse_uri("ws://example/chat?room=1"), extensions=extensions,
                            subprotocols=subprotocols, max_size=None)  # type: ignore[arg-type]
    client.send_request(client.connect())
    # the request head is parsed by our HTTP/1.1 connection, as the server does
    events = H1Connection().receive_data(b"".join(client.data_to_send()))
    request = events[0]
    assert isinstance(request, Request) and request.upgrade == b"websocket"
    out: list[bytes] = []
    session = WebSocketSession(request, max_size=max_size, per_message_deflate=per_message_deflate,
                               write=out.append)
    assert session.rejection is None
    status, headers = session.accept(accept_subprotocol, accept_headers)
    assert status == 101
    response = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
    client.receive_data(response)
    client.events_received()
    assert client.state is State.OPEN, client.handshake_exc
    return Pair(client, session, out, headers)


# ---------------------------------------------------------------------------------------------- handshake

def test_accept_key_rfc_example():
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_accepted_by_a_real_client():
    pair = connect(subprotocols=["chat", "superchat"], accept_subprotocol="chat",
                   accept_headers=[(b"x-room", b"1"), (b"set-cookie", b"a=b")])
    assert pair.client.subprotocol == "chat"
    names = [name for name, _ in pair.response_headers]
    assert names[:3] == [b"upgrade", b"connection", b"sec-websocket-accept"]
    assert (b"x-room", b"1") in pair.response_headers and (b"set-cookie", b"a=b") in pair.response_headers
    assert pair.session.state == OPEN


def test_accept_headers_cannot_replace_the_handshake_headers():
    pair = connect(subprotocols=["chat"], accept_headers=[(b"Sec-WebSocket-Accept", b"forged"),
                                                          (b"upgrade", b"h2c"),
                                                          (b"sec-websocket-protocol", b"chat")])
    assert len([1 for k, _ in pair.response_headers if k.lower() == b"sec-websocket-accept"]) == 1
    assert (b"Sec-WebSocket-Accept", b"forged") not in pair.response_headers
    assert (b"upgrade", b"h2c") not in pair.response_headers
    # a subprotocol given as a header is taken as the subprotocol (once)
    assert [v for k, v in pair.response_headers if k == b"sec-websocket-protocol"] == [b"chat"]
    assert pair.client.subprotocol == "chat"


@pytest.mark.parametrize("headers", [[(b"bad name", b"x")], [(b"x", b"a\r\nb: c")], [(b"x", b"a\0")]])
def test_accept_refuses_invalid_headers(headers):
    session = WebSocketSession(head())
    with pytest.raises(ProtocolError):
        session.accept(None, headers)


def test_accept_refuses_an_invalid_subprotocol():
    with pytest.raises(ProtocolError):
        WebSocketSession(head()).accept("two words")


def test_accept_twice_is_refused():
    session = WebSocketSession(head())
    session.accept()
    with pytest.raises(ProtocolError):
        session.accept()


@pytest.mark.parametrize(("request_head", "status", "detail"), [
    (head(b"POST"), 400, "GET"),
    (head(version="1.0"), 400, "HTTP/1.1"),
    (head(drop=(b"upgrade",)), 400, "Upgrade"),
    (head(drop=(b"connection",)), 400, "Connection"),
    (head(drop=(b"sec-websocket-key",)), 400, "missing Sec-WebSocket-Key"),
    (head(extra=[(b"sec-websocket-key", KEY)]), 400, "more than one"),
    (head(drop=(b"sec-websocket-key",), extra=[(b"sec-websocket-key", b"not base64!")]), 400, "invalid"),
    (head(drop=(b"sec-websocket-key",), extra=[(b"sec-websocket-key", base64.b64encode(b"short"))]), 400,
     "invalid"),
    (head(drop=(b"sec-websocket-version",)), 426, "Version"),
    (head(drop=(b"sec-websocket-version",), extra=[(b"sec-websocket-version", b"8")]), 426, "Version"),
    (head(extra=[(b"sec-websocket-extensions", b"permessage-deflate; =")]), 400, "Extensions"),
])
def test_bad_handshakes_are_rejected(request_head, status, detail):
    session = WebSocketSession(request_head)
    assert session.rejection is not None
    assert session.rejection.status == status
    assert detail in session.rejection.detail
    if status == 426:
        assert session.rejection.headers == [(b"sec-websocket-version", b"13")]
    with pytest.raises(ProtocolError):
        session.accept()
    assert session.receive_data(b"\x81\x80abcd") == []


def test_rfc8441_extended_connect():
    request = Request(b"CONNECT", b"/chat", "2", [(b"sec-websocket-version", b"13")], True, False, 1, b"websocket")
    session = WebSocketSession(request)
    assert session.rejection is None and session.h2
    status, headers = session.accept("chat")
    assert status == 200
    assert headers == [(b"sec-websocket-protocol", b"chat")]
    other = Request(b"CONNECT", b"/chat", "2", [(b"sec-websocket-version", b"13")], True, False, 1, None)
    assert WebSocketSession(other).rejection.status == 400  # type: ignore[union-attr]


def test_nothing_is_parsed_before_accept():
    session = WebSocketSession(head())
    assert session.receive_data(b"\x81\x80abcd") == []


# ---------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_text_and_binary_both_ways(size):
    pair = connect()
    text = ("é" * size)[:size]
    data = os.urandom(size)
    pair.client.send_text(text.encode())
    pair.client.send_binary(data)
    assert pair.to_server() == [text, data]
    pair.session.send_text(text)
    pair.session.send_bytes(data)
    frames = pair.to_client()
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.TEXT, text.encode()), (Opcode.BINARY, data)]


def test_bytes_fed_one_at_a_time():
    pair = connect()
    pair.client.send_text(b"hello")
    pair.client.send_binary(b"x" * 70000)
    pair.client.send_ping(b"p")
    pair.client.send_text("wörld".encode())
    data = b"".join(pair.client.data_to_send())
    events: list[Any] = []
    for i in range(len(data)):
        events += pair.to_server(data[i:i + 1])
    assert events == ["hello", b"x" * 70000, "wörld"]
    [pong] = pair.to_client()
    assert pong.opcode == Opcode.PONG and pong.data == b"p"


def test_fragmented_messages_with_interleaved_control_frames():
    pair = connect()
    pair.client.send_text(b"frag", fin=False)
    pair.client.send_ping(b"1")
    pair.client.send_continuation("mé".encode()[:2], fin=False)  # 'm' and the first byte of 'é'
    pair.client.send_pong(b"unsolicited")
    pair.client.send_continuation("mé".encode()[2:] + b"nted", fin=True)
    pair.client.send_binary(b"ab", fin=False)
    pair.client.send_continuation(b"", fin=False)
    pair.client.send_continuation(b"cd", fin=True)
    events = pair.to_server()
    assert isinstance(events[0], Pong)  # the pong arrived before the message it interrupted was complete
    messages = [e for e in events if not isinstance(e, Pong)]
    pongs = [e.payload for e in events if isinstance(e, Pong)]
    assert messages == ["fragménted", b"abcd"]
    assert pongs == [b"unsolicited"]
    [pong] = pair.to_client()
    assert pong.opcode == Opcode.PONG and pong.data == b"1"


def test_client_ping_answered_and_server_ping_ponged():
    pair = connect()
    pair.client.send_ping(b"are you there")
    assert pair.to_server() == []
    [pong] = pair.to_client()
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")
    pair.session.ping(b"\x00\x01\x02\x03")
    pair.to_client()  # the client answers on its own
    [event] = pair.to_server()
    assert isinstance(event, Pong) and event.payload == b"\x00\x01\x02\x03"
    with pytest.raises(ProtocolError):
        pair.session.ping(b"x" * 126)


# ---------------------------------------------------------------------------------------------- failures

def masked(payload: bytes, b0: int, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    if n < 126:
        head_bytes = bytes((b0, 0x80 | n))
    elif n < 65536:
        head_bytes = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head_bytes = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    return head_bytes + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def assert_failed(pair: Pair, events: list[Any], code: int) -> None:
    assert isinstance(events[-1], Close), events
    assert events[-1].code == code and events[-1].error
    assert pair.session.state == CLOSED
    frames = pair.to_client()
    assert frames[-1].opcode == Opcode.CLOSE
    assert int.from_bytes(frames[-1].data[:2], "big") == code
    # and nothing more is read
    assert pair.to_server(masked(b"late", 0x81)) == []


@pytest.mark.parametrize(("data", "code"), [
    (bytes((0x81, 5)) + b"hello", 1002),  # unmasked
    (masked(b"x", 0xC1), 1002),  # RSV1 without permessage-deflate
    (masked(b"x", 0xA1), 1002),  # RSV2
    (masked(b"x", 0x83), 1002),  # reserved data opcode
    (masked(b"x", 0x8B), 1002),  # reserved control opcode
    (masked(b"x", 0x09), 1002),  # fragmented ping
    (masked(b"x" * 126, 0x89), 1002),  # control frame too long
    (masked(b"x", 0x80), 1002),  # continuation without a message
    (masked(b"x", 0x01) + masked(b"y", 0x81), 1002),  # a new message inside a fragmented one
    (masked(b"\x03", 0x88), 1002),  # one-byte close payload
    (masked((999).to_bytes(2, "big"), 0x88), 1002),
    (masked((1005).to_bytes(2, "big"), 0x88), 1002),
    (masked((1006).to_bytes(2, "big"), 0x88), 1002),
    (masked((5000).to_bytes(2, "big"), 0x88), 1002),
    (bytes((0x82, 0xFF)) + (1 << 63).to_bytes(8, "big") + b"mask", 1002),  # 64-bit length with the top bit
    (masked(b"\xff\xfe", 0x81), 1007),  # invalid UTF-8
    (masked(b"\xed\xa0\x80", 0x81), 1007),  # a surrogate
    (masked((1000).to_bytes(2, "big") + b"\xff", 0x88), 1007),  # invalid UTF-8 reason
])
def test_protocol_errors_fail_the_connection(data, code):
    pair = connect(per_message_deflate=False)
    assert_failed(pair, pair.to_server(data), code)


def test_invalid_utf8_in_a_fragment_fails_at_once():
    pair = connect()
    events = pair.to_server(masked(b"ok", 0x01) + masked(b"\xc3\x28", 0x00))  # not final yet
    assert_failed(pair, events, 1007)


def test_utf8_split_at_the_end_is_only_an_error_at_the_end():
    pair = connect()
    assert pair.to_server(masked(b"ok\xc3", 0x01)) == []
    assert_failed(pair, pair.to_server(masked(b"", 0x80)), 1007)


@pytest.mark.parametrize("opcode", [0x81, 0x01, 0x80])
@pytest.mark.parametrize("step", [1, 3, 7, 40])
def test_invalid_utf8_in_a_frame_not_complete_yet_fails_as_it_arrives(opcode: int, step: int) -> None:
    # Autobahn 6.4.3/6.4.4: one frame sent in chops; the chop with the invalid byte fails the connection, before
    # the frame's end (a continuation goes on from the UTF-8 state of the fragments before it)
    pair = connect(per_message_deflate=False)
    before = b""
    if opcode == 0x80:
        before = masked(b"\xce", 0x01)  # a fragment ending inside a character: the next byte must continue it
        assert pair.to_server(before) == []
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 100  # over U+10FFFF, then more
    frame = masked(b"\xba" + payload if opcode == 0x80 else payload, opcode)
    cut = len(frame) - 100  # the invalid bytes are in, the frame is 100 bytes short
    events: list[Any] = []
    for i in range(0, cut, step):
        events += pair.to_server(frame[i:min(i + step, cut)])
        if events:
            break
    assert_failed(pair, events, 1007)


def test_invalid_utf8_found_while_the_frame_head_completes_fails_cleanly() -> None:
    # the check starts from the bytes held for the frame (found by Hypothesis: the buffer must not stay pinned)
    frame = masked(b"\x00\x00\x80\x00", 0x01) + masked(b"", 0x80)
    for first in range(1, 10):
        for second in range(first + 1, 11):
            pair = connect(per_message_deflate=False)
            events: list[Any] = []
            for piece in (frame[:first], frame[first:second], frame[second:]):
                events += pair.to_server(piece)
                if events:
                    break
            assert_failed(pair, events, 1007)


def test_a_valid_text_frame_in_chops_is_one_message() -> None:
    pair = connect(per_message_deflate=False)
    text = "κόσμε €𝄞 " * 500
    frame = masked(text.encode(), 0x81)
    events: list[Any] = []
    for i in range(0, len(frame), 5):
        events += pair.to_server(frame[i:i + 5])
    assert events == [text]


def test_a_message_in_a_million_one_byte_fragments_costs_its_size() -> None:
    pair = connect(max_size=2_000_000, per_message_deflate=False)
    count = 1_000_000
    assert pair.to_server(masked(b"a", 0x01)) == []
    pair.to_server(masked(b"b", 0x00, b"\x00\x00\x00\x00") * (count - 2))
    buffer = pair.session._frag_buffer
    assert isinstance(buffer, bytearray) and len(buffer) == count - 1  # one buffer, not a piece per fragment
    assert pair.to_server(masked(b"c", 0x80)) == ["a" + "b" * (count - 2) + "c"]


def test_deferred_failure_reports_the_error_without_the_close_frame() -> None:
    # the channel answers the messages before the error first, then calls fail()
    pair = connect(per_message_deflate=False)
    pair.session.defer_failures = True
    events = pair.to_server(masked(b"Hello", 0x81) + masked(b"x", 0xA1))
    assert events[0] == "Hello" and isinstance(events[1], Close) and events[1].code == 1002 and events[1].error
    assert pair.session.state == OPEN and pair.to_client() == []
    pair.session.send_text("Hello")
    pair.session.fail(1002, "reserved bits must be 0")
    frames = pair.to_client()
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE] and frames[0].data == b"Hello"
    assert pair.session.state == CLOSED


def test_max_size_decided_from_the_header():
    pair = connect(max_size=1000)
    # only the header of a 1001-byte frame: the session refuses it before any payload arrives
    header = bytes((0x82, 0x80 | 126)) + (1001).to_bytes(2, "big") + b"mask"
    events = pair.to_server(header)
    assert_failed(pair, events, 1009)


def test_max_size_exact_fits():
    pair = connect(max_size=1000)
    pair.client.send_binary(b"x" * 1000)
    assert pair.to_server() == [b"x" * 1000]


def test_max_size_counts_every_fragment():
    pair = connect(max_size=1000)
    assert pair.to_server(masked(b"x" * 600, 0x02)) == []
    assert_failed(pair, pair.to_server(bytes((0x80, 0x80 | 126)) + (401).to_bytes(2, "big")), 1009)


def test_max_size_resets_after_a_fragmented_message():
    pair = connect(max_size=1000)
    events = pair.to_server(masked(b"x" * 600, 0x02) + masked(b"y" * 400, 0x80) + masked(b"z" * 1000, 0x82))
    assert events == [b"x" * 600 + b"y" * 400, b"z" * 1000]


def test_a_frame_in_pieces_is_joined_once():
    pair = connect()
    frame = masked(b"q" * 200_000, 0x82)
    events: list[Any] = []
    for i in range(0, len(frame), 4096):
        events += pair.to_server(frame[i:i + 4096])
        if i + 4096 < len(frame):
            # one buffer grown in place (not re-joined each time, nor a piece object per read)
            assert len(pair.session._partial) == i + 4096
    assert events == [b"q" * 200_000]


# ---------------------------------------------------------------------------------------------- closing

def test_client_close_is_echoed_with_its_code():
    pair = connect()
    pair.client.send_close(4001, "bye now")
    [event] = pair.to_server()
    assert isinstance(event, Close) and (event.code, event.reason, event.error) == (4001, "bye now", False)
    assert pair.session.state == CLOSED
    [frame] = pair.to_client()
    assert frame.opcode == Opcode.CLOSE and int.from_bytes(frame.data[:2], "big") == 4001
    with pytest.raises(ProtocolError):
        pair.session.send_text("late")


def test_empty_close_is_1005():
    pair = connect()
    pair.client.send_close()
    [event] = pair.to_server()
    assert isinstance(event, Close) and event.code == 1005 and event.reason == ""
    [frame] = pair.to_client()
    assert frame.data == b""


def test_close_during_a_fragmented_message_is_a_close():
    pair = connect()
    events = pair.to_server(masked(b"part", 0x01) + masked((1000).to_bytes(2, "big"), 0x88))
    assert len(events) == 1 and isinstance(events[0], Close) and events[0].code == 1000


def test_server_close_handshake():
    pair = connect()
    pair.session.send_close(1001, "going away")
    assert pair.session.state == CLOSING
    [frame] = pair.to_client()
    assert frame.opcode == Opcode.CLOSE
    assert pair.client.close_rcvd is not None and pair.client.close_rcvd.code == 1001
    assert pair.client.close_rcvd.reason == "going away"
    with pytest.raises(ProtocolError):
        pair.session.send_bytes(b"x")
    # data still in flight from the client is discarded, its pings still answered, then its close completes it
    events = pair.to_server(masked(b"late", 0x81) + masked(b"p", 0x89))
    assert events == []
    [event] = pair.to_server()  # the client's reply
    assert isinstance(event, Close) and event.code == 1001 and not event.error
    assert pair.session.state == CLOSED


@pytest.mark.parametrize(("code", "reason"), [(999, ""), (1005, "x"), (1006, ""), (2000, ""), (5000, ""),
                                               (1000, "é" * 62)])
def test_send_close_refuses_invalid_codes_and_long_reasons(code, reason):
    pair = connect()
    with pytest.raises(ProtocolError):
        pair.session.send_close(code, reason)
    assert pair.session.state == OPEN


def test_send_close_without_a_code():
    pair = connect()
    pair.session.send_close(1005)
    [frame] = pair.to_client()
    assert frame.data == b""


def test_fail_sends_close_once():
    pair = connect()
    pair.session.fail(1011, "keepalive ping timeout")
    pair.session.fail(1011, "again")
    [frame] = pair.to_client()
    assert int.from_bytes(frame.data[:2], "big") == 1011 and frame.data[2:] == b"keepalive ping timeout"


# ---------------------------------------------------------------------------------------------- permessage-deflate

def deflate_client(**params: Any) -> list[Any]:
    return [ClientPerMessageDeflateFactory(**params)]


@pytest.mark.parametrize("params", [
    {},
    {"client_max_window_bits": True},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_max_window_bits": 10, "client_max_window_bits": 9},
    {"server_no_context_takeover": True, "client_no_context_takeover": True, "server_max_window_bits": 9},
])
def test_permessage_deflate_round_trip(params):
    pair = connect(extensions=deflate_client(**params))
    assert [e.name for e in pair.client.extensions] == ["permessage-deflate"]
    deflate = pair.session.deflate
    assert deflate is not None
    assert deflate.local_no_context_takeover == params.get("server_no_context_takeover", False)
    assert deflate.remote_no_context_takeover == params.get("client_no_context_takeover", False)
    assert deflate.idle
    messages = ["a" * 1000, "hello " * 50, "", "x", os.urandom(3000).hex()] * 3
    for message in messages:
        pair.client.send_text(message.encode())
        pair.client.send_binary(message.encode())
    assert pair.to_server() == [m for message in messages for m in (message, message.encode())]
    for message in messages:
        pair.session.send_text(message)
        pair.session.send_bytes(message.encode())
    frames = pair.to_client()
    assert [f.data for f in frames] == [m.encode() for message in messages for m in (message, message)]
    if params.get("server_no_context_takeover") and params.get("client_no_context_takeover"):
        assert deflate.idle  # no zlib state is kept between messages


def test_deflate_compresses_on_the_wire():
    pair = connect(extensions=deflate_client())
    pair.session.send_text("z" * 10000)
    assert len(b"".join(pair.out)) < 200
    pair.to_client()


def test_deflate_fragmented_compressed_message():
    pair = connect(extensions=deflate_client())
    compressor = zlib.compressobj(wbits=-12)
    data = compressor.compress(b"fragmented " * 100) + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = data[:-4]
    events = pair.to_server(masked(data[:10], 0x41) + masked(b"p", 0x89) + masked(data[10:], 0x80))
    assert events == ["fragmented " * 100]


def test_deflate_bfinal_block_resets_the_stream():
    pair = connect(extensions=deflate_client())
    for _ in range(2):
        compressor = zlib.compressobj(wbits=-12)
        data = compressor.compress(b"final block") + compressor.flush(zlib.Z_FINISH)
        assert pair.to_server(masked(data, 0xC1)) == ["final block"]


@pytest.mark.parametrize(("data", "code"), [
    (masked(b"\xff\xff\xff\xff", 0xC1), 1002),  # not deflate data
    (masked(b"x", 0x41) + masked(b"y", 0xC0), 1002),  # RSV1 on a continuation frame
    (masked(b"x", 0xC9), 1002),  # RSV1 on a control frame
])
def test_deflate_errors(data, code):
    pair = connect(extensions=deflate_client())
    assert_failed(pair, pair.to_server(data), code)


def test_decompression_bomb_bounded_by_max_size():
    pair = connect(extensions=deflate_client(), max_size=1 << 20)
    compressor = zlib.compressobj(wbits=-12)
    bomb = compressor.compress(b"\0" * (64 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    assert len(bomb) < 1 << 20  # the frame itself is under the limit
    assert_failed(pair, pair.to_server(masked(bomb, 0xC2)), 1009)


def test_decompression_bomb_across_fragments():
    pair = connect(extensions=deflate_client(), max_size=100_000)
    compressor = zlib.compressobj(wbits=-12)
    events = []
    for i in range(5):
        chunk = compressor.compress(b"\0" * 30_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
        events += pair.to_server(masked(chunk, 0x42 if i == 0 else 0x00))
        if events:
            break
    assert_failed(pair, events, 1009)


def test_decompress_never_inflates_past_the_limit():
    codec = PerMessageDeflate()
    compressor = zlib.compressobj(wbits=-15)
    bomb = compressor.compress(b"\0" * (10 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(_TooBig):
        codec.decompress(bomb[:-4], True, 1000)
    # what zlib produced stopped at the limit (+1): the rest is left unconsumed
    assert codec._decompressor is not None and len(codec._decompressor.unconsumed_tail) > 0


def test_deflate_disabled():
    pair = connect(extensions=deflate_client(), per_message_deflate=False)
    assert pair.session.deflate is None and pair.client.extensions == []
    pair.client.send_text(b"plain")
    assert pair.to_server() == ["plain"]


@pytest.mark.parametrize(("offer", "response"), [
    ("permessage-deflate", b"permessage-deflate; server_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits",
     b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits=9; server_max_window_bits=10",
     b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate",
     b"permessage-deflate; server_max_window_bits=12"),
    ("x-webkit-deflate-frame, permessage-deflate; unknown=1, permessage-deflate; client_max_window_bits=15",
     b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; client_no_context_takeover=1", None),
    ("foo", None),
])
def test_negotiation(offer, response):
    result = negotiate_deflate(offer)
    if response is None:
        assert result is None
    else:
        assert result is not None and result[0] == response


def test_negotiation_malformed_header():
    with pytest.raises(ValueError):
        negotiate_deflate("permessage-deflate;;")


# ---------------------------------------------------------------------------------------------- differential

# Sequences of frames a client may send, valid or not; the session must agree with websockets' own parser
# (plus the UTF-8 check websockets leaves to its message assembler).
frame_spec = st.tuples(
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB]),
    st.booleans(),  # fin
    st.sampled_from([0, 0, 0, 0x40, 0x20]),  # rsv
    st.one_of(st.binary(max_size=140), st.text(max_size=40).map(str.encode),
              st.sampled_from([b"\x03\xe8", b"\x03\xe8bye", b"\x0f\xa0", b"\x03\xed", b"\xff"])),
)


def reference(data: bytes, max_size: int) -> tuple[list[Any], int | None]:
    from websockets.protocol import Protocol, Side
    proto = Protocol(Side.SERVER, max_size=max_size)
    proto.receive_data(data)
    messages: list[Any] = []
    parts: list[bytes] = []
    kind = None
    for frame in proto.events_received():
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            kind, parts = frame.opcode, [frame.data]
        elif frame.opcode == Opcode.CONT:
            parts.append(frame.data)
        else:
            if frame.opcode == Opcode.CLOSE:
                return messages, proto.close_rcvd.code if proto.close_rcvd else None
            continue
        if frame.fin:
            payload = b"".join(parts)
            if kind == Opcode.TEXT:
                try:
                    messages.append(payload.decode())
                except UnicodeDecodeError:
                    return messages, 1007
            else:
                messages.append(payload)
    if proto.close_sent is not None:
        return messages, proto.close_sent.code
    return messages, None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_spec, max_size=8), st.randoms(use_true_random=False))
def test_agrees_with_websockets_parser(frames, rnd):
    data = b"".join(masked(payload, (0x80 if fin else 0) | rsv | opcode, rnd.randbytes(4))
                    for opcode, fin, rsv, payload in frames)
    expected_messages, expected_code = reference(data, 100)
    pair = connect(per_message_deflate=False, max_size=100)
    events: list[Any] = []
    # in random pieces
    pos = 0
    while pos < len(data):
        step = rnd.randint(1, 20)
        events += pair.to_server(data[pos:pos + step])
        pos += step
    messages = [e for e in events if isinstance(e, (str, bytes))]
    closes = [e for e in events if isinstance(e, Close)]
    assert len(closes) <= 1
    code = closes[0].code if closes else None
    if code == 1007 and expected_code not in (None, 1007):
        # we check UTF-8 per fragment: an invalid fragment fails before websockets sees a later error
        assert messages == expected_messages[:len(messages)]
        return
    if expected_code == 1002 and code is not None and code != 1002 and closes[0].error is False:
        # a close frame inside a fragmented message: a close for us, a protocol error for websockets
        return
    if code == 1007 and expected_code is None:
        # websockets would only notice at the final fragment, which has not arrived
        assert messages == expected_messages
        return
    assert messages == expected_messages
    assert code == expected_code


@pytest.mark.parametrize("params", [
    {},
    {"client_max_window_bits": True},
    {"server_max_window_bits": 9, "client_max_window_bits": 9},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
])
def test_compact_between_messages_keeps_the_stream_valid(params):
    """Dropping the zlib objects and rebuilding them from the window of history is invisible to the peer."""
    pair = connect(extensions=deflate_client(**params))
    deflate = pair.session.deflate
    assert deflate is not None
    # repetitive messages, so that each one refers back into the ones before it
    messages = [f"event {i % 7}: " + "tidegate websocket " * (i % 5 + 1) + os.urandom(8).hex() for i in range(60)]
    for i, message in enumerate(messages):
        pair.session.send_text(message)
        pair.client.send_text(message.encode())
        assert pair.to_server() == [message]
        if i % 3 == 0:
            pair.session.compact()
            assert deflate.idle
    frames = pair.to_client()
    assert [f.data.decode() for f in frames] == messages
    # and history longer than a window
    big = os.urandom(6000).hex()
    pair.session.send_text(big)
    pair.session.compact()
    pair.session.send_text(big[-3000:])
    pair.client.send_text(big.encode())
    pair.to_server()
    pair.session.compact()
    pair.client.send_text(big[-3000:].encode())
    assert pair.to_server() == [big[-3000:]]
    assert [f.data.decode() for f in pair.to_client()] == [big, big[-3000:]]


def test_compact_keeps_a_compressed_message_being_received():
    pair = connect(extensions=deflate_client())
    compressor = zlib.compressobj(wbits=-12)
    data = compressor.compress(b"fragmented " * 100) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert pair.to_server(masked(data[:10], 0x41)) == []
    pair.session.compact()
    assert pair.to_server(masked(data[10:-4], 0x80)) == ["fragmented " * 100]


def test_compact_keeps_the_history():
    pair = connect(extensions=deflate_client())
    message = os.urandom(1500).hex()  # 3000 bytes that do not compress on their own
    pair.session.send_text(message)
    first = len(b"".join(pair.out))
    pair.to_client()
    pair.session.compact()
    pair.session.send_text(message)
    second = len(b"".join(pair.out))
    assert second < first / 10  # a back-reference to the previous message, across the compaction
    assert [f.data.decode() for f in pair.to_client()] == [message]

"""The PROXY protocol header parser, without sockets."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tidegate.protocol.proxy import MAX_V1_LENGTH, MAX_V2_LENGTH, V2_SIGNATURE, InvalidProxyHeader, ProxyHeader, parse

REST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


def v2(command: int = 1, family: int = 1, transport: int = 1, body: bytes | None = None, *,
       version: int = 2, size: int | None = None) -> bytes:
    if body is None:
        body = b""
        if family == 1:
            body = (ipaddress.IPv4Address("192.0.2.7").packed + ipaddress.IPv4Address("198.51.100.1").packed
                    + struct.pack("!HH", 51000, 443))
        elif family == 2:
            body = (ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed
                    + struct.pack("!HH", 52000, 8443))
    length = len(body) if size is None else size
    return V2_SIGNATURE + bytes([version << 4 | command, family << 4 | transport]) + struct.pack("!H", length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


VALID = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n", ProxyHeader(1, 45, ("192.0.2.7", 51000),
                                                                     ("198.51.100.1", 443))),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 52000 8443\r\n", ProxyHeader(1, 47, ("2001:db8::7", 52000),
                                                                       ("2001:db8::1", 8443))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ProxyHeader(1, 44, ("0.0.0.0", 0),
                                                                    ("255.255.255.255", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader(1, 59)),
    (v2(), ProxyHeader(2, 28, ("192.0.2.7", 51000), ("198.51.100.1", 443))),
    (v2(family=2), ProxyHeader(2, 52, ("2001:db8::7", 52000), ("2001:db8::1", 8443))),
    (v2(command=0, family=0, transport=0), ProxyHeader(2, 16)),  # LOCAL: a health check, no addresses
    (v2(command=0), ProxyHeader(2, 28)),  # LOCAL with addresses: they are ignored
    (v2(family=0, transport=0), ProxyHeader(2, 16)),  # PROXY, UNSPEC: the connection's own addresses
    (v2(family=3, body=b"\0" * 216), ProxyHeader(2, 232)),  # UNIX addresses: none to take
    (v2(body=v2()[16:] + tlv(1, b"h2") + tlv(2, b"example.com") + tlv(0x20, b"\x01" + b"\0" * 4)),
     ProxyHeader(2, 28 + 5 + 14 + 8, ("192.0.2.7", 51000), ("198.51.100.1", 443))),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_a_valid_header_and_what_follows(header, expected):
    assert parse(header) == expected
    assert parse(header + REST) == expected  # the proxied stream after it is left alone
    assert (header + REST)[expected.length:] == REST


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_byte_at_a_time(header, expected):
    for end in range(len(header)):
        assert parse(header[:end]) is None, end
    assert parse(header) == expected


MALFORMED = {
    "no header": b"GET / HTTP/1.1\r\n\r\n",
    "TLS without a header": b"\x16\x03\x01\x02\x00",
    "HTTP/2 preface without a header": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lower-case v1": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 without a space": b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 unknown protocol": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 missing port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1 extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1 double space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 bad IPv4": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "v1 IPv6 for TCP4": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "v1 IPv4 for TCP6": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 port too large": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1 port with a sign": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "v1 port with leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1 non-ASCII address": b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
    "v1 LF alone": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1 CR alone": b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
    "v1 too long": b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 14) + b"\r\n",
    "v2 bad signature": V2_SIGNATURE[:-1] + b"X" + v2()[12:],
    "v2 version 1": v2(version=1),
    "v2 version 3": v2(version=3),
    "v2 command 2": v2(command=2),
    "v2 family 4": v2(family=4),
    "v2 transport 3": v2(transport=3),
    "v2 datagram": v2(transport=2),
    "v2 IPv4 too short": v2(body=b"\0" * 11),
    "v2 IPv6 too short": v2(family=2, body=b"\0" * 35),
    "v2 UNIX too short": v2(family=3, body=b"\0" * 215),
    "v2 over the cap": v2(size=MAX_V2_LENGTH + 1),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed(data):
    with pytest.raises(InvalidProxyHeader):
        parse(data)
    with pytest.raises(InvalidProxyHeader):
        parse(data + REST)


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_byte_at_a_time_fails_once_and_for_all(data):
    """Fed a byte at a time, a malformed header is never taken: each prefix is incomplete or invalid, and once
    invalid it stays so."""
    failed = False
    for end in range(1, len(data) + 1):
        try:
            result = parse(data[:end])
        except InvalidProxyHeader:
            failed = True
        else:
            assert not failed, end
            assert result is None, end
    assert failed


@pytest.mark.parametrize(("data", "at"), [
    (b"G", 1), (b"\x16", 1), (b"\r\n\r\n\x00X", 6), (b"PRI", 3),
    (V2_SIGNATURE + b"\x12", 13),  # version 1 after the v2 signature
    (V2_SIGNATURE + b"\x21\x41", 14),  # family 4
    (V2_SIGNATURE + b"\x21\x11\xff\xff", 16),  # announces 65535 bytes: refused before they come
])
def test_refused_as_early_as_the_bytes_tell(data, at):
    assert len(data) == at
    with pytest.raises(InvalidProxyHeader):
        parse(data)


def test_bounds():
    # a v1 header without its CRLF in 107 bytes is refused without waiting for more
    with pytest.raises(InvalidProxyHeader, match="longer than 107"):
        parse(b"PROXY UNKNOWN " + b"a" * 200)
    assert parse(b"PROXY UNKNOWN " + b"a" * (MAX_V1_LENGTH - 16)) is None
    longest = b"PROXY UNKNOWN " + b"a" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(longest) == MAX_V1_LENGTH
    assert parse(longest) == ProxyHeader(1, MAX_V1_LENGTH)
    # the longest v2 header taken
    header = v2(body=v2()[16:] + tlv(0xE0, b"\0" * (MAX_V2_LENGTH - 12 - 3)))
    assert parse(header) == ProxyHeader(2, 16 + MAX_V2_LENGTH, ("192.0.2.7", 51000), ("198.51.100.1", 443))


def test_empty_is_incomplete():
    assert parse(b"") is None

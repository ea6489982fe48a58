"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a proxy sends before anything else on a
connection, naming the client it accepted the connection from.  Sans-IO: bytes in, an answer out.

:func:`parse` takes the bytes a connection has received so far and answers:

- ``None``: the header is not complete yet; every byte given belongs to it (a reader may consume them all);
- a :class:`ProxyHeader`: the header is complete and took ``length`` bytes (what follows is the proxied stream);
- :class:`InvalidProxyHeader` raised: not a valid header (the connection is to be closed), as early as the bytes
  tell: a wrong signature at the first byte, a v1 header without its CRLF in 107 bytes, and so on.

Version 1 is a text line: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``,
107 bytes at most.  Version 2 is binary: a 12-byte signature, version and command, family and transport, the
length of what follows (the addresses, then type-length-value extensions, which are skipped); the ``LOCAL``
command (a proxy's own health check) and the ``UNSPEC`` family carry no client, and the connection keeps its own
addresses.  A version 2 header is bounded here by :data:`MAX_V2_LENGTH`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["MAX_V1_LENGTH", "MAX_V2_LENGTH", "V2_SIGNATURE", "InvalidProxyHeader", "ProxyHeader", "parse"]

#: a version 1 header's longest form, CRLF included (the specification's bound)
MAX_V1_LENGTH = 107
#: the most bytes a version 2 header may announce after its 16 fixed bytes (addresses and extensions)
MAX_V2_LENGTH = 2048
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_INET, _INET6, _UNIX = 1, 2, 3
_ADDRESS_SIZES = {_INET: 12, _INET6: 36, _UNIX: 216}


class InvalidProxyHeader(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header.

    ``client`` and ``server`` are the addresses the proxy reports (source and destination), or None when the
    header names none (v1 ``UNKNOWN``, v2 ``LOCAL``, ``UNSPEC`` or UNIX family): the connection's own addresses
    stand then."""

    version: int
    length: int
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None while incomplete; raises :class:`InvalidProxyHeader`."""
    if not data:
        return None
    if data[0] == 0x0D:  # CR: the version 2 signature's first byte
        return _parse_v2(data)
    if data[0] == 0x50:  # "P"
        return _parse_v1(data)
    raise InvalidProxyHeader("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    head = data[:len(_V1_PREFIX)]
    if not _V1_PREFIX.startswith(head):
        raise InvalidProxyHeader("no PROXY protocol header")
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        window = data[:MAX_V1_LENGTH]
        if len(data) >= MAX_V1_LENGTH:
            raise InvalidProxyHeader(f"a version 1 header longer than {MAX_V1_LENGTH} bytes")
        cr = window.find(b"\r")
        if b"\n" in window or (0 <= cr < len(window) - 1):
            raise InvalidProxyHeader("a version 1 header with a stray CR or LF")
        return None
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise InvalidProxyHeader("a version 1 header with a stray CR or LF")
    parts = line.split(b" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        # the rest of the line may say anything: the receiver ignores it (and keeps the connection's addresses)
        return ProxyHeader(1, length)
    if len(parts) != 6 or parts[0] != b"PROXY":
        raise InvalidProxyHeader("a version 1 header is PROXY, a protocol, two addresses and two ports")
    _, protocol, source, destination, source_port, destination_port = parts
    if protocol == b"TCP4":
        version = 4
    elif protocol == b"TCP6":
        version = 6
    else:
        raise InvalidProxyHeader(f"a version 1 header with protocol {protocol.decode('ascii', 'replace')!r}")
    client = (_v1_address(source, version), _v1_port(source_port))
    server = (_v1_address(destination, version), _v1_port(destination_port))
    return ProxyHeader(1, length, client, server)


def _v1_address(text: bytes, version: int) -> str:
    try:
        parsed = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader("a version 1 header with an invalid address") from None
    if parsed.version != version:
        raise InvalidProxyHeader(f"a version 1 header with an address that is not IPv{version}")
    return str(parsed)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise InvalidProxyHeader("a version 1 header with an invalid port")
    port = int(text)
    if port > 65535:
        raise InvalidProxyHeader("a version 1 header with an invalid port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
        raise InvalidProxyHeader("no PROXY protocol header")
    if len(data) < 13:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise InvalidProxyHeader(f"PROXY protocol version {version} after the version 2 signature")
    if command > 1:
        raise InvalidProxyHeader(f"a version 2 header with command {command}")
    if len(data) < 14:
        return None
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family > _UNIX or transport > 2:
        raise InvalidProxyHeader(f"a version 2 header with address family and protocol 0x{data[13]:02x}")
    if len(data) < 16:
        return None
    (size,) = struct.unpack_from("!H", data, 14)
    if size > MAX_V2_LENGTH:
        raise InvalidProxyHeader(f"a version 2 header of {size} bytes (more than {MAX_V2_LENGTH})")
    needed = _ADDRESS_SIZES.get(family, 0)
    if command == 1 and size < needed:
        raise InvalidProxyHeader(f"a version 2 header too short for its addresses ({size} bytes)")
    length = 16 + size
    if len(data) < length:
        return None
    if command == 0 or family not in (_INET, _INET6) or transport == 0:
        # LOCAL (the proxy's own connection, a health check), or no address the connection could take
        return ProxyHeader(2, length)
    if transport != 1:
        raise InvalidProxyHeader("a version 2 header for a datagram on a stream connection")
    body = data[16:length]
    if family == _INET:
        source, destination = str(ipaddress.IPv4Address(body[0:4])), str(ipaddress.IPv4Address(body[4:8]))
        ports = struct.unpack_from("!HH", body, 8)
    else:
        source, destination = str(ipaddress.IPv6Address(body[0:16])), str(ipaddress.IPv6Address(body[16:32]))
        ports = struct.unpack_from("!HH", body, 32)
    # what follows the addresses (type-length-value extensions: ALPN, authority, TLS, ...) is skipped
    return ProxyHeader(2, length, (source, ports[0]), (destination, ports[1]))

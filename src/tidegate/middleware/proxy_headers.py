"""Client address, scheme and host as a reverse proxy reports them.

``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and RFC 7239 ``Forwarded`` are believed only when the peer that
sent them is trusted (``--forwarded-allow-ips``).  Each proxy appends the address it received the request from, so
the chain is read right to left: the nearest entries were written by proxies we trust, and the first entry that is
not a trusted proxy is the client.  Whatever a client wrote to the left of that is ignored, so a client cannot
spoof its address by sending these headers itself.

When both are present, ``Forwarded`` is used and the ``X-Forwarded-*`` headers are ignored.  ``X-Forwarded-Proto``,
``-Host`` and ``-Port`` are taken from the hop the client was found at when each proxy appended to them (as many
values as ``X-Forwarded-For`` entries), otherwise from their last value, the one the nearest proxy set.  A
malformed ``Forwarded`` header is ignored whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["ProxyHeadersMiddleware", "TrustedHosts", "parse_forwarded"]

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

_SCHEMES = {
    "http": {"http": "http", "https": "https", "ws": "http", "wss": "https"},
    "websocket": {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"},
}
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedHosts:
    """A ``--forwarded-allow-ips`` list: IP addresses and CIDR networks, ``*`` for any peer, ``unix`` for peers on
    a UNIX socket.  ``host in trusted`` tells whether a proxy at that address is believed."""

    def __init__(self, spec: str | Iterable[str]) -> None:
        items = [part.strip() for part in (spec.split(",") if isinstance(spec, str) else spec)]
        self.any = False
        self.unix = False
        self.addresses: set[str] = set()
        self.networks: list[IPNetwork] = []
        for item in items:
            if not item:
                continue
            if item == "*":
                self.any = True
            elif item == "unix":
                self.unix = True
            else:
                try:
                    network = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address, a network (CIDR), '*' or 'unix'") from None
                if network.num_addresses == 1:
                    self.addresses.add(str(network.network_address))
                else:
                    self.networks.append(network)

    def __contains__(self, host: object) -> bool:
        if self.any:
            return True
        if not isinstance(host, str):
            return False
        if host in self.addresses:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # "unknown", an obfuscated name, garbage
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        text = str(address)
        if text in self.addresses:
            return True
        return any(address in network for network in self.networks)


def _split_node(text: str) -> tuple[str, int]:
    """A node as proxies write it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``, ``unknown``) → host, port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else 0
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else 0
    return text, 0


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out = []
        escaped = False
        for char in value[1:-1]:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    if '"' in value:
        raise ValueError("stray quote")
    return value


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """An RFC 7239 ``Forwarded`` value → one dict per element (lower-cased parameter names, unquoted values).

    ``ValueError`` if it is malformed."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    current: list[str] = []
    quoted = False
    escaped = False

    def end_pair() -> None:
        text = "".join(current).strip()
        current.clear()
        if not text:
            return
        name, sep, raw = text.partition("=")
        name = name.strip().lower()
        if not sep or not name or not name.replace("-", "").isalnum():
            raise ValueError(f"malformed Forwarded parameter {text!r}")
        pairs[name] = _unquote(raw.strip())

    for char in value:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            current.append(char)
        elif char == ";":
            end_pair()
        elif char == ",":
            end_pair()
            elements.append(pairs)
            pairs = {}
        else:
            current.append(char)
    if quoted:
        raise ValueError("unterminated quoted string in Forwarded")
    end_pair()
    elements.append(pairs)
    return elements


def _header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every comma-separated value of every ``name`` header, in order."""
    values: list[str] = []
    for key, value in headers:
        if key == name:
            values.extend(part.strip() for part in value.decode("latin-1").split(","))
    return values


def _sane_host(host: str) -> bool:
    return bool(host) and host.isprintable() and " " not in host and "/" not in host


class ProxyHeadersMiddleware:
    """Rewrite ``client``, ``scheme`` and ``server`` of ``http`` and ``websocket`` scopes from trusted proxies'
    headers; every other scope passes through untouched."""

    def __init__(self, app: ASGIApp, trusted: str | Iterable[str] | TrustedHosts = "127.0.0.1") -> None:
        self.app = app
        self.trusted = trusted if isinstance(trusted, TrustedHosts) else TrustedHosts(trusted)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if (self.trusted.unix or self.trusted.any) if client is None else client[0] in self.trusted:
                self.apply(scope)
        await self.app(scope, receive, send)

    def apply(self, scope: Scope) -> None:
        """Resolve the forwarding headers of ``scope`` (whose peer is trusted) into it, in place."""
        headers = scope["headers"]
        forwarded = [value.decode("latin-1") for key, value in headers if key == b"forwarded"]
        if forwarded:
            try:
                elements = parse_forwarded(", ".join(forwarded))
            except ValueError:
                return
            nodes = [element.get("for") for element in elements]
            protos = [element.get("proto") for element in elements]
            hosts = [element.get("host") for element in elements]
            index = self._resolve(nodes)
            if index is None:
                return
            self._update(scope, nodes[index], protos[index], hosts[index], None)
            return
        nodes_xff: list[str | None] = list(_header_values(headers, b"x-forwarded-for"))
        xproto = _header_values(headers, b"x-forwarded-proto")
        xhost = _header_values(headers, b"x-forwarded-host")
        xport = _header_values(headers, b"x-forwarded-port")
        if not (nodes_xff or xproto or xhost or xport):
            return
        index = self._resolve(nodes_xff) if nodes_xff else None

        def pick(values: list[str]) -> str | None:
            if not values:
                return None
            if index is not None and len(values) == len(nodes_xff):
                return values[index]
            return values[-1]

        node = nodes_xff[index] if index is not None else None
        self._update(scope, node, pick(xproto), pick(xhost), pick(xport))

    def _resolve(self, nodes: list[str | None]) -> int | None:
        """Index of the client in a chain of nodes: the rightmost one that is not a trusted proxy, or the leftmost
        if every one is."""
        index = None
        for i in range(len(nodes) - 1, -1, -1):
            index = i
            node = nodes[i]
            if node is None or _split_node(node)[0] not in self.trusted:
                break
        return index

    @staticmethod
    def _update(scope: Scope, node: str | None, proto: str | None, host: str | None, port: str | None) -> None:
        if node:
            address, client_port = _split_node(node)
            if _sane_host(address):
                scope["client"] = (address, client_port)
        if proto:
            scheme = _SCHEMES[scope["type"]].get(proto.strip().lower())
            if scheme is not None:
                scope["scheme"] = scheme
        if host or port:
            server = scope.get("server")
            server_host = server[0] if server else None
            server_port = server[1] if server else None
            if host:
                name, number = _split_node(host)
                if not _sane_host(name):
                    return
                server_host = name
                server_port = number or _DEFAULT_PORTS.get(scope["scheme"], server_port)
            if port and port.strip().isdigit() and 0 < int(port) < 65536:
                server_port = int(port)
            if server_host is not None:
                scope["server"] = (server_host, server_port)

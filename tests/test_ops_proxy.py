"""Proxy headers: the middleware alone (no sockets), then through a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tidegate.middleware.proxy_headers import ProxyHeadersMiddleware, TrustedHosts, parse_forwarded

from .ops_apps import app as ops_app


def resolve(headers, *, peer=("127.0.0.1", 5000), trusted="127.0.0.1", kind="http", scheme="http",
            server=("10.9.9.9", 8000)):
    """The scope the app sees behind the middleware."""
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    scope = {"type": kind, "scheme": scheme, "client": peer, "server": server,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(ProxyHeadersMiddleware(app, trusted)(scope, None, None))
    return seen


def test_trusted_hosts():
    trusted = TrustedHosts("127.0.0.1, 10.0.0.0/8,::1 , fd00::/8")
    assert "127.0.0.1" in trusted and "10.2.3.4" in trusted and "::1" in trusted and "fd00::5" in trusted
    assert "::ffff:10.0.0.1" in trusted  # an IPv4-mapped peer on a dual-stack socket
    assert "11.0.0.1" not in trusted and "unknown" not in trusted and None not in trusted
    assert "127.0.0.2" not in trusted
    assert "203.0.113.9" in TrustedHosts("*") and TrustedHosts("*").any
    assert TrustedHosts("unix").unix and "127.0.0.1" not in TrustedHosts("unix")
    with pytest.raises(ValueError, match="'localhost' is not an IP address"):
        TrustedHosts("localhost")


def test_x_forwarded_for_from_a_trusted_proxy():
    scope = resolve([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
                     ("X-Forwarded-Host", "example.com")])
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert scope["server"] == ("example.com", 443)


def test_headers_from_an_untrusted_peer_are_ignored():
    headers = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("Forwarded", "for=1.2.3.4")]
    scope = resolve(headers, peer=("198.51.100.1", 4444))
    assert scope["client"] == ("198.51.100.1", 4444)
    assert scope["scheme"] == "http" and scope["server"] == ("10.9.9.9", 8000)


def test_spoofed_entries_left_of_the_real_client_are_ignored():
    # the client sent "X-Forwarded-For: 1.1.1.1"; our proxy appended the address it really came from
    scope = resolve([("X-Forwarded-For", "1.1.1.1, 198.51.100.20")])
    assert scope["client"] == ("198.51.100.20", 0)


def test_multi_hop_chain_resolved_through_trusted_hops():
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.0.0.2, 10.0.0.3")]
    scope = resolve(headers, trusted="127.0.0.1,10.0.0.0/8")
    assert scope["client"] == ("203.0.113.5", 0)
    # several header lines are one list, in order
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.5"), ("X-Forwarded-For", "10.0.0.2")]
    assert resolve(headers, trusted="127.0.0.1,10.0.0.0/8")["client"] == ("203.0.113.5", 0)


def test_every_hop_trusted_gives_the_leftmost():
    scope = resolve([("X-Forwarded-For", "10.0.0.9, 10.0.0.2")], trusted="127.0.0.1,10.0.0.0/8")
    assert scope["client"] == ("10.0.0.9", 0)
    assert resolve([("X-Forwarded-For", "7.7.7.7, 8.8.8.8")], trusted="*")["client"] == ("7.7.7.7", 0)


def test_proto_per_hop_when_each_proxy_appended():
    # an edge proxy got https and forwarded http to the inner one: the client's scheme is the edge's
    headers = [("X-Forwarded-For", "203.0.113.5, 10.0.0.2"), ("X-Forwarded-Proto", "https, http")]
    assert resolve(headers, trusted="127.0.0.1,10.0.0.0/8")["scheme"] == "https"
    # a client that adds its own proto entry does not choose the scheme
    headers = [("X-Forwarded-For", "1.1.1.1, 198.51.100.20"), ("X-Forwarded-Proto", "https, http")]
    assert resolve(headers)["scheme"] == "http"
    # one value (the nearest proxy overwrote it) is that proxy's word
    headers = [("X-Forwarded-For", "1.1.1.1, 198.51.100.20"), ("X-Forwarded-Proto", "https")]
    assert resolve(headers)["scheme"] == "https"


def test_host_and_port():
    scope = resolve([("X-Forwarded-Host", "example.com:8443"), ("X-Forwarded-Proto", "https")])
    assert scope["server"] == ("example.com", 8443)
    scope = resolve([("X-Forwarded-Host", "example.com"), ("X-Forwarded-Port", "9000")])
    assert scope["server"] == ("example.com", 9000)
    assert resolve([("X-Forwarded-Port", "9000")])["server"] == ("10.9.9.9", 9000)
    assert resolve([("X-Forwarded-Host", "[2001:db8::1]:81")])["server"] == ("2001:db8::1", 81)
    # nonsense is ignored
    assert resolve([("X-Forwarded-Host", "a b/c")])["server"] == ("10.9.9.9", 8000)
    assert resolve([("X-Forwarded-Port", "99999")])["server"] == ("10.9.9.9", 8000)
    assert resolve([("X-Forwarded-Proto", "gopher")])["scheme"] == "http"


def test_websocket_scheme():
    assert resolve([("X-Forwarded-Proto", "https")], kind="websocket", scheme="ws")["scheme"] == "wss"
    assert resolve([("X-Forwarded-Proto", "wss")], kind="websocket", scheme="ws")["scheme"] == "wss"
    assert resolve([("X-Forwarded-Proto", "http")], kind="websocket", scheme="wss")["scheme"] == "ws"


def test_parse_forwarded():
    assert parse_forwarded('for="_gazonk"') == [{"for": "_gazonk"}]
    assert parse_forwarded('For="[2001:db8:cafe::17]:4711"') == [{"for": "[2001:db8:cafe::17]:4711"}]
    assert parse_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43") == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]
    assert parse_forwarded("for=192.0.2.43, for=198.51.100.17") == [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]
    assert parse_forwarded('for="a\\"b;c,d"') == [{"for": 'a"b;c,d'}]
    for bad in ['for="unterminated', "for", "=x", 'for=a"b']:
        with pytest.raises(ValueError):
            parse_forwarded(bad)


def test_rfc7239_forwarded():
    headers = [("Forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https;host=shop.example, for=10.0.0.2')]
    scope = resolve(headers, trusted="127.0.0.1,10.0.0.0/8")
    assert scope["client"] == ("2001:db8:cafe::17", 4711)
    assert scope["scheme"] == "https" and scope["server"] == ("shop.example", 443)


def test_forwarded_spoofing_and_precedence():
    # the client's own element stays left of the element our proxy added
    headers = [("Forwarded", "for=1.1.1.1;proto=https, for=198.51.100.20;proto=http")]
    scope = resolve(headers)
    assert scope["client"] == ("198.51.100.20", 0) and scope["scheme"] == "http"
    # Forwarded wins over X-Forwarded-*
    headers = [("Forwarded", "for=203.0.113.1"), ("X-Forwarded-For", "203.0.113.2")]
    assert resolve(headers)["client"] == ("203.0.113.1", 0)
    # a malformed Forwarded is ignored whole, and does not fall back to X-Forwarded-For
    headers = [("Forwarded", 'for="broken'), ("X-Forwarded-For", "203.0.113.2")]
    assert resolve(headers)["client"] == ("127.0.0.1", 5000)
    # an obfuscated or unknown client is reported as given
    assert resolve([("Forwarded", "for=unknown")])["client"] == ("unknown", 0)


def test_unix_socket_peers():
    headers = [("X-Forwarded-For", "203.0.113.7")]
    assert resolve(headers, peer=None, trusted="127.0.0.1")["client"] is None
    assert resolve(headers, peer=None, trusted="unix")["client"] == ("203.0.113.7", 0)


def test_other_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    asyncio.run(ProxyHeadersMiddleware(app, "*")(scope, None, None))
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]


def test_through_a_server(run_server):
    headers = {"x-forwarded-for": "1.1.1.1, 203.0.113.9", "x-forwarded-proto": "https"}
    server = run_server(ops_app, proxy_headers=True)
    data = httpx.get(server.url + "/", headers=headers, timeout=5).json()
    assert data["client"] == ["203.0.113.9", 0] and data["scheme"] == "https"
    # the test client (127.0.0.1) is not trusted here
    server = run_server(ops_app, proxy_headers=True, forwarded_allow_ips="10.0.0.0/8")
    data = httpx.get(server.url + "/", headers=headers, timeout=5).json()
    assert data["client"][0] == "127.0.0.1" and data["scheme"] == "http"
    # off by default
    server = run_server(ops_app)
    data = json.loads(httpx.get(server.url + "/", headers=headers, timeout=5).content)
    assert data["client"][0] == "127.0.0.1"


def test_behind_a_proxy_on_a_unix_socket(run_server, tmp_path):
    """nginx → unix socket: its headers are believed with --forwarded-allow-ips unix, as nginx writes them."""
    path = str(tmp_path / "app.sock")
    headers = {"x-forwarded-for": "6.6.6.6, 198.51.100.4", "x-forwarded-proto": "https", "host": "example.com"}
    server = run_server(ops_app, uds=path, proxy_headers=True, forwarded_allow_ips="unix")
    assert server.sockets
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as client:
        data = client.get("http://example.com/", headers=headers).json()
    assert data["client"] == ["198.51.100.4", 0] and data["scheme"] == "https"
    server = run_server(ops_app, uds=str(tmp_path / "b.sock"), proxy_headers=True)  # 127.0.0.1 only
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "b.sock")), timeout=5) as client:
        data = client.get("http://example.com/", headers=headers).json()
    assert data["client"] is None and data["scheme"] == "http"


def test_forwarding_fields_from_a_trusted_proxy_without_proxy_headers_get_one_warning(run_server, caplog,
                                                                                     monkeypatch):
    from tidegate.runtime import context

    monkeypatch.setattr(context, "_forwarded_hinted", False)
    server = run_server(ops_app)  # --proxy-headers off (the default); 127.0.0.1 trusted (the default)
    plain = httpx.get(server.url + "/status/200", timeout=10)
    assert plain.status_code == 200
    assert "X-Forwarded" not in caplog.text
    for _ in range(3):
        response = httpx.get(server.url + "/status/200", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert response.status_code == 200
    hints = [r for r in caplog.records if "carry X-Forwarded-*/Forwarded fields" in r.getMessage()]
    assert len(hints) == 1 and "--proxy-headers" in hints[0].getMessage()


def test_no_forwarding_warning_from_an_untrusted_peer_or_with_proxy_headers_on(run_server, caplog, monkeypatch):
    from tidegate.runtime import context

    monkeypatch.setattr(context, "_forwarded_hinted", False)
    untrusted = run_server(ops_app, forwarded_allow_ips="10.0.0.1")
    on = run_server(ops_app, proxy_headers=True)
    for server in (untrusted, on):
        httpx.get(server.url + "/status/200", headers={"Forwarded": "for=203.0.113.9"}, timeout=10)
    assert "carry X-Forwarded" not in caplog.text

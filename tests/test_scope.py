"""The ASGI ``http`` scope built from a request head, per asgiref's www.rst (spec version 2.4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from asgiref.typing import HTTPScope

from tidegate.asgi.scope import ConnectionInfo, http_scope, split_target
from tidegate.protocol.events import Request
from tidegate.protocol.http1 import H1Connection

TCP = ConnectionInfo(("203.0.113.7", 51234), ("127.0.0.1", 8000), "http")


def scope_for(target: bytes = b"/", *, method: bytes = b"GET", version: str = "1.1",
              headers: list[tuple[bytes, bytes]] | None = None, info: ConnectionInfo = TCP) -> dict[str, Any]:
    request = Request(method, target, version, headers if headers is not None else [(b"host", b"example.com")],
                      True, False)
    return http_scope(request, info)


def parsed_scope(data: bytes, info: ConnectionInfo = TCP) -> dict[str, Any]:
    """The scope for the first request in ``data``, parsed by the HTTP/1.1 connection."""
    [request] = [e for e in H1Connection().receive_data(data) if isinstance(e, Request)]
    return http_scope(request, info)


def test_exact_keys_per_the_spec() -> None:
    scope = scope_for()
    assert set(scope) == set(HTTPScope.__annotations__)
    assert set(scope) == {"type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
                          "root_path", "headers", "client", "server", "state", "extensions"}


def test_values_and_types() -> None:
    scope = parsed_scope(b"POST /items/42?x=1&y=%20z HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\n"
                         b"X-Dup: 1\r\nx-dup: 2\r\n\r\n")
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "query_string": b"x=1&y=%20z",
        "root_path": "",
        "headers": [(b"host", b"example.com"), (b"content-type", b"text/plain"), (b"x-dup", b"1"),
                    (b"x-dup", b"2")],
        "client": ("203.0.113.7", 51234),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "extensions": {"http.response.early_hint": {}, "http.response.pathsend": {}, "http.response.zerocopysend": {}},
    }
    assert type(scope["http_version"]) is str and type(scope["method"]) is str
    assert type(scope["path"]) is str and type(scope["root_path"]) is str
    assert type(scope["raw_path"]) is bytes and type(scope["query_string"]) is bytes
    for name, value in scope["headers"]:
        assert type(name) is bytes and type(value) is bytes and name == name.lower()
    host, port = scope["client"]
    assert type(host) is str and type(port) is int
    host, port = scope["server"]
    assert type(host) is str and type(port) is int


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_http_version(version: str) -> None:
    assert scope_for(version=version)["http_version"] == version


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE",
                                   b"CONNECT", b"PROPFIND", b"MKCOL", b"REPORT", b"PURGE", b"M-SEARCH", b"QUERY"])
def test_method_is_an_upper_case_str(method: bytes) -> None:
    assert scope_for(method=method)["method"] == method.decode()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_scheme_comes_from_the_connection(scheme: str) -> None:
    assert scope_for(info=ConnectionInfo(None, None, scheme))["scheme"] == scheme


PATHS = [
    # (target, path, raw_path, query_string)
    (b"/", "/", b"/", b""),
    (b"/plain/path", "/plain/path", b"/plain/path", b""),
    (b"/caf%C3%A9/%E6%97%A5%E6%9C%AC", "/café/日本", b"/caf%C3%A9/%E6%97%A5%E6%9C%AC", b""),
    (b"/a%2Fb", "/a/b", b"/a%2Fb", b""),  # decoded in path, kept in raw_path
    (b"/a%20b+c", "/a b+c", b"/a%20b+c", b""),  # '+' is not a space in a path
    (b"/bad%FFutf8", "/bad\ufffdutf8", b"/bad%FFutf8", b""),
    (b"/half%C3", "/half\ufffd", b"/half%C3", b""),
    (b"/%zz", "/%zz", b"/%zz", b""),  # not a percent sequence: kept as is
    (b"/%00nul", "/\x00nul", b"/%00nul", b""),
    (b"/p?", "/p", b"/p", b""),
    (b"/p?a=1&b=%20&c", "/p", b"/p", b"a=1&b=%20&c"),
    (b"/p%3Fq?r=%3F", "/p?q", b"/p%3Fq", b"r=%3F"),
    (b"/p?x=1?y=2", "/p", b"/p", b"x=1?y=2"),
    (b"//double//slash", "//double//slash", b"//double//slash", b""),
    (b"/page#fragment", "/page", b"/page", b""),
    (b"/page?q=1#fragment", "/page", b"/page", b"q=1"),
    (b"*", "*", b"*", b""),
    (b"http://example.com/a%20b?x=1", "/a b", b"/a%20b", b"x=1"),
    (b"https://example.com", "/", b"/", b""),
    (b"http://example.com?x=1", "/", b"/", b"x=1"),
    (b"http://user@example.com:8080/p/q?r#f", "/p/q", b"/p/q", b"r"),
    (b"HTTP://EXAMPLE.COM/Case", "/Case", b"/Case", b""),
    (b"example.com:443", "example.com:443", b"example.com:443", b""),  # CONNECT's authority-form, as sent
]


@pytest.mark.parametrize(("target", "path", "raw_path", "query"), PATHS, ids=[p[0].decode() for p in PATHS])
def test_path_raw_path_and_query_string(target: bytes, path: str, raw_path: bytes, query: bytes) -> None:
    scope = scope_for(target)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (path, raw_path, query)


def test_options_asterisk_and_absolute_form_through_the_parser() -> None:
    scope = parsed_scope(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (scope["method"], scope["path"], scope["raw_path"]) == ("OPTIONS", "*", b"*")
    scope = parsed_scope(b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/x", b"/x", b"y=1")


SPLITS = [
    (b"/", (b"/", b"")),
    (b"/a?b", (b"/a", b"b")),
    (b"/a?", (b"/a", b"")),
    (b"/a?b?c", (b"/a", b"b?c")),
    (b"/a#b?c", (b"/a", b"")),
    (b"/a%2Fb?c%2Fd", (b"/a%2Fb", b"c%2Fd")),
    (b"*", (b"*", b"")),
    (b"http://h", (b"/", b"")),
    (b"http://h/", (b"/", b"")),
    (b"http://h/p?q", (b"/p", b"q")),
    (b"http://h?q=/x", (b"/", b"q=/x")),
    (b"https://h:443/p", (b"/p", b"")),
    (b"h:443", (b"h:443", b"")),
]


@pytest.mark.parametrize(("target", "split"), SPLITS, ids=[s[0].decode() for s in SPLITS])
def test_split_target(target: bytes, split: tuple[bytes, bytes]) -> None:
    assert split_target(target) == split


@pytest.mark.parametrize(("root", "target", "path", "raw_path"), [
    ("/api", b"/items", "/api/items", b"/api/items"),
    ("/api", b"/", "/api/", b"/api/"),
    ("/api", b"/a%2Fb?q=1", "/api/a/b", b"/api/a%2Fb"),
    ("/v1/app", b"/x", "/v1/app/x", b"/v1/app/x"),
    ("/caf\xe9", b"/x", "/caf\xe9/x", b"/caf\xc3\xa9/x"),
])
def test_root_path_prefixes_path_and_raw_path(root: str, target: bytes, path: str, raw_path: bytes) -> None:
    scope = scope_for(target, info=ConnectionInfo(None, None, "http", root_path=root))
    assert (scope["root_path"], scope["path"], scope["raw_path"]) == (root, path, raw_path)


def test_headers_are_the_request_headers_in_order_with_duplicates() -> None:
    headers = [(b"host", b"a"), (b"cookie", b"x=1"), (b"accept", b"*/*"), (b"cookie", b"y=2")]
    assert scope_for(headers=headers)["headers"] == headers


def test_client_and_server_over_a_unix_socket() -> None:
    scope = scope_for(info=ConnectionInfo(None, ("/run/app.sock", None), "http"))
    assert scope["client"] is None
    assert scope["server"] == ("/run/app.sock", None)


def test_ipv6_addresses() -> None:
    scope = scope_for(info=ConnectionInfo(("::1", 40000), ("::1", 8000), "http"))
    assert (scope["client"], scope["server"]) == (("::1", 40000), ("::1", 8000))


def test_state_is_a_shallow_copy_per_request() -> None:
    shared = {"pool": object(), "counts": {"hits": 0}}
    info = ConnectionInfo(None, None, "http", state=shared)
    first = http_scope(Request(b"GET", b"/", "1.1", [], True, False), info)
    second = http_scope(Request(b"GET", b"/", "1.1", [], True, False), info)
    assert first["state"] == shared and first["state"] is not shared and first["state"] is not second["state"]
    first["state"]["request_only"] = 1
    assert "request_only" not in shared and "request_only" not in second["state"]
    assert first["state"]["pool"] is shared["pool"]
    first["state"]["counts"]["hits"] += 1  # shallow: the objects inside are the lifespan's own
    assert shared["counts"]["hits"] == 1


def test_extensions_come_from_the_connection() -> None:
    extensions = {"http.response.early_hint": {}}
    scope = scope_for(info=ConnectionInfo(None, None, "http", extensions=extensions))
    assert scope["extensions"] == {"http.response.early_hint": {}, "http.response.pathsend": {},
                                   "http.response.zerocopysend": {}}


def test_a_scope_deep_copies() -> None:
    scope = scope_for(b"/x?y")
    assert copy.deepcopy(scope) == scope

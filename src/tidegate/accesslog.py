"""Access log lines from a template of named atoms, or as one JSON object a line.

A template names atoms in braces: ``{client} "{method} {path}" {status} {bytes} {duration_ms}``; request headers
by name as ``{header:user-agent}``; ``{{`` and ``}}`` are literal braces.  ``{completion}`` is ``OK`` for a
complete response and ``-`` for one cut short (the client went away, or the app failed mid-body); ``{bytes}`` counts
the response body.  Every value that comes from the request has its control characters escaped, so a client cannot
forge log lines.  Pure code: the runtime compiles a template once and renders one line per request.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ATOMS", "AccessFormat", "json_line", "renderer"]

#: a scope as the access log reads it (an ``http`` or ``websocket`` scope, read only)
ScopeView = Mapping[str, Any]
Render = Callable[[ScopeView, int, int, float, bool], str]


def _escape(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _client(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _client_addr(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


def _query(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
    return _escape(scope.get("query_string", b"").decode("latin-1"))


def _target(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
    query = scope.get("query_string", b"")
    return _escape(scope["path"] + ("?" + query.decode("latin-1") if query else ""))


def _time(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


ATOMS: dict[str, Render] = {
    "client": _client,
    "client_addr": _client_addr,
    "method": lambda scope, status, size, ms, complete: _escape(scope.get("method", "-")),
    "path": lambda scope, status, size, ms, complete: _escape(scope["path"]),
    "query": _query,
    "target": _target,
    "http_version": lambda scope, status, size, ms, complete: scope.get("http_version", "-"),
    "scheme": lambda scope, status, size, ms, complete: scope.get("scheme", "-"),
    "status": lambda scope, status, size, ms, complete: str(status),
    "bytes": lambda scope, status, size, ms, complete: str(size),
    "duration_ms": lambda scope, status, size, ms, complete: f"{ms:.2f}",
    "pid": lambda scope, status, size, ms, complete: str(os.getpid()),
    "time": _time,
    # nginx's $request_completion, with "-" for a response cut short (the client left, or the app failed mid-body)
    "completion": lambda scope, status, size, ms, complete: "OK" if complete else "-",
}

_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _header(name: str) -> Render:
    key = name.lower().encode("latin-1")

    def render(scope: ScopeView, status: int, size: int, ms: float, complete: bool) -> str:
        values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == key]
        return _escape(", ".join(values)) if values else "-"

    return render


class AccessFormat:
    """A compiled template; ``ValueError`` names an unknown atom or a stray brace."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.parts: list[str | Render] = []
        position = 0
        for match in _PART.finditer(template):
            if match.start() > position:
                self.parts.append(template[position:match.start()])
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                self.parts.append(token[0])
            elif token in ("{", "}"):
                raise ValueError(f"unmatched {token!r} in the access log format (write {token * 2} for a brace)")
            else:
                self.parts.append(self._atom(match.group(1)))
        if position < len(template):
            self.parts.append(template[position:])

    @staticmethod
    def _atom(name: str) -> Render:
        if name.startswith("header:"):
            header = name[7:].strip()
            if not header or not header.isascii():
                raise ValueError(f"{{{name}}} names no header")
            return _header(header)
        if name not in ATOMS:
            known = ", ".join(sorted(ATOMS)) + ", header:NAME"
            raise ValueError(f"unknown access log atom {{{name}}} (known: {known})")
        return ATOMS[name]

    def render(self, scope: ScopeView, status: int, size: int, duration_ms: float, complete: bool = True) -> str:
        return "".join(part if isinstance(part, str) else part(scope, status, size, duration_ms, complete)
                       for part in self.parts)


def json_line(scope: ScopeView, status: int, size: int, duration_ms: float, complete: bool = True) -> str:
    """One request as a JSON object on one line (``json.dumps`` escapes control characters); ``completed`` is
    false for a response cut short."""
    client = scope.get("client")
    query = scope.get("query_string", b"")
    record = {
        "time": _time(scope, status, size, duration_ms, complete),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "method": scope.get("method"),
        "path": scope["path"],
        "query": query.decode("latin-1"),
        "http_version": scope.get("http_version"),
        "scheme": scope.get("scheme"),
        "status": status,
        "bytes": size,
        "duration_ms": round(duration_ms, 3),
        "completed": complete,
        "pid": os.getpid(),
        "user_agent": next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"user-agent"), None),
    }
    return json.dumps(record, separators=(",", ":"))


def renderer(template: str | None, as_json: bool) -> Render | None:
    """What renders an access line for these settings; ``None`` for the built-in line."""
    if as_json:
        return json_line
    if template is not None:
        return AccessFormat(template).render
    return None

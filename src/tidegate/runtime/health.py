"""``--health-path``: the path a load balancer probes, answered by the server itself, never by the app.

It answers ``200 ok`` while the server serves and ``503 draining`` from the moment it starts shutting down (the
start of ``--shutdown-delay``, while the listeners still accept), so a load balancer takes the instance out of its
pool before the listeners close.  A driver tests each request's target against it only when the setting is on
(:meth:`HealthCheck.matches`), and runs the check as the request's app instead of the application: the response
goes through the same exchange and write path as any other (keep-alive, HEAD, HTTP/1.1 and HTTP/2 alike).  Its
answers are not app traffic: they count toward neither ``--max-requests`` nor ``--limit-concurrency``, and get an
access line and a metrics count only with ``--health-log``.
"""

from __future__ import annotations

from typing import Any

from ..config import HealthSettings

__all__ = ["HealthCheck"]

_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
_READY = {"type": "http.response.start", "status": 200, "headers": _HEADERS}
_DRAINING = {"type": "http.response.start", "status": 503, "headers": _HEADERS}
_NOT_ALLOWED = {"type": "http.response.start", "status": 405, "headers": [*_HEADERS, (b"allow", b"GET, HEAD")]}


class HealthCheck:
    """The health path of one server, and whether that server is ready (it turns unready once, for good)."""

    __slots__ = ("log", "path", "query", "ready")

    def __init__(self, settings: HealthSettings) -> None:
        assert settings.health_path is not None
        self.path = settings.health_path.encode("ascii")
        self.query = self.path + b"?"
        #: record its answers as app traffic (--health-log)
        self.log = settings.health_log
        self.ready = True

    def matches(self, target: bytes) -> bool:
        """Whether a request target (as received: path and query) is the health path."""
        return target == self.path or target.startswith(self.query)

    def draining(self) -> None:
        """The server is shutting down: from now on the answer is 503."""
        self.ready = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer as an ASGI app would: 200 ``ok`` or 503 ``draining``; 405 to a method other than GET or HEAD."""
        if scope["method"] not in ("GET", "HEAD"):
            await send(_NOT_ALLOWED)
            await send({"type": "http.response.body", "body": b"method not allowed\n"})
        elif self.ready:
            await send(_READY)
            await send({"type": "http.response.body", "body": b"ok\n"})
        else:
            await send(_DRAINING)
            await send({"type": "http.response.body", "body": b"draining\n"})

"""Prometheus metrics: what each worker counts, how the supervisor sums them, and the text exposition.

A worker wraps its app in :class:`MetricsMiddleware` (only when ``--metrics-bind`` is set: otherwise nothing is
counted and nothing costs).  The middleware counts body bytes, WebSocket sessions and app exceptions at the ASGI
level; responses and their durations are counted by the runtime where it writes their access lines
(:meth:`Metrics.observe`), so the server's own answers (400, 408, 413, 431, 503 ...) and responses cut short count
too, on every protocol.  Open connections are not counted per event: they are read from the server's connection
registry when a snapshot is taken.  Snapshots are plain dicts (JSON), summed by :func:`merge`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["BUCKETS", "Metrics", "MetricsMiddleware", "merge", "render"]

#: request duration histogram buckets, in seconds
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

Snapshot = dict[str, Any]
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

COUNTERS = ("requests", "duration_buckets", "duration_sum", "bytes_in", "bytes_out", "exceptions",
            "websocket_sessions", "responses_cut")


def _protocol(connection: object) -> str:
    name = getattr(connection, "metrics_protocol", None)
    if isinstance(name, str):
        return name
    cls = type(connection).__name__.lower()
    if "websocket" in cls or cls.startswith("ws"):
        return "websocket"
    if "h2" in cls or "http2" in cls:
        return "http/2"
    if "h1" in cls or "http1" in cls:
        return "http/1.1"
    return cls


class Metrics:
    """One process's counters."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "cut", "duration_sum", "exceptions", "requests",
                 "websocket_open", "websocket_sessions")

    def __init__(self) -> None:
        self.requests = [0, 0, 0, 0, 0]
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.exceptions = 0
        self.websocket_sessions = 0
        self.websocket_open = 0
        #: responses cut short (also counted in ``requests``, by the status sent or 499)
        self.cut = 0

    def observe(self, status: int, seconds: float) -> None:
        index = status // 100 - 1
        self.requests[index if 0 <= index < 5 else 4] += 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1
        self.duration_sum += seconds

    def snapshot(self, connections: Iterable[object] = ()) -> Snapshot:
        open_by_protocol: dict[str, int] = {}
        for connection in connections:
            protocol = _protocol(connection)
            open_by_protocol[protocol] = open_by_protocol.get(protocol, 0) + 1
        return {
            "requests": dict(zip(_CLASSES, self.requests, strict=True)),
            "duration_buckets": list(self.buckets),
            "duration_sum": self.duration_sum,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "exceptions": self.exceptions,
            "websocket_sessions": self.websocket_sessions,
            "responses_cut": self.cut,
            "websocket_open": self.websocket_open,
            "connections": open_by_protocol,
        }


def _add(total: Snapshot, part: Snapshot, keys: Iterable[str]) -> None:
    for key in keys:
        value = part.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            mine = total.setdefault(key, {})
            for name, number in value.items():
                mine[name] = mine.get(name, 0) + number
        elif isinstance(value, list):
            mine_list = total.setdefault(key, [0] * len(value))
            for i, number in enumerate(value):
                mine_list[i] += number
        else:
            total[key] = total.get(key, 0) + value


def merge(snapshots: Iterable[Snapshot], *, counters_only: bool = False) -> Snapshot:
    """Sum snapshots; ``counters_only`` leaves out the gauges (for workers that have exited)."""
    total: Snapshot = {}
    keys = COUNTERS if counters_only else (*COUNTERS, "websocket_open", "connections")
    for snapshot in snapshots:
        _add(total, snapshot, keys)
    return total


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for name, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(snapshot: Snapshot, extra: Iterable[tuple[str, str, str, float]] = ()) -> str:
    """The Prometheus text exposition (format 0.0.4) of a summed snapshot, plus ``extra`` (name, type, help,
    value) single samples."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("tidegate_requests_total", "counter", "HTTP responses, by status class: the app's, the server's own "
           "(400, 408, 413, 414, 431, 500, 503) and those cut short (499 if the client left before any status).")
    requests = snapshot.get("requests", {})
    for cls in _CLASSES:
        out.append(f"tidegate_requests_total{_labels(status=cls)} {requests.get(cls, 0)}")
    family("tidegate_request_duration_seconds", "histogram", "Time from the request head to the end of the "
           "response, in seconds.")
    buckets = snapshot.get("duration_buckets") or [0] * (len(BUCKETS) + 1)
    cumulative = 0
    for bound, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), buckets, strict=False):
        cumulative += count
        out.append(f"tidegate_request_duration_seconds_bucket{_labels(le=bound)} {cumulative}")
    out.append(f"tidegate_request_duration_seconds_sum {_number(snapshot.get('duration_sum', 0.0))}")
    out.append(f"tidegate_request_duration_seconds_count {cumulative}")
    family("tidegate_responses_cut_total", "counter", "Responses cut short: the client went away or reset the stream, "
           "or the app failed after its body started.")
    out.append(f"tidegate_responses_cut_total {snapshot.get('responses_cut', 0)}")
    family("tidegate_connections_open", "gauge", "Open client connections, by protocol.")
    connections = snapshot.get("connections") or {}
    for protocol in sorted(set(connections) | {"http/1.1"}):
        out.append(f"tidegate_connections_open{_labels(protocol=protocol)} {connections.get(protocol, 0)}")
    family("tidegate_websocket_sessions_open", "gauge", "WebSocket sessions in progress.")
    out.append(f"tidegate_websocket_sessions_open {snapshot.get('websocket_open', 0)}")
    family("tidegate_websocket_sessions_total", "counter", "WebSocket sessions started.")
    out.append(f"tidegate_websocket_sessions_total {snapshot.get('websocket_sessions', 0)}")
    family("tidegate_received_bytes_total", "counter", "Request body and WebSocket message bytes received.")
    out.append(f"tidegate_received_bytes_total {snapshot.get('bytes_in', 0)}")
    family("tidegate_sent_bytes_total", "counter", "Response body and WebSocket message bytes sent.")
    out.append(f"tidegate_sent_bytes_total {snapshot.get('bytes_out', 0)}")
    family("tidegate_app_exceptions_total", "counter", "Exceptions raised by the application.")
    out.append(f"tidegate_app_exceptions_total {snapshot.get('exceptions', 0)}")
    for name, kind, help_text, value in extra:
        family(name, kind, help_text)
        out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def _size(message: dict[str, Any], key: str = "body") -> int:
    data = message.get(key)
    return len(data) if data else 0


class MetricsMiddleware:
    """Count body bytes, WebSocket sessions and app exceptions (the runtime counts the responses themselves)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        try:
            if kind == "http":
                await self._http(scope, receive, send)
            else:
                await self._websocket(scope, receive, send)
        except Exception:
            self.metrics.exceptions += 1
            raise

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        metrics = self.metrics

        async def counted_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                metrics.bytes_in += _size(message)
            return message

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                metrics.bytes_out += _size(message)
            await send(message)

        await self.app(scope, counted_receive, counted_send)

    async def _websocket(self, scope: Scope, receive: Any, send: Any) -> None:
        metrics = self.metrics
        metrics.websocket_sessions += 1
        metrics.websocket_open += 1

        async def counted_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "websocket.receive":
                metrics.bytes_in += _size(message, "bytes") + len((message.get("text") or "").encode())
            return message

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                metrics.bytes_out += _size(message, "bytes") + len((message.get("text") or "").encode())
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            metrics.websocket_open -= 1

"""Prometheus metrics: counted per worker, summed by the supervisor, read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tidegate.metrics import BUCKETS, Metrics, MetricsMiddleware, merge, render

from .ops_helpers import Proc, get, serving_url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


async def _drive(app, scope, messages):
    sent = []
    inbox = list(messages)

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_middleware_counts_without_sockets():
    metrics = Metrics()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": message["text"] * 2})
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await receive()
        await send({"type": "http.response.start", "status": int(scope["path"][1:])})
        await send({"type": "http.response.body", "body": b"12345"})

    wrapped = MetricsMiddleware(app, metrics)
    body = [{"type": "http.request", "body": b"abc"}]
    for path in ("/200", "/201", "/302", "/404", "/503"):
        asyncio.run(_drive(wrapped, {"type": "http", "path": path}, body))
    with pytest.raises(RuntimeError):
        asyncio.run(_drive(wrapped, {"type": "http", "path": "/boom"}, body))
    ws = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hé"}]
    asyncio.run(_drive(wrapped, {"type": "websocket", "path": "/"}, ws))
    asyncio.run(_drive(wrapped, {"type": "lifespan"}, []))  # passes through, not counted

    class H1Driver:
        pass

    # responses are counted by the runtime, where their access lines are written (see the tests below)
    for status in (200, 201, 302, 404, 503, 500):
        metrics.observe(status, 0.001)
    snapshot = metrics.snapshot([H1Driver(), H1Driver()])
    assert snapshot["requests"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 2}
    assert snapshot["exceptions"] == 1
    assert snapshot["bytes_in"] == 5 * 3 + len("hé".encode())  # /boom raised before reading its body
    assert snapshot["bytes_out"] == 5 * 5 + len("héhé".encode())
    assert snapshot["websocket_sessions"] == 1 and snapshot["websocket_open"] == 0
    assert snapshot["connections"] == {"http/1.1": 2}
    assert sum(snapshot["duration_buckets"]) == 6

    found = samples(render(merge([snapshot, snapshot])))
    assert value(found, "tidegate_requests_total", status="2xx") == 4
    assert value(found, "tidegate_request_duration_seconds_count") == 12
    assert value(found, "tidegate_request_duration_seconds_bucket", le="+Inf") == 12
    assert value(found, "tidegate_connections_open", protocol="http/1.1") == 4
    assert value(found, "tidegate_app_exceptions_total") == 2
    assert value(found, "tidegate_websocket_sessions_total") == 2


def test_histogram_buckets_are_cumulative():
    metrics = Metrics()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 100.0):
        metrics.observe(200, seconds)
    found = samples(render(metrics.snapshot()))
    assert value(found, "tidegate_request_duration_seconds_bucket", le="0.001") == 1
    assert value(found, "tidegate_request_duration_seconds_bucket", le="0.005") == 3
    assert value(found, "tidegate_request_duration_seconds_bucket", le="0.25") == 4
    assert value(found, "tidegate_request_duration_seconds_bucket", le=repr(BUCKETS[-1])) == 4
    assert value(found, "tidegate_request_duration_seconds_bucket", le="+Inf") == 5
    assert value(found, "tidegate_request_duration_seconds_sum") == pytest.approx(100.2065)


def test_merge_leaves_out_gauges_of_exited_workers():
    metrics = Metrics()
    metrics.observe(200, 0.01)
    metrics.websocket_open = 3
    total = merge([metrics.snapshot([object()])], counters_only=True)
    assert "connections" not in total and "websocket_open" not in total
    assert total["requests"]["2xx"] == 1


def scrape(url: str):
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def test_metrics_summed_over_workers():
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--workers", "2", "--metrics-bind", "127.0.0.1:0",
                 "--no-access-log"])
    try:
        url = serving_url(proc)
        metrics_url = proc.wait_for(r"metrics endpoint \(not the app\) at (http://\S+)").group(1)
        for _ in range(2):
            proc.wait_for(r"worker \d+ \(pid \d+\) ready")
        for _ in range(5):
            assert get(url + "/").status_code == 200
        for _ in range(2):
            assert get(url + "/status/404").status_code == 404
        assert get(url + "/boom").status_code == 500
        assert httpx.post(url + "/upload", content=b"x" * 1000, timeout=10).status_code == 200
        ws_url = url.replace("http://", "ws://") + "/ws"
        with httpx.Client(timeout=10) as client, connect(ws_url, open_timeout=10) as ws:
            # one keep-alive connection and one WebSocket session stay open during the scrape
            client.get(url + "/")
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
            found = scrape(metrics_url)
        assert value(found, "tidegate_websocket_sessions_open") == 1
        assert value(found, "tidegate_websocket_sessions_total") == 1
        assert value(found, "tidegate_connections_open", protocol="websocket") == 1
        assert value(found, "tidegate_requests_total", status="2xx") == 7
        assert value(found, "tidegate_requests_total", status="4xx") == 2
        assert value(found, "tidegate_requests_total", status="5xx") == 1
        assert value(found, "tidegate_request_duration_seconds_count") == 10
        assert value(found, "tidegate_app_exceptions_total") == 1
        assert value(found, "tidegate_received_bytes_total") == 1000 + len("hello")
        assert value(found, "tidegate_sent_bytes_total") > 0
        assert value(found, "tidegate_connections_open", protocol="http/1.1") >= 1
        assert value(found, "tidegate_workers") == 2
        assert value(found, "tidegate_worker_restarts_total") == 0
        assert httpx.get(metrics_url.replace("/metrics", "/other"), timeout=10).status_code == 404

        # a worker that leaves takes nothing with it: its last count stays in the sums
        mark = proc.mark()
        proc.signal(signal.SIGTTOU)
        proc.wait_for(r"worker 1 \(pid \d+\) exited with code 0", start=mark)
        found = scrape(metrics_url)
        assert value(found, "tidegate_requests_total", status="2xx") == 7
        assert value(found, "tidegate_request_duration_seconds_count") == 10
        assert value(found, "tidegate_workers") == 1

        # nor does one that is killed: what it last reported stays
        survivor = int(proc.wait_for(r"worker 2 \(pid (\d+)\) ready").group(1))
        mark = proc.mark()
        os.kill(survivor, signal.SIGKILL)
        proc.wait_for(r"worker \d+ \(pid \d+\) ready", start=mark)
        found = scrape(metrics_url)
        assert value(found, "tidegate_requests_total", status="2xx") == 7
        assert value(found, "tidegate_worker_restarts_total") == 1
    finally:
        assert proc.stop() == 0

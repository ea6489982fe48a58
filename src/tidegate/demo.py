"""A small app that shows what tidegate does: ``tidegate tidegate.demo:app``.

- ``GET /``        an HTML page that uses the endpoints below
- ``GET /json``    a JSON document describing the request
- ``GET /events``  a Server-Sent Events clock, one event a second
- ``POST /echo``   streams the request body back as it arrives
- ``/ws``          a WebSocket echo: every message comes back as it was sent
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from . import __version__

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tidegate demo</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f3f3f3;padding:.1rem .3rem}</style></head>
<body><h1>tidegate %(version)s</h1>
<p>This page is served by tidegate, an ASGI server.</p>
<h2>Server-Sent Events</h2><p>Clock: <code id="clock">waiting…</code></p>
<h2>Streamed upload echo</h2>
<p><input id="text" value="hello tidegate"> <button id="send">POST /echo</button> <code id="echo"></code></p>
<h2>WebSocket echo</h2>
<p><input id="ws-text" value="hello over WebSocket"> <button id="ws-send">send</button>
<code id="ws-state">connecting…</code> <code id="ws-echo"></code></p>
<h2>Request as JSON</h2><pre id="json"></pre>
<script>
const clock = document.getElementById("clock");
new EventSource("/events").onmessage = (e) => { clock.textContent = e.data; };
document.getElementById("send").onclick = async () => {
  const r = await fetch("/echo", {method: "POST", body: document.getElementById("text").value});
  document.getElementById("echo").textContent = await r.text();
};
const wsState = document.getElementById("ws-state");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = () => { wsState.textContent = "open"; ws.send("hello from the browser"); };
ws.onmessage = (e) => { document.getElementById("ws-echo").textContent = e.data; };
ws.onclose = (e) => { wsState.textContent = "closed (" + e.code + ")"; };
document.getElementById("ws-send").onclick = () => ws.send(document.getElementById("ws-text").value);
fetch("/json").then((r) => r.json()).then((j) => {
  document.getElementById("json").textContent = JSON.stringify(j, null, 2);
});
</script></body></html>
"""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started_at"] = time.time()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/" and method in ("GET", "HEAD"):
        await _respond(send, 200, b"text/html; charset=utf-8", (PAGE % {"version": __version__}).encode())
    elif path == "/json" and method in ("GET", "HEAD"):
        body = json.dumps({
            "method": method, "path": path, "query_string": scope["query_string"].decode("latin-1"),
            "http_version": scope["http_version"], "client": scope.get("client"),
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "started_at": scope.get("state", {}).get("started_at"),
        }).encode()
        await _respond(send, 200, b"application/json", body)
    elif path == "/events" and method == "GET":
        await _clock(receive, send)
    elif path == "/echo" and method == "POST":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": more})
    else:
        await _respond(send, 404, b"text/plain; charset=utf-8", b"not found\n")


async def _respond(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _clock(receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    disconnected = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        while not disconnected.done():
            event = f"data: {time.strftime('%H:%M:%S')}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.wait([disconnected], timeout=1.0)
    finally:
        disconnected.cancel()


async def _websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send({"type": "websocket.close"})  # answered with 403
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})

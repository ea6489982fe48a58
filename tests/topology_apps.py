"""The app the topology tests serve behind nginx and HAProxy (``tests.topology_apps:app``).

- ``/`` → JSON: the process, the client and scheme as the app sees them, the HTTP version, the ``connection``
  header nginx sent;
- ``/sse?id=ID&n=N`` → N Server-Sent Events; each after the first waits for ``/ack?id=ID`` (sent by the test
  straight to this instance), so an event can only arrive on its own, before the next exists;
- ``/upload?id=ID`` → reads the body, counting bytes (``/progress?id=ID`` tells how many so far);
- ``/slow?S`` → answers after S seconds;
- a WebSocket → a first message with the process, client and scheme, then an echo.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

ACKS: dict[str, asyncio.Queue[None]] = {}
PROGRESS: dict[str, int] = {}


async def _json(send: Any, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _about(scope: dict[str, Any]) -> dict[str, Any]:
    headers = dict(scope["headers"])
    return {"pid": os.getpid(), "client": scope["client"], "scheme": scope["scheme"],
            "http_version": scope.get("http_version"), "port": scope["server"][1] if scope["server"] else None,
            "connection": headers.get(b"connection", b"").decode("latin-1")}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(_about(scope))})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    query = {name: values[0] for name, values in parse_qs(scope["query_string"].decode()).items()}
    if path == "/sse":
        stream = query["id"]
        acks = ACKS.setdefault(stream, asyncio.Queue())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        try:
            for number in range(int(query.get("n", "3"))):
                if number:
                    await asyncio.wait_for(acks.get(), 30.0)
                data = json.dumps({**_about(scope), "number": number})
                await send({"type": "http.response.body", "body": f"id: {number}\ndata: {data}\n\n".encode(),
                            "more_body": True})
        finally:
            ACKS.pop(stream, None)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/ack":
        queue = ACKS.get(query["id"])
        if queue is not None:
            queue.put_nowait(None)
        await _json(send, {"acked": queue is not None}, 200 if queue is not None else 404)
        return
    if path == "/upload":
        upload = query["id"]
        PROGRESS[upload] = 0
        pieces = 0
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
            PROGRESS[upload] += len(message.get("body", b""))
            pieces += 1
        await _json(send, {**_about(scope), "bytes": PROGRESS.pop(upload), "pieces": pieces})
        return
    if path == "/progress":
        await _json(send, {"bytes": PROGRESS.get(query["id"])})
        return
    if path == "/slow":
        await asyncio.sleep(float(scope["query_string"] or 1))
    await _json(send, _about(scope))

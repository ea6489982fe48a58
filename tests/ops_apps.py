"""Apps served by real tidegate processes in the operations tests (imported as ``tests.ops_apps:NAME``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


def _say(text: str) -> None:
    sys.stderr.write(f"ops-app {text} {os.getpid()}\n")
    sys.stderr.flush()


async def _json(send: Any, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/`` → pid and client; ``/slow?S`` sleeps S s; ``/block?S`` blocks the loop S s; ``/boom`` raises;
    ``/status/N`` answers N; lifespan startup and shutdown are written to stderr."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _say("startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                _say("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/slow":
        _say("slow")
        await asyncio.sleep(float(query or 1))
    elif path == "/block":
        _say("block")
        time.sleep(float(query or 1))
    elif path == "/boom":
        raise RuntimeError("boom")
    elif path.startswith("/status/"):
        await send({"type": "http.response.start", "status": int(path[8:]), "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    elif path == "/upload":
        while (await receive()).get("more_body"):
            pass
    await _json(send, {"pid": os.getpid(), "client": scope["client"], "scheme": scope["scheme"],
                       "server": scope["server"], "path": path})

"""Starlette on tidegate.

    tidegate --app-dir examples/starlette app:app                     # HTTP/1.1 and cleartext HTTP/2 (h2c)
    tidegate --app-dir examples/starlette app:app --ssl-certfile cert.pem --ssl-keyfile key.pem

- a lifespan whose state (a shared resource made once) reaches every request as ``request.state``;
- a streamed response (Server-Sent Events), each event sent as it is produced;
- a streamed upload, read as it arrives;
- a WebSocket echo.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger("examples.starlette")


class Counter:
    """Stands for a shared resource (an HTTP client, a connection pool): made once, closed at shutdown."""

    def __init__(self) -> None:
        self.value = 0
        self.closed = False

    def next(self) -> int:
        self.value += 1
        return self.value

    async def aclose(self) -> None:
        self.closed = True


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    counter = Counter()
    logger.info("lifespan: startup")
    yield {"counter": counter, "started_at": time.time()}
    await counter.aclose()
    logger.info("lifespan: shutdown after %d requests", counter.value)


async def index(request: Request) -> JSONResponse:
    return JSONResponse({
        "framework": "starlette",
        "request_number": request.state.counter.next(),
        "started_at": request.state.started_at,
        "http_version": request.scope["http_version"],
    })


async def events(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("count", "5"))
    interval = float(request.query_params.get("interval", "0"))

    async def stream() -> AsyncIterator[str]:
        for n in range(count):
            yield f"data: {n}\n\n"
            await asyncio.sleep(interval)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def upload(request: Request) -> JSONResponse:
    size = chunks = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks += 1
    return JSONResponse({"bytes": size, "chunks": chunks})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", index),
        Route("/events", events),
        Route("/upload", upload, methods=["POST"]),
        WebSocketRoute("/ws", echo),
    ],
    lifespan=lifespan,
)

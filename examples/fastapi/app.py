"""FastAPI on tidegate.

    tidegate --app-dir examples/fastapi app:app                       # HTTP/1.1 and cleartext HTTP/2 (h2c)
    tidegate --app-dir examples/fastapi app:app --ssl-certfile cert.pem --ssl-keyfile key.pem   # HTTPS, h2 by ALPN

- a lifespan that makes shared resources once and hands them to every request as ASGI state
  (``request.state``): build clients and pools there, not at import time and not per request;
- a streamed response (Server-Sent Events): each event is on the wire as soon as it is yielded;
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

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

logger = logging.getLogger("examples.fastapi")


class Counter:
    """Stands for a shared resource (an HTTP client, a connection pool): made once, closed at shutdown."""

    def __init__(self) -> None:
        self.value = 0
        self.closed = False

    def next(self) -> int:
        self.value += 1  # no await between the read and the write: safe under asyncio's concurrency
        return self.value

    async def aclose(self) -> None:
        self.closed = True


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    counter = Counter()
    logger.info("lifespan: startup")
    yield {"counter": counter, "started_at": time.time()}
    await counter.aclose()
    logger.info("lifespan: shutdown after %d requests", counter.value)


app = FastAPI(title="tidegate example", lifespan=lifespan)


@app.get("/")
async def index(request: Request) -> dict[str, Any]:
    return {
        "framework": "fastapi",
        "request_number": request.state.counter.next(),
        "started_at": request.state.started_at,
        "http_version": request.scope["http_version"],
    }


@app.get("/events")
async def events(count: int = 5, interval: float = 0.0) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        for n in range(count):
            yield f"data: {n}\n\n"
            await asyncio.sleep(interval)

    return StreamingResponse(stream(), media_type="text/event-stream")


@app.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    size = chunks = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks += 1
    return {"bytes": size, "chunks": chunks}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect:
        pass

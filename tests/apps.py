"""Small ASGI apps used across the tests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers it back with a content-length."""
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Any) -> bytes:
    """The request body, up to its end or an ``http.disconnect``."""
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


class Gate:
    """A one-shot signal between the test thread and an app running on the server's loop.

    The test calls :meth:`set` (from any thread); the app awaits :meth:`wait`; the test can wait for the app with
    :meth:`wait_sync`.  Every wait has a timeout.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        with self._lock:
            self._flag.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def is_set(self) -> bool:
        return self._flag.is_set()

    async def wait(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._flag.is_set():
                return
            self._waiters.append((loop, future))
        await asyncio.wait_for(future, timeout)

    def wait_sync(self, timeout: float = 10.0) -> None:
        if not self._flag.wait(timeout):
            raise TimeoutError("the gate was not set in time")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def scope_summary(scope: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able parts of an HTTP scope."""
    return {
        "type": scope["type"],
        "asgi": scope["asgi"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": scope["client"],
        "server": scope["server"],
        "state": {k: v for k, v in scope.get("state", {}).items() if isinstance(v, (str, int, float, list))},
    }


async def scope_json(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with its scope as JSON (after reading the body), and records the scope's types."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = json.dumps({**scope_summary(scope), "client_types": [type(x).__name__ for x in scope["client"] or ()],
                       "server_types": [type(x).__name__ for x in scope["server"] or ()]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def run_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The lifespan side of the subprocess test apps: prints its events on stdout.

    The environment decides how startup goes: ``LIFESPAN_TEST_STARTUP=fail`` sends ``startup.failed``,
    ``raise`` raises after receiving ``lifespan.startup``.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            how = os.environ.get("LIFESPAN_TEST_STARTUP", "")
            if how == "fail":
                await send({"type": "lifespan.startup.failed", "message": "the database is unreachable"})
                return
            if how == "raise":
                raise RuntimeError("the cache would not warm up")
            scope["state"]["greeting"] = "hello from lifespan"
            print("lifespan: startup", flush=True)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print("lifespan: shutdown", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """For subprocess tests: lifespan events on stdout (see :func:`run_lifespan`); requests get ``scope_json``."""
    if scope["type"] == "lifespan":
        await run_lifespan(scope, receive, send)
    else:
        await scope_json(scope, receive, send)


async def hanging_startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Its lifespan startup never completes."""
    if scope["type"] == "lifespan":
        await receive()
        print("lifespan: startup begun", flush=True)
        await asyncio.Event().wait()


async def slow_body_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """For shutdown tests in a subprocess: answers once the whole request body has come, whenever that is."""
    if scope["type"] == "lifespan":
        await run_lifespan(scope, receive, send)
        return
    print(f"request: {scope['path']}", flush=True)
    body = b""
    more = True
    try:
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                print("app: disconnected", flush=True)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
    except asyncio.CancelledError:
        print("app: cancelled", flush=True)
        raise
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

"""Each app task starts in a copy of the server's context, never in one another request's app has changed; it is
named, and made by the loop's task factory where the app set one.

A request-id middleware sets a context variable for its request; the next request on the connection must not see
it.  The driver starts a pipelined request from the end of the response before it, inside that app's task, where
a task made plainly would copy that app's context.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import httpx
import pytest

from tidegate.runtime.context import APP_TASK_NAME

from .apps import read_body
from .conftest import RawClient

TIMEOUT = 10.0
request_id: contextvars.ContextVar[int] = contextvars.ContextVar("request_id", default=0)


async def context_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers what the request's context held when it came, then sets the context var (a request id)."""
    if scope["type"] != "http":
        return
    before = request_id.get()
    request_id.set(int(scope["path"].strip("/") or 0))
    body = await read_body(receive)
    answer = b"%d %d %s" % (before, request_id.get(), body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_request_has_its_own_context(run_server: Any, loop: str) -> None:
    server = run_server(context_app, loop=loop)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:  # one keep-alive connection
        for n in (1, 2, 3):
            assert client.get(f"/{n}").text == f"0 {n} "
        assert client.post("/4", content=b"body").text == "0 4 body"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelined_requests_each_have_their_own_context(run_server: Any, loop: str) -> None:
    server = run_server(context_app, loop=loop)
    with RawClient(server.port) as client:
        client.send(b"".join(b"GET /%d HTTP/1.1\r\nhost: t\r\n\r\n" % n for n in range(1, 6))
                    + b"POST /6 HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc")
        for n in range(1, 6):
            assert client.read_response().body == b"0 %d " % n
        assert client.read_response().body == b"0 6 abc"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_http2_stream_has_its_own_context(run_server: Any, loop: str) -> None:
    server = run_server(context_app, loop=loop)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, http1=False, http2=True) as client:
        for n in (1, 2, 3):
            response = client.get(f"/{n}")
            assert response.http_version == "HTTP/2" and response.text == f"0 {n} "



def task_app(*, factory: bool) -> Any:
    """An app that answers ``/task`` with its task's name and whether its task factory made the task (a factory it
    sets at startup if ``factory``), and anything else as ``context_app``."""
    made: set[asyncio.Task[Any]] = set()

    def recording_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.add(task)
        return task

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            if factory:
                asyncio.get_running_loop().set_task_factory(recording_factory)
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] != "/task":
            await context_app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        answer = f"{task.get_name()}|{task in made}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_app_tasks_are_named(run_server: Any, loop: str) -> None:
    server = run_server(task_app(factory=False), loop=loop)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        assert client.get("/task").text == f"{APP_TASK_NAME}|False"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_task_factory_the_app_sets_makes_its_tasks(run_server: Any, loop: str) -> None:
    server = run_server(task_app(factory=True), loop=loop, lifespan="on")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        assert client.get("/task").text.endswith("|True")
        for n in (1, 2):  # and each of them still starts in a copy of the server's context
            assert client.get(f"/{n}").text == f"0 {n} "

"""Serve a WSGI application (PEP 3333) as an ASGI one, on a bounded pool of threads.

Each request runs the WSGI callable on a worker thread while the event loop keeps serving other connections:

- ``wsgi.input`` is a stream that pulls the body from the event loop one ``http.request`` message at a time: the
  thread blocks until the loop delivers the next piece, and nothing is read ahead of what the app asks for, so
  the server's read back-pressure applies unchanged (the body is never buffered whole).
- the response iterable is consumed on the thread and every non-empty item is handed to the loop and written
  before the next one is asked for (a slow client slows the producer down); the headers leave with the first
  non-empty item, as PEP 3333 asks.
- the iterable's ``close()`` is called on every path: success, an exception, a client that went away.
- an exception before the response started becomes a 500 (logged once with the request line by the exchange);
  after it started, the connection is closed.

:func:`is_wsgi_app` tells a WSGI callable ``(environ, start_response)`` from an ASGI one ``(scope, receive, send)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import queue
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from ..asgi.errors import ClientDisconnected

__all__ = ["FileWrapper", "InputStream", "WSGIMiddleware", "build_environ", "default_threads", "is_wsgi_app"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Message = dict[str, Any]

#: the thread pool never grows past this, whatever the number of cores
MAX_DEFAULT_THREADS = 64


def default_threads() -> int:
    """Threads for a WSGI app when ``--threads`` is not given: 10 per core this process may run on, at most 64."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without CPU affinity
        cores = os.cpu_count() or 1
    return min(MAX_DEFAULT_THREADS, 10 * max(cores, 1))


def positional_parameters(app: Any) -> tuple[int, int] | None:
    """How many positional parameters a plain (not coroutine) callable takes, and how many of them it needs; None
    when it is not callable, is a coroutine function (or an object whose ``__call__`` is one), takes ``*args`` or
    has no signature.  How the interface of an app is told (WSGI, ASGI 2, else ASGI 3)."""
    if not callable(app) or inspect.iscoroutinefunction(app):
        return None
    if not (inspect.isfunction(app) or inspect.ismethod(app)) and inspect.iscoroutinefunction(type(app).__call__):
        return None
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return None
    positional = required = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
            required += param.default is param.empty
    return positional, required


def is_wsgi_app(app: Any) -> bool:
    """True if ``app`` looks like a WSGI callable: exactly two positional parameters and not a coroutine function.

    ASGI 3 apps take three (``scope, receive, send``).  Callables that take ``*args`` cannot be told apart and are
    taken as ASGI; name the interface explicitly for those.
    """
    shape = positional_parameters(app)
    return shape is not None and shape[0] == 2


# --------------------------------------------------------------------------------------------------- the environ

_HEADER_KEYS: dict[bytes, str | None] = {b"content-length": "CONTENT_LENGTH", b"content-type": "CONTENT_TYPE"}


def _header_key(name: bytes) -> str | None:
    key = _HEADER_KEYS.get(name, "")
    if key == "":
        # A name with '_' would collide with the '-' spelling once mangled (HTTP_X_USER from x-user or x_user):
        # such headers are dropped, as the CGI convention and Django's own server do.
        key = None if b"_" in name else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_HEADER_KEYS) < 1024:
            _HEADER_KEYS[name] = key
    return key


def build_environ(scope: dict[str, Any], wsgi_input: Any, *, multiprocess: bool = False) -> Environ:
    """The PEP 3333 environ for an ASGI ``http`` scope.

    Native strings hold the bytes of the request decoded as latin-1 (PEP 3333 "bytes as str").  ``SCRIPT_NAME``
    is the scope's ``root_path`` and ``PATH_INFO`` the rest of the percent-decoded path.  Repeated headers are
    joined with ``,`` (``Cookie`` with ``; ``, RFC 6265).
    """
    root = scope.get("root_path", "")
    script_name = root.encode("utf-8").decode("latin-1")
    raw_path = scope.get("raw_path")
    if raw_path is not None:
        path = raw_path.decode("latin-1") if b"%" not in raw_path else unquote_to_bytes(raw_path).decode("latin-1")
    else:
        path = scope["path"].encode("utf-8").decode("latin-1")
    if script_name and (path == script_name or path.startswith(script_name + "/")):
        path = path[len(script_name):]
    scheme = scope.get("scheme", "http")
    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }
    for name, value in scope.get("headers", ()):
        key = _header_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    server = scope.get("server")
    if server is not None and server[1] is not None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = str(server[0]), str(server[1])
    else:  # a UNIX socket (or no address): the host the client asked for, else the usual placeholders
        host = environ.get("HTTP_HOST", "")
        name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not sep or not port.isdigit():
            name, port = host, ""
        environ["SERVER_NAME"] = name or "localhost"
        environ["SERVER_PORT"] = port or ("443" if scheme == "https" else "80")
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    else:
        environ["REMOTE_ADDR"] = ""
    return environ


# --------------------------------------------------------------------------------------------------- thread ↔ loop


class _Bridge:
    """One request's link from its worker thread to the event loop.

    :meth:`call` runs a coroutine on the loop and blocks the thread until it is done.  :meth:`abort` (on the loop,
    when the request is cancelled or the client is gone) makes the pending call and every later one raise
    :class:`ClientDisconnected` in the thread, so it stops producing and unwinds (calling ``close()``).
    """

    __slots__ = ("_aborted", "_lock", "_pending", "loop", "receive", "send")

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Callable[[], Any], send: Callable[[Message], Any]
                 ) -> None:
        self.loop = loop
        self.receive = receive
        self.send = send
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._aborted = False

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        with self._lock:
            if self._aborted:
                coro.close()
                raise ClientDisconnected("the request was cancelled")
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # the loop is closed: the server is gone
                coro.close()
                self._aborted = True
                raise ClientDisconnected("the server stopped") from None
            self._pending = future
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientDisconnected("the request was cancelled") from None
        finally:
            self._pending = None

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            pending = self._pending
        if pending is not None:
            pending.cancel()


class InputStream:
    """``wsgi.input``: the request body, pulled from the event loop as the app reads it."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._buffer = bytearray()
        self._more = True

    def _fill(self) -> bool:
        """Wait for the next piece of the body; False once it is complete."""
        if not self._more:
            return False
        message = self._bridge.call(self._bridge.receive())
        if message["type"] != "http.request":
            self._more = False
            raise ClientDisconnected("the client disconnected before sending the whole body")
        self._more = message.get("more_body", False)
        self._buffer += message.get("body", b"")
        return True

    def read(self, size: int | None = -1) -> bytes:
        buffer = self._buffer
        if size is None or size < 0:
            while self._fill():
                pass
        else:
            while len(buffer) < size and self._fill():
                pass
            if len(buffer) > size:
                data = bytes(buffer[:size])
                del buffer[:size]
                return data
        data = bytes(buffer)
        buffer.clear()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        buffer = self._buffer
        limit = -1 if size is None else size
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if 0 <= limit <= len(buffer):
                end = limit
                break
            start = len(buffer)
            if not self._fill():
                end = len(buffer)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(buffer[:end])
        del buffer[:end]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file-like object in blocks; ``close()`` closes it."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _Response:
    """``start_response`` and ``write`` for one request, on its worker thread."""

    __slots__ = ("bridge", "headers", "sent", "status")

    def __init__(self, bridge: _Bridge) -> None:
        self.bridge = bridge
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Callable[[Any], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status:
            raise RuntimeError("start_response() called twice without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit() or status[3:4] not in ("",
                                                                                                            " "):
            raise ValueError(f"the WSGI status must look like '200 OK', not {status!r}")
        encoded = []
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"WSGI header names and values must be str, not {name!r}: {value!r}")
            encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.status = int(status[:3])
        self.headers = encoded
        return self.write

    def start_message(self) -> Message:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    def write(self, data: Any) -> None:
        """Send one piece of the body now (the ``write`` callable and each item of the response iterable)."""
        if not self.status:
            raise RuntimeError("the WSGI app produced body data before calling start_response()")
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"WSGI response data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self.sent:
            self.bridge.call(self.bridge.send({"type": "http.response.body", "body": data, "more_body": True}))
        else:
            self.sent = True
            self.bridge.call(_send_start(self.bridge.send, self.start_message(), data))


async def _send_start(send: Callable[[Message], Any], start: Message, data: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": data, "more_body": True})


# --------------------------------------------------------------------------------------------------- the pool


class ThreadPool(concurrent.futures.Executor):
    """At most ``max_threads`` daemon threads, started as work arrives.

    Daemon threads: a request stuck in application code must not keep the process alive once the server has
    given up on it (graceful shutdown already waited, then cancelled the request).
    """

    def __init__(self, max_threads: int, name: str = "tidegate-wsgi") -> None:
        self.max_threads = max_threads
        self._name = name
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is shut down")
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and self._threads < self.max_threads:
                self._threads += 1
                thread = threading.Thread(target=self._worker, name=f"{self._name}-{self._threads}", daemon=True)
                thread.start()
        return future

    def _worker(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in range(self._threads):
                self._work.put(None)

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return self._threads


# --------------------------------------------------------------------------------------------------- the app


class WSGIMiddleware:
    """An ASGI app that runs the WSGI ``app`` on at most ``threads`` threads."""

    def __init__(self, app: WSGIApp, threads: int | None = None, *, multiprocess: bool = False) -> None:
        self.app = app
        self.pool = ThreadPool(threads or default_threads())
        self.multiprocess = multiprocess

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Message], Any]
                       ) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})  # a WSGI app cannot accept a WebSocket: 403
        else:
            raise ValueError(f"a WSGI app cannot serve a {kind!r} scope")

    async def _http(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Message], Any]
                    ) -> None:
        bridge = _Bridge(asyncio.get_running_loop(), receive, send)
        environ = build_environ(scope, InputStream(bridge), multiprocess=self.multiprocess)
        future = self.pool.submit(self._run, environ, bridge)
        try:
            start, last = await asyncio.wrap_future(future)
        except BaseException:
            bridge.abort()
            raise
        if start is not None:
            await send(start)
        await send({"type": "http.response.body", "body": last, "more_body": False})

    def _run(self, environ: Environ, bridge: _Bridge) -> tuple[Message | None, bytes]:
        """On a worker thread: call the app and send its body; return what is left to send from the loop.

        That is the start message (if no body item was sent yet) and the last piece of the body: when the
        iterable is a list or tuple its last item is known and leaves with the end of the response, so a
        one-piece body costs no extra hop to the loop and gets a ``content-length``.
        """
        response = _Response(bridge)
        iterable = self.app(environ, response.start_response)
        try:
            last: Any = b""
            if isinstance(iterable, (list, tuple)):
                if iterable:
                    for item in iterable[:-1]:
                        response.write(item)
                    last = iterable[-1]
                    if type(last) is not bytes:
                        if not isinstance(last, (bytearray, memoryview)):
                            raise TypeError(f"WSGI response data must be bytes, not {type(last).__name__}")
                        last = bytes(last)
            else:
                write = response.write
                for item in iterable:
                    write(item)
            if not response.status:
                raise RuntimeError("the WSGI app returned without calling start_response()")
            return (None if response.sent else response.start_message()), last
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        """Let the worker threads end once idle (in-flight requests finish)."""
        self.pool.shutdown(wait=False)

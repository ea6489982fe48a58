"""Shared fixtures: a real tidegate server on 127.0.0.1 port 0, run in a background thread."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tidegate.config import Config
from tidegate.runner import new_event_loop
from tidegate.runtime.server import serve

START_TIMEOUT = 10.0


class ServerThread:
    """Serve ``app`` in a thread with its own event loop; ``port``/``url`` once started."""

    def __init__(self, app: Any, loop: str = "uvloop", metrics: Any = None, **settings: Any) -> None:
        settings.setdefault("port", 0)
        settings.setdefault("access_log", False)
        settings.setdefault("lifespan", "off")
        settings.setdefault("app", "unused:app")
        self.config = Config.from_flat(loop=loop, **settings)
        self.app = app
        self.metrics = metrics
        self.loop_kind = loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sockets: list[socket.socket] = []
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tidegate-test-server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        loop = new_event_loop(self.loop_kind)
        self.loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.app, self.config, shutdown_trigger=self._stop.wait, on_started=self._on_started,
                        metrics=self.metrics)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()
            loop.close()

    def _on_started(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self._started.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise TimeoutError("the server did not start")
        if self.error is not None:
            raise self.error
        return self

    def request_stop(self) -> None:
        """Begin the graceful shutdown without waiting for it."""
        loop = self.loop
        if loop is not None and self._stop is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                if not loop.is_closed():
                    raise  # else the server ended (its shutdown had begun) and closed its loop since is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        self.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the server did not stop")

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def run_server() -> Iterator[Any]:
    """``run_server(app, **settings)`` starts a server; every one started is stopped after the test."""
    servers: list[ServerThread] = []

    def start(app: Any, **settings: Any) -> ServerThread:
        server = ServerThread(app, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def raw_request(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes on a fresh connection; return everything read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


class Response:
    """One HTTP/1.x response read off the wire by :class:`RawClient`."""

    def __init__(self, version: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 chunked: bool) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body
        self.chunked = chunked

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers!r} {self.body[:80]!r}>"


class RawClient:
    """A raw socket to the server: send bytes, read responses one by one (keep-alive, pipelining, 1xx)."""

    def __init__(self, port: int | None = None, *, uds: str | None = None, timeout: float = 5.0) -> None:
        if uds is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(uds)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        data, _, self.buffer = self.buffer.partition(marker)
        return data + marker

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_head(self) -> tuple[bytes, int, list[tuple[bytes, bytes]]]:
        lines = self.read_until(b"\r\n\r\n")[:-4].split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip()))
        return version, int(status), headers

    def read_response(self, method: bytes = b"GET", *, informational: bool = False) -> Response:
        """The next response; 1xx heads are skipped unless ``informational``."""
        while True:
            version, status, headers = self.read_head()
            if status >= 200 or informational or status == 101:
                break
        names = dict(headers)
        chunked = names.get(b"transfer-encoding", b"").lower() == b"chunked"
        if status < 200 or status in (204, 304) or method == b"HEAD":
            body = b""
        elif chunked:
            parts = []
            while True:
                size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")  # no trailers from us
                    break
                parts.append(self.read_exactly(size))
                assert self.read_exactly(2) == b"\r\n"
            body = b"".join(parts)
        elif b"content-length" in names:
            body = self.read_exactly(int(names[b"content-length"]))
        else:
            body = self.read_all()
        return Response(version, status, headers, body, chunked)

    def read_all(self) -> bytes:
        """Everything until the server closes."""
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            pass
        data, self.buffer = self.buffer, b""
        return data

    def wait_closed(self) -> bytes:
        """Wait (up to the socket timeout) for the server to close; return what came before (TimeoutError if not)."""
        return self.read_all()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogRecords(logging.Handler):
    """Every record logged under ``tidegate`` during a test (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]

    def messages(self, name: str = "tidegate") -> list[str]:
        return [r.getMessage() for r in self.records if r.name == name or r.name.startswith(name + ".")]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> logging.LogRecord:
        """The first record matching ``predicate``, waiting for it to be logged (TimeoutError after timeout)."""
        with self._changed:
            found: list[logging.LogRecord] = []

            def check() -> bool:
                found[:] = [r for r in self.records if predicate(r)]
                return bool(found)

            if not self._changed.wait_for(check, timeout):
                raise TimeoutError("no such log record")
            return found[0]


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    """Capture tidegate's log records, whatever an earlier test did to its loggers."""
    handler = LogRecords()
    names = ("tidegate", "tidegate.error", "tidegate.access")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger("tidegate.error").propagate = True
    logging.getLogger("tidegate.access").propagate = True
    top = logging.getLogger("tidegate")
    top.addHandler(handler)
    yield handler
    top.removeHandler(handler)
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


class LineReader:
    """Lines from a pipe, read by a thread: wait for one with a deadline, or look at all of them."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[bytes] = []
        self.closed = False
        self._cursor = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: Any) -> None:
        for line in iter(pipe.readline, b""):
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def next_matching(self, predicate: Any, timeout: float = 10.0) -> bytes:
        """The next line (after the last one returned) that matches; EOFError if the pipe closes first."""
        with self._changed:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if predicate(line):
                        return line
                if self.closed:
                    raise EOFError("the pipe closed: " + self.text())
                if not self._changed.wait(timeout):
                    raise TimeoutError("no matching line in time: " + self.text())

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The next line containing ``text``."""
        return self.next_matching(lambda line: text.encode() in line, timeout).decode(errors="replace")

    def wait_closed(self, timeout: float = 10.0) -> str:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the pipe stayed open")
        return self.text()

    def text(self) -> str:
        return b"".join(self.lines).decode(errors="replace")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = re.compile(r"serving on (?:https?://(\[[^\]]+\]|[^:\s]+):(\d+)|unix:(\S+))")


class ServerProcess:
    """``python -m tidegate ARGS`` (or the ``tidegate`` script) in a subprocess, its output read line by line."""

    def __init__(self, *args: str, script: bool = False, env: dict[str, str] | None = None, cwd: str = REPO,
                 pass_fds: tuple[int, ...] = ()) -> None:
        command = [os.path.join(os.path.dirname(sys.executable), "tidegate")] if script else [
            sys.executable, "-m", "tidegate"]
        self.process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=cwd, env={**os.environ, **(env or {})}, pass_fds=pass_fds)
        self.stdout = LineReader(self.process.stdout)
        self.stderr = LineReader(self.process.stderr)
        self.port = 0

    def wait_serving(self, timeout: float = 20.0) -> int:
        """Wait for the 'serving on' line; return the port it names (0 for a UNIX socket)."""
        line = self.stderr.next_matching(lambda line: SERVING.search(line.decode(errors="replace")), timeout)
        match = SERVING.search(line.decode())
        assert match is not None
        self.port = int(match.group(2)) if match.group(2) else 0
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit and its pipes to close; return its exit code."""
        code = self.process.wait(timeout)
        self.stdout.wait_closed(timeout)
        self.stderr.wait_closed(timeout)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def server_process() -> Iterator[Any]:
    """``server_process(*args, **options)`` starts ``python -m tidegate``; every one is killed after the test."""
    processes: list[ServerProcess] = []

    def start(*args: str, **options: Any) -> ServerProcess:
        process = ServerProcess(*args, **options)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()

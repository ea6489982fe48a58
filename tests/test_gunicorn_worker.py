"""tidegate as a gunicorn worker class: real gunicorn arbiters, serving on a socket the test binds and passes down
(``--bind fd://N``), with real clients and real signals."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from gunicorn.config import Config as GunicornConfig
from websockets.sync.client import connect

from tidegate.config import Config
from tidegate.workers import WORKER_BOOT_ERROR, gunicorn_settings

from .ops_helpers import Proc, get, wait_until

APP = "tests.ops_apps:app"
GUNICORN = [sys.executable, "-m", "gunicorn"]
#: gunicorn's control socket (a file under $HOME) is not wanted in tests, where the releases that have it allow it
NO_CONTROL_SOCKET = ["--no-control-socket"] if "control_socket_disable" in GunicornConfig().settings else []

Start = Callable[..., tuple[Proc, str]]


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app, for gunicorn to load as ``tests.test_gunicorn_worker:wsgi_app``."""
    body = f"wsgi {environ['wsgi.url_scheme']} {os.getpid()}".encode()
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", str(len(body)))])
    return [body]


async def gc_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = str(gc.get_threshold()[0]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _is_ours(pid: int) -> bool:
    """A live (not zombie) gunicorn process with this pid."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status and b"gunicorn" in command


def _stop(proc: Proc) -> None:
    """Stop an arbiter, then any of its workers still running (by pid)."""
    try:
        if proc.proc.poll() is None:
            proc.stop(signal.SIGTERM)
    finally:
        for pid in {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", proc.output)}:
            if _is_ours(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def gunicorn() -> Iterator[Start]:
    started: list[Proc] = []

    def start(*args: str, app: str = APP, env: dict[str, str] | None = None,
              scheme: str = "http") -> tuple[Proc, str]:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            fd = listener.fileno()
            proc = Proc(["-k", "tidegate.workers.Worker", "--bind", f"fd://{fd}", "--graceful-timeout", "10",
                         *NO_CONTROL_SOCKET, *args, app], argv0=GUNICORN, env=env, pass_fds=(fd,))
            started.append(proc)
            return proc, f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for proc in started:
        _stop(proc)


def ready(proc: Proc, count: int, *, start: int = 0) -> list[int]:
    """The pids of the next ``count`` workers serving, from log line ``start`` on."""
    pids = []
    for _ in range(count):
        match = proc.wait_for(r"\[(\d+)\] \[INFO\] tidegate serving on ", start=start)
        pids.append(int(match.group(1)))
        start = proc.lines.index(match.string, start) + 1
    return pids


def _quiet_get(url: str) -> None:
    try:
        get(url, timeout=70)
    except httpx.HTTPError:
        pass


def test_gunicorn_settings_map_onto_tidegate_settings() -> None:
    base = Config()
    defaults = base.replace(**gunicorn_settings(GunicornConfig(), base))
    assert defaults.timeouts.keep_alive == 2.0
    assert defaults.timeouts.graceful_shutdown == pytest.approx(27.0)  # the rest is left for lifespan shutdown
    assert (defaults.limits.request_line, defaults.limits.request_header_count,
            defaults.limits.request_field_size) == (4094, 100, 8190)
    assert defaults.limits.connections == 1000 and defaults.bind.backlog == 2048
    assert defaults.proxy.proxy_headers and defaults.proxy.forwarded_allow_ips == "127.0.0.1,::1,unix"
    assert defaults.tls.certfile is None and defaults.sync.threads is None

    cfg = GunicornConfig()
    for name, value in {"keepalive": 0, "graceful_timeout": 10, "limit_request_line": 0,
                        "limit_request_fields": 0, "limit_request_field_size": 0, "worker_connections": 50,
                        "forwarded_allow_ips": "10.0.0.0/8, 192.168.1.1", "threads": 4, "backlog": 64,
                        "certfile": "/srv/cert.pem", "keyfile": "/srv/key.pem", "ca_certs": "/srv/ca.pem",
                        "cert_reqs": ssl.CERT_REQUIRED, "ciphers": "ECDHE+AESGCM", "root_path": "/api",
                        "asgi_lifespan": "on", "asgi_loop": "asyncio"}.items():
        if name in cfg.settings:
            cfg.set(name, value)
    config = base.replace(**gunicorn_settings(cfg, base))
    assert config.timeouts.keep_alive == base.timeouts.keep_alive  # gunicorn's 0 (no keep-alive) is not mapped
    assert config.timeouts.graceful_shutdown == pytest.approx(9.0)
    assert config.limits.request_line == base.limits.request_headers  # gunicorn's 0: unlimited
    assert config.limits.request_header_count == 32768 and config.limits.request_field_size == 0
    assert config.limits.connections == 50 and config.bind.backlog == 64 and config.sync.threads == 4
    assert config.proxy.forwarded_allow_ips == "10.0.0.0/8,192.168.1.1,unix"
    assert (config.tls.certfile, config.tls.keyfile, config.tls.ca_certs, config.tls.cert_reqs,
            config.tls.ciphers) == ("/srv/cert.pem", "/srv/key.pem", "/srv/ca.pem", "required", "ECDHE+AESGCM")
    if "root_path" in cfg.settings:
        assert (config.app.root_path, config.app.lifespan, config.app.loop) == ("/api", "on", "asyncio")


def test_http1_websocket_and_http2_with_gunicorns_access_log(gunicorn: Start) -> None:
    proc, url = gunicorn("--access-logfile", "-")
    (pid,) = ready(proc, 1)
    assert f"ops-app startup {pid}" in proc.output
    response = get(url + "/")
    assert response.status_code == 200 and response.http_version == "HTTP/1.1"
    assert response.json()["pid"] == pid and response.json()["scheme"] == "http"
    # gunicorn's forwarded_allow_ips (127.0.0.1 by default) is trusted with the scheme, as gunicorn trusts it
    assert get(url + "/", headers={"x-forwarded-proto": "https"}).json()["scheme"] == "https"
    with httpx.Client(http1=False, http2=True, timeout=10) as client:  # cleartext HTTP/2, prior knowledge
        h2 = client.get(url + "/h2")
    assert h2.http_version == "HTTP/2" and h2.json()["pid"] == pid
    with connect(url.replace("http://", "ws://") + "/ws", open_timeout=10, close_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
    proc.wait_for(r'"GET / HTTP/1\.1" 200')
    proc.wait_for(r'"GET /h2 HTTP/2" 200')


def test_a_wsgi_app_is_served_through_the_adapter(gunicorn: Start) -> None:
    proc, url = gunicorn(app="tests.test_gunicorn_worker:wsgi_app")
    (pid,) = ready(proc, 1)
    response = get(url + "/")
    assert response.status_code == 200 and response.text == f"wsgi http {pid}"


@pytest.mark.parametrize(("env", "expected"), [({}, "10000"), ({"TIDEGATE_GC_THRESHOLD": "3000"}, "3000")])
def test_the_gc_threshold_is_set_in_the_worker(gunicorn: Start, env: dict[str, str], expected: str) -> None:
    proc, url = gunicorn(app="tests.test_gunicorn_worker:gc_app", env=env)
    ready(proc, 1)
    assert get(url + "/").text == expected


def test_tls_from_gunicorns_certificate_settings(gunicorn: Start, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    proc, url = gunicorn("--certfile", str(certfile), "--keyfile", str(keyfile), scheme="https")
    (pid,) = ready(proc, 1)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(verify=context, http2=True, timeout=10) as client:
        response = client.get(url + "/")
    assert response.http_version == "HTTP/2"  # chosen by ALPN
    assert response.json()["scheme"] == "https" and response.json()["pid"] == pid


def test_two_workers_both_serve(gunicorn: Start) -> None:
    proc, url = gunicorn("--workers", "2")
    pids = ready(proc, 2)
    assert len(set(pids)) == 2 and proc.pid not in pids
    mark = proc.mark()
    blocking = threading.Thread(target=_quiet_get, args=(url + "/block?3",), daemon=True)
    blocking.start()
    blocked = int(proc.wait_for(r"ops-app block (\d+)", start=mark).group(1))
    # that worker's loop is blocked: the other one takes the next connection
    other = get(url + "/").json()["pid"]
    assert {blocked, other} == set(pids)
    blocking.join(20)


def test_sigterm_to_the_arbiter_drains_and_runs_lifespan_shutdown(gunicorn: Start) -> None:
    proc, url = gunicorn("--workers", "2")
    pids = ready(proc, 2)
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=get(url + "/slow?1")))
    mark = proc.mark()
    slow.start()
    proc.wait_for("ops-app slow", start=mark)
    proc.signal(signal.SIGTERM)
    slow.join(20)
    assert result["r"].status_code == 200
    assert proc.wait() == 0
    for pid in pids:
        assert f"ops-app shutdown {pid}" in proc.output
    assert "was sent" not in proc.output  # every worker exited on its own, none was killed


def test_a_sigterm_while_the_worker_imports_the_app_stops_it(gunicorn: Start, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    proc, url = gunicorn(app="tests.gated_app:app", env={"GATED_APP_FIFO": str(gate)})
    pid = int(proc.wait_for(r"Booting worker with pid: (\d+)").group(1))
    # the FIFO opens for writing once the worker has it open for reading: it is inside the app's import
    fd = wait_until(lambda: _open_for_writing(gate))
    mark = proc.mark()
    os.kill(pid, signal.SIGTERM)  # as the arbiter does to retire a worker
    os.write(fd, b"x")
    os.close(fd)
    # it stops before it serves (nothing to drain yet); before, the loop never heard of the signal and it served on
    proc.wait_for(rf"Worker exiting \(pid: {pid}\)", start=mark)
    assert f"ops-app startup {pid}" not in proc.output
    (replacement,) = ready(proc, 1, start=mark)
    assert get(url + "/").json()["pid"] == replacement != pid


def _open_for_writing(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None


class Pending:
    """One request in a thread; ``outcome`` is its response or the error it ended with."""

    def __init__(self, url: str) -> None:
        self.outcome: httpx.Response | httpx.HTTPError | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            self.outcome = get(url, timeout=70)
        except httpx.HTTPError as exc:
            self.outcome = exc

    def result(self) -> httpx.Response | httpx.HTTPError | None:
        self._thread.join(20)
        return self.outcome


def test_sigquit_to_the_arbiter_stops_at_once_and_still_runs_lifespan_shutdown(gunicorn: Start) -> None:
    proc, url = gunicorn()
    (pid,) = ready(proc, 1)
    mark = proc.mark()
    pending = Pending(url + "/slow?60")
    proc.wait_for("ops-app slow", start=mark)
    proc.signal(signal.SIGQUIT)
    assert proc.wait() == 0
    assert isinstance(pending.result(), httpx.HTTPError)  # the request in flight was cut ...
    assert "graceful shutdown timed out" not in proc.output  # ... at once, not after a drain
    assert f"ops-app shutdown {pid}" in proc.output
    assert "was sent" not in proc.output


def test_sigquit_to_a_draining_worker_cuts_the_drain_short(gunicorn: Start) -> None:
    proc, url = gunicorn()
    (pid,) = ready(proc, 1)
    mark = proc.mark()
    pending = Pending(url + "/slow?60")
    proc.wait_for("ops-app slow", start=mark)
    os.kill(pid, signal.SIGTERM)  # as the arbiter does to retire one worker
    proc.wait_for(rf"\[{pid}\] \[INFO\] shutting down", start=mark)
    os.kill(pid, signal.SIGQUIT)
    proc.wait_for(rf"ops-app shutdown {pid}", start=mark)
    assert isinstance(pending.result(), httpx.HTTPError)
    assert "graceful shutdown timed out" not in proc.output
    (replacement,) = ready(proc, 1, start=mark)
    assert get(url + "/").json()["pid"] == replacement != pid


def test_max_requests_makes_gunicorn_replace_the_worker(gunicorn: Start) -> None:
    proc, url = gunicorn("--max-requests", "3")
    (first,) = ready(proc, 1)
    mark = proc.mark()
    assert [get(url + "/").json()["pid"] for _ in range(3)] == [first] * 3
    proc.wait_for("Autorestarting worker after current request", start=mark)
    (second,) = ready(proc, 1, start=mark)
    assert second != first
    assert get(url + "/").json()["pid"] == second
    proc.wait_for(f"ops-app shutdown {first}", start=mark)  # it retired gracefully
    assert f"Worker (pid:{first}) exited" not in proc.output  # with code 0: not reported


def test_a_failing_lifespan_startup_stops_gunicorn(gunicorn: Start) -> None:
    proc, _ = gunicorn(app="tests.apps:lifespan_app", env={"LIFESPAN_TEST_STARTUP": "fail"})
    assert proc.wait(30) == WORKER_BOOT_ERROR
    assert "Application startup failed: the database is unreachable" in proc.output
    assert "Worker failed to boot" in proc.output
    assert proc.count("Booting worker with pid") == 1  # stopped, not started again and again


def test_the_heartbeat_keeps_a_busy_worker_and_a_blocked_loop_gets_it_replaced(gunicorn: Start) -> None:
    proc, url = gunicorn("--timeout", "2")
    (first,) = ready(proc, 1)
    # a request that awaits for twice --timeout: the loop runs, the heartbeat goes on
    response = get(url + "/slow?4")
    assert response.status_code == 200 and response.json()["pid"] == first
    assert "WORKER TIMEOUT" not in proc.output
    mark = proc.mark()
    threading.Thread(target=_quiet_get, args=(url + "/block?30",), daemon=True).start()
    proc.wait_for(rf"ops-app block {first}", start=mark)
    proc.wait_for(rf"WORKER TIMEOUT \(pid:{first}\)", start=mark)
    (second,) = ready(proc, 1, start=mark)
    assert second != first
    assert get(url + "/").json()["pid"] == second
    wait_until(lambda: not _is_ours(first))

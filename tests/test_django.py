"""The Django example project under tidegate: ASGI (views, admin, ORM, streaming, Channels), WSGI, runserver.

Each server is a real process started from ``examples/django`` with a SQLite database migrated into a temporary
directory.  Under coverage the processes run under coverage too.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .ops_helpers import CLEAN_ENV, Proc, free_port, serving_url

pytest.importorskip("django")
pytest.importorskip("channels")

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django"
WAIT = 20.0
RELOAD_RETRY = 3.0  # StatReloader reports a change within a second (SLEEP_TIME) and the time of one pass
PASSWORD = "tide-gate-admin-pass"

HAS_WEBSOCKET = importlib.util.find_spec("tidegate.runtime.ws") is not None
needs_websocket = pytest.mark.skipif(not HAS_WEBSOCKET, reason="this build of tidegate does not serve WebSocket")


def python(*args: str) -> list[str]:
    """``python ARGS``, under ``coverage run`` when this test run measures coverage."""
    coverage = sys.modules.get("coverage")
    if coverage is not None and coverage.Coverage.current() is not None:
        return [sys.executable, "-m", "coverage", "run", "--parallel-mode", f"--rcfile={ROOT / 'pyproject.toml'}",
                *args]
    return [sys.executable, *args]


def coverage_env() -> dict[str, str]:
    return {"COVERAGE_FILE": str(ROOT / ".coverage")}


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env={**CLEAN_ENV, **env},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A migrated SQLite database with a superuser 'admin'; the environment that points the project at it."""
    env = {"DJANGO_DB_PATH": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
           "DJANGO_SUPERUSER_PASSWORD": PASSWORD, **coverage_env()}
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.org")
    return env


def start_tidegate(env: dict[str, str], *args: str) -> tuple[Proc, str]:
    proc = Proc(["--app-dir", str(PROJECT), "--port", "0", "--timeout-graceful-shutdown", "2", *args], env=env,
                cwd=PROJECT, argv0=python("-m", "tidegate"))
    try:
        return proc, serving_url(proc)
    except BaseException:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def asgi(database: dict[str, str]) -> Iterator[tuple[Proc, str]]:
    proc, url = start_tidegate(database, "mysite.asgi:application", "--warn-blocking", "0.2")
    yield proc, url
    assert proc.stop() == 0, proc.output


def log_in(client: httpx.Client) -> None:
    """Sign in through the admin's login form (with its CSRF token), as a browser does."""
    page = client.get("/admin/login/?next=/admin/")
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    response = client.post("/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": token.group(1), "username": "admin", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302 and response.headers["location"] == "/admin/", response.text[:500]


# ----------------------------------------------------------------------------------------------- ASGI


def test_view(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    response = httpx.get(url + "/", timeout=WAIT)
    assert response.status_code == 200
    assert "Hello from Django on tidegate" in response.text
    assert "/static/notes/site.css" in response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["server"] == "tidegate"
    assert httpx.get(url + "/nowhere/", timeout=WAIT).status_code == 404


def test_admin(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        login = client.get("/admin/login/")
        assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
        assert client.get("/admin/").status_code == 302  # not signed in yet
        log_in(client)
        page = client.get("/admin/")
        assert page.status_code == 200 and "Site administration" in page.text
        assert client.get("/admin/notes/note/").status_code == 200


def test_orm_through_sync_to_async(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        before = client.get("/notes/").json()["count"]
        created = client.post("/notes/", content=json.dumps({"text": "written by an async view"}))
        assert created.status_code == 200
        data = created.json()
        assert data["count"] == before + 1
        assert data["notes"][0]["text"] == "written by an async view"
        assert client.get("/notes/").json() == data


def test_streaming_response(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    with httpx.stream("GET", url + "/stream/", timeout=WAIT) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.read() == b"part 0\npart 1\npart 2\n"


@pytest.mark.skipif(importlib.util.find_spec("tidegate.runtime.h2") is None,
                    reason="this build of tidegate does not speak HTTP/2")
def test_over_http2(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    with httpx.Client(base_url=url, http1=False, http2=True, timeout=WAIT) as client:
        page = client.get("/")
        assert page.http_version == "HTTP/2" and "Hello from Django on tidegate" in page.text
        created = client.post("/notes/", content=json.dumps({"text": "over HTTP/2"}))
        assert created.json()["notes"][0]["text"] == "over HTTP/2"
        assert client.get("/stream/").content == b"part 0\npart 1\npart 2\n"


def test_request_body(asgi: tuple[Proc, str]) -> None:
    _, url = asgi
    payload = os.urandom(1_500_000)
    response = httpx.post(url + "/echo/", content=iter([payload[:1000], payload[1000:]]), timeout=WAIT)
    assert response.json() == {"bytes": len(payload)}


@needs_websocket
def test_websocket_consumer(asgi: tuple[Proc, str]) -> None:
    from websockets.sync.client import connect

    _, url = asgi
    ws_url = url.replace("http://", "ws://") + "/ws/chat/lobby/"
    with connect(ws_url, origin=url, open_timeout=WAIT) as one, connect(ws_url, origin=url, open_timeout=WAIT) as two:
        for ws in (one, two):
            welcome = json.loads(ws.recv(WAIT))
            assert welcome["type"] == "welcome" and welcome["user"] == "anonymous"
        one.send(json.dumps({"type": "echo", "text": "just me"}))
        assert json.loads(one.recv(WAIT)) == {"type": "echo", "text": "just me"}
        one.send(json.dumps({"text": "hello room"}))
        for ws in (one, two):
            message = json.loads(ws.recv(WAIT))
            assert message["type"] == "message" and message["text"] == "hello room"


@needs_websocket
def test_websocket_sees_the_signed_in_user(asgi: tuple[Proc, str]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    _, url = asgi
    ws_url = url.replace("http://", "ws://") + "/ws/chat/staff/"
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        log_in(client)
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    with connect(ws_url, origin=url, additional_headers={"Cookie": cookie}, open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(WAIT))["user"] == "admin"
    # AllowedHostsOriginValidator: a page from another site may not connect
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin="http://evil.example", open_timeout=WAIT)
    assert refused.value.response.status_code == 403


def test_blocking_view_is_reported(asgi: tuple[Proc, str]) -> None:
    """The mistake the watchdog exists for: a blocking call in an async view (Django runs it in a task)."""
    proc, url = asgi
    mark = proc.mark()
    assert httpx.get(url + "/blocking/?seconds=2", timeout=WAIT).json() == {"slept": True}
    proc.wait_for(r"event loop has been blocked .* while handling GET /blocking/\?seconds=2 from 127\.0\.0\.1",
                  start=mark)
    stuck = proc.wait_for(r"Stuck in (\S+) at (\S+)", start=mark)
    assert stuck.group(1) == "blocking()"
    assert stuck.group(2).startswith(str(PROJECT / "notes" / "views.py"))
    proc.wait_for(r"time\.sleep\(float\(request\.GET", start=mark)
    proc.wait_for(r"sync_to_async", start=mark)


# ----------------------------------------------------------------------------------------------- WSGI


def test_wsgi_project(database: dict[str, str]) -> None:
    """The same project through its WSGI entry point, detected as WSGI by its signature."""
    proc, url = start_tidegate(database, "mysite.wsgi:application", "--threads", "4")
    try:
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            page = client.get("/")
            assert page.status_code == 200 and "Hello from Django on tidegate" in page.text
            assert page.headers["content-length"] == str(len(page.content))
            log_in(client)
            assert "Site administration" in client.get("/admin/").text
            payload = os.urandom(2_000_000)
            # (Django's WSGI request reads CONTENT_LENGTH bytes: a chunked body would look empty to it)
            assert client.post("/echo/", content=payload).json() == {"bytes": len(payload)}
            notes = client.post("/notes/", content=json.dumps({"text": "via WSGI"})).json()
            assert notes["notes"][0]["text"] == "via WSGI"
            with client.stream("GET", "/stream/") as response:
                assert response.read() == b"part 0\npart 1\npart 2\n"
    finally:
        assert proc.stop() == 0, proc.output


# ----------------------------------------------------------------------------------------------- runserver


def runserver(env: dict[str, str], port: int, *args: str, cwd: Path = PROJECT, **popen: Any) -> Proc:
    return Proc([f"127.0.0.1:{port}", *args], env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
                argv0=python("manage.py", "runserver"), **popen)


def test_runserver_serves_through_tidegate(database: dict[str, str]) -> None:
    port = free_port()
    proc = runserver(database, port, "--noreload")
    try:
        proc.wait_for(rf"Starting tidegate development server at http://127\.0\.0\.1:{port}/")
        url = serving_url(proc)
        assert url == f"http://127.0.0.1:{port}"
        page = httpx.get(url + "/", timeout=WAIT)
        assert page.status_code == 200 and page.headers["server"] == "tidegate"
        css = httpx.get(url + "/static/notes/site.css", timeout=WAIT)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.text == (PROJECT / "notes" / "static" / "notes" / "site.css").read_text()
        assert httpx.get(url + "/static/admin/css/base.css", timeout=WAIT).status_code == 200
        assert httpx.get(url + "/static/missing.css", timeout=WAIT).status_code == 404
        if HAS_WEBSOCKET:
            from websockets.sync.client import connect

            with connect(url.replace("http", "ws") + "/ws/chat/dev/", origin=url, open_timeout=WAIT) as ws:
                assert json.loads(ws.recv(WAIT))["type"] == "welcome"
    finally:
        code = proc.stop(signal.SIGINT)
    assert code == 0, proc.output
    assert proc.count(r"\bstopped\b") == 1


def test_runserver_under_the_reloader_exits_when_the_port_is_taken(database: dict[str, str]) -> None:
    """The server runs in a thread under Django's reloader: a failure must still end the process."""
    port = free_port()
    first = runserver(database, port, "--noreload")
    try:
        serving_url(first)
        second = runserver(database, port, start_new_session=True)
        try:
            assert second.wait() != 0
        finally:
            if second.proc.poll() is None:
                os.killpg(second.pid, signal.SIGINT)
        assert "Address already in use" in second.output
    finally:
        first.stop(signal.SIGINT)


def test_runserver_without_static_files(database: dict[str, str]) -> None:
    port = free_port()
    proc = runserver({**database, "DJANGO_DEBUG": "0"}, port, "--noreload")
    try:
        url = serving_url(proc)
        assert httpx.get(url + "/", timeout=WAIT).status_code == 200
        assert httpx.get(url + "/static/notes/site.css", timeout=WAIT).status_code == 404  # not in production
    finally:
        assert proc.stop(signal.SIGINT) == 0, proc.output


def test_runserver_reports_a_busy_port(database: dict[str, str]) -> None:
    port = free_port()
    first = runserver(database, port, "--noreload")
    try:
        serving_url(first)
        second = runserver(database, port, "--noreload")
        assert second.wait() != 0
        assert "Address already in use" in second.output and "Traceback" not in second.output
    finally:
        first.stop(signal.SIGINT)


def test_runserver_reloads_on_code_changes(database: dict[str, str], tmp_path: Path) -> None:
    """Django's own autoreloader restarts the server when a module of the project changes."""
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    port = free_port()
    # the reloader runs the server in a child process: a session of its own lets the test stop both
    proc = runserver(database, port, cwd=project, start_new_session=True)
    try:
        url = serving_url(proc)
        assert httpx.get(url + "/", timeout=WAIT).status_code == 200
        mark = proc.mark()
        template = project / "notes" / "templates" / "notes" / "index.html"
        template.write_text(template.read_text().replace("Hello from Django", "Reloaded Django"))
        views = project / "notes" / "views.py"
        source = views.read_text().replace("Hello", "Hi")
        # Django's StatReloader compares each watched file with the mtime it saw on its previous pass, once a
        # second.  An edit made before its first pass over views.py (still under way when the server already
        # answers) or while the process restarts for another watched file (every module in sys.modules,
        # tidegate's own sources included) becomes its baseline and is never reported: the edit is made again,
        # a new one each time, until the reloader reports it, within the same WAIT in all.
        deadline = time.monotonic() + WAIT
        for attempt in itertools.count(1):
            views.write_text(source + f"\n# changed ({attempt})\n")
            remaining = deadline - time.monotonic()
            try:
                proc.wait_for(r"views\.py changed, reloading", start=mark, timeout=min(RELOAD_RETRY, remaining))
                break
            except AssertionError:
                if proc.proc.poll() is not None or remaining <= RELOAD_RETRY:
                    raise
        changed = next(i for i, line in enumerate(proc.lines) if i >= mark and "views.py changed" in line)
        url = serving_url(proc, start=changed)  # the server started after that change
        assert "Reloaded Django on tidegate" in httpx.get(url + "/", timeout=WAIT).text
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait()

"""The command line end to end: ``python -m tidegate`` and the ``tidegate`` script in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

import tidegate

from .conftest import REPO, RawClient

SCRIPT = os.path.join(os.path.dirname(sys.executable), "tidegate")


def run_cli(*args: str, cwd: str = REPO, script: bool = False) -> subprocess.CompletedProcess[str]:
    command = [SCRIPT] if script else [sys.executable, "-m", "tidegate"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=30, check=False)


def stop(process: Any) -> None:
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert "Traceback" not in process.stderr.text()


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


LOOP_APP = """
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        loop = type(asyncio.get_running_loop())
        body = f"{loop.__module__}.{loop.__name__}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def create():
        return app

    not_an_app = 42
"""


# ---------------------------------------------------------------------------------------------------- information


@pytest.mark.parametrize("script", [False, True])
def test_version(script: bool) -> None:
    result = run_cli("--version", script=script)
    assert result.returncode == 0
    assert result.stdout.strip() == f"tidegate {tidegate.__version__}, {tidegate.BUILD}"


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("APP", "--factory", "--app-dir", "--root-path", "--lifespan", "--loop", "--host", "--port", "--uds",
                 "--fd", "--backlog", "--server-header", "--no-server-header", "--date-header", "--no-date-header",
                 "--header", "--timeout-keep-alive", "--timeout-graceful-shutdown", "--limit-request-buffer",
                 "--limit-pipeline-depth", "--log-level", "--access-log", "--no-access-log", "--version"):
        assert flag in result.stdout, flag


def test_usage_errors_exit_2() -> None:
    result = run_cli("tests.apps:hello", "--port", "eighty")
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert run_cli().returncode == 2  # no APP


# ---------------------------------------------------------------------------------------------------- a wrong app


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(("spec", "expected"), [
    ("no_such_module_xyz:app", "could not import module 'no_such_module_xyz'"),
    ("no_such_package_xyz.sub:app", "could not import module 'no_such_package_xyz.sub'"),
    ("tests.apps:no_such_attribute", "attribute 'no_such_attribute' not found in module 'tests.apps'"),
    ("tests.apps:Gate.no_such", "attribute 'Gate.no_such' not found in module 'tests.apps'"),
    ("tests.apps:json", "'tests.apps:json' is not callable"),
    ("tests.apps", "'module:attribute'"),
    ("main:create_app()", "give main:create_app with --factory"),  # uvicorn users' habits, with the way out
    ("main.py:app", "give the module, main:app"),
    ("src/main.py:app", "give the module, src.main:app"),
])
def test_a_wrong_app_gives_one_clear_line(spec: str, expected: str) -> None:
    result = run_cli(spec)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_a_wrong_app_with_debug_logging_shows_the_traceback() -> None:
    result = run_cli("no_such_module_xyz:app", "--log-level", "debug")
    assert result.returncode == 1
    assert "could not import module 'no_such_module_xyz'" in result.stderr
    assert "Traceback" in result.stderr


def test_not_callable_from_a_factory(tmp_path: Path) -> None:
    write_module(tmp_path, "loopapp", LOOP_APP)
    result = run_cli("loopapp:not_an_app", "--factory", "--app-dir", str(tmp_path))
    assert result.returncode == 1
    assert len(error_lines(result.stderr)) == 1 and "not callable" in result.stderr


@pytest.mark.parametrize(("body", "expected"), [
    ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
    ("raise RuntimeError('bad config value')\n", "RuntimeError: bad config value"),
    ("from os import no_such_name_xyz\n", "ImportError: cannot import name 'no_such_name_xyz'"),
])
def test_an_error_inside_the_users_module_shows_its_traceback(tmp_path: Path, body: str, expected: str) -> None:
    (tmp_path / "usermod.py").write_text("import os\n\n" + body + "\napp = None\n")
    result = run_cli("usermod:app", "--app-dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert f'File "{tmp_path / "usermod.py"}", line 3' in result.stderr
    assert expected in result.stderr


# ---------------------------------------------------------------------------------------------------- serving


def test_port_0_logs_the_real_port(server_process: Any) -> None:
    process = server_process("tests.apps:hello", "--port", "0")
    port = process.wait_serving()
    assert port > 0
    assert f"serving on http://127.0.0.1:{port}" in process.stderr.text()
    assert httpx.get(process.url, timeout=5).text == "Hello, world!"
    stop(process)


def test_the_tidegate_script_serves(server_process: Any) -> None:
    process = server_process("tests.apps:hello", "--port", "0", script=True)
    process.wait_serving()
    assert httpx.get(process.url, timeout=5).text == "Hello, world!"
    stop(process)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_factory_app_dir_and_loop(server_process: Any, tmp_path: Path, loop: str) -> None:
    write_module(tmp_path, "loopapp", LOOP_APP)
    process = server_process("loopapp:create", "--factory", "--app-dir", str(tmp_path), "--port", "0", "--loop", loop,
                             cwd=str(tmp_path.parent))
    process.wait_serving()
    expected = "asyncio.unix_events._UnixSelectorEventLoop" if loop == "asyncio" else "uvloop.Loop"
    assert httpx.get(process.url, timeout=5).text == expected
    stop(process)


GC_APP = """
    import gc
    import json
    import os

    if os.environ.get("APP_GC_THRESHOLD"):
        gc.set_threshold(int(os.environ["APP_GC_THRESHOLD"]))
    AT_IMPORT = gc.get_threshold()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = json.dumps({"at_import": AT_IMPORT, "now": gc.get_threshold()}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize(("args", "app_sets", "expected"), [
    ((), "", 10000),  # the default, in place before the app is imported
    (("--gc-threshold", "0"), "", None),  # Python's own
    (("--gc-threshold", "3000", "--workers", "1"), "", 3000),  # in a worker process too
    (("--gc-threshold", "3000"), "1234", 1234),  # the app's own wins
])
def test_gc_threshold(server_process: Any, tmp_path: Path, args: tuple[str, ...], app_sets: str,
                      expected: int | None) -> None:
    import gc

    write_module(tmp_path, "gcapp", GC_APP)
    process = server_process("gcapp:app", "--app-dir", str(tmp_path), "--port", "0", *args,
                             env={"APP_GC_THRESHOLD": app_sets})
    process.wait_serving()
    seen = httpx.get(process.url, timeout=5).json()
    first = expected if expected is not None else gc.get_threshold()[0]  # this interpreter's, left as it was
    assert seen["at_import"][0] == seen["now"][0] == first
    assert seen["now"][1:] == list(gc.get_threshold()[1:])
    stop(process)


def test_uds(server_process: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "tidegate.sock")
    process = server_process("tests.apps:scope_json", "--uds", path)
    process.wait_serving()
    assert f"serving on unix:{path}" in process.stderr.text()
    with RawClient(uds=path) as client:
        client.send(b"GET /over-uds HTTP/1.1\r\nhost: localhost\r\n\r\n")
        scope = json.loads(client.read_response().body)
    assert scope["server"] == [path, None]
    assert scope["path"] == "/over-uds"
    stop(process)


def test_fd(server_process: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        process = server_process("tests.apps:scope_json", "--fd", str(fd), pass_fds=(fd,))
        assert process.wait_serving() == port
    scope = httpx.get(f"http://127.0.0.1:{port}/via-fd", timeout=5).json()
    assert scope["server"] == ["127.0.0.1", port]
    stop(process)


def test_response_header_options(server_process: Any) -> None:
    process = server_process("tests.apps:hello", "--port", "0", "--header", "x-one:1", "--header", "X-Two: two words")
    process.wait_serving()
    response = httpx.get(process.url, timeout=5)
    assert response.headers["x-one"] == "1"
    assert response.headers["x-two"] == "two words"
    assert response.headers["server"] == "tidegate"
    assert "date" in response.headers
    stop(process)
    process = server_process("tests.apps:hello", "--port", "0", "--no-server-header", "--no-date-header")
    process.wait_serving()
    response = httpx.get(process.url, timeout=5)
    assert "server" not in response.headers
    assert "date" not in response.headers
    assert response.text == "Hello, world!"
    stop(process)


def test_root_path_lifespan_and_access_log(server_process: Any) -> None:
    process = server_process("tests.apps:lifespan_app", "--port", "0", "--root-path", "/mount", "--lifespan", "off")
    process.wait_serving()
    scope = httpx.get(process.url + "/items?q=1", timeout=5).json()
    assert scope["root_path"] == "/mount" and scope["path"] == "/mount/items"
    assert scope["state"] == {}  # no lifespan: nothing in the state
    line = process.stderr.wait_for('"GET /mount/items?q=1 HTTP/1.1" 200')
    assert "127.0.0.1:" in line
    stop(process)
    assert "lifespan" not in process.stdout.text()
    process = server_process("tests.apps:hello", "--port", "0", "--no-access-log")
    process.wait_serving()
    assert httpx.get(process.url + "/quiet", timeout=5).status_code == 200
    stop(process)
    assert "/quiet" not in process.stderr.text()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_host(server_process: Any) -> None:
    process = server_process("tests.apps:scope_json", "--host", "::1", "--port", "0")
    port = process.wait_serving()
    assert f"serving on http://[::1]:{port}" in process.stderr.text()
    scope = httpx.get(f"http://[::1]:{port}/six", timeout=5).json()
    assert scope["server"] == ["::1", port]
    assert scope["client"][0] == "::1" and scope["client_types"] == ["str", "int"]
    stop(process)

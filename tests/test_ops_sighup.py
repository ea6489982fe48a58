"""SIGHUP re-reads the config file: what changed is logged, the workers restart with it, the listeners stay."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from tidegate.config import Config
from tidegate.sources import reassembly_for, resolve
from tidegate.supervisor.parent import Supervisor
from tidegate.supervisor.reconfig import NEEDS_RESTART, Change, applicable, changes

from .ops_helpers import ROOT, Proc, free_port, get, serving_url, wait_until

APP = "tests.ops_apps:app"


@pytest.fixture
def server():
    procs: list[Proc] = []

    def start(*args: str, cwd: Path | str = ROOT) -> Proc:
        proc = Proc([*args, "--timeout-graceful-shutdown", "5"], cwd=cwd)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def ready_pid(proc: Proc, *, start: int = 0) -> int:
    return ready_pids(proc, 1, start=start)[0]


def ready_pids(proc: Proc, count: int, *, start: int = 0) -> list[int]:
    """The pids of the next ``count`` workers logged as ready from line ``start`` on."""
    pids = []
    for _ in range(count):
        match = proc.wait_for(r"worker \d+ \(pid (\d+)\) ready", start=start)
        pids.append(int(match.group(1)))
        start = proc.lines.index(match.string, start) + 1
    return pids


def version(url: str) -> str | None:
    return get(url + "/").headers.get("x-version")


# ---------------------------------------------------------------------------------------------- real processes


def test_sighup_applies_the_changed_file_and_the_command_line_still_wins(server, tmp_path):
    file = tmp_path / "tidegate.toml"
    file.write_text('header = ["x-version: one"]\ntimeout_keep_alive = 3\n')
    proc = server(APP, "--config", str(file), "--workers", "1", "--port", "0", "--timeout-keep-alive", "7")
    url = serving_url(proc)
    old = ready_pid(proc)
    assert version(url) == "one"

    file.write_text('header = ["x-version: two"]\ntimeout_keep_alive = 4\n')
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for(rf"SIGHUP, re-reading .*{file.name}", start=mark)
    proc.wait_for(r'config: headers \["x-version: one"\] -> \["x-version: two"\]', start=mark)
    proc.wait_for("rolling restart done", start=mark)
    proc.wait_for(rf"pid {old}\) exited with code 0", start=mark)
    wait_until(lambda: version(url) == "two")
    assert get(url + "/").json()["pid"] != old
    # --timeout-keep-alive on the command line wins over the file: no change to it
    assert proc.count("config: timeout_keep_alive") == 0

    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for("config: no setting changed", start=mark)
    proc.wait_for("rolling restart done", start=mark)
    assert version(url) == "two"
    assert proc.stop() == 0


def test_a_changed_listener_needs_a_restart_and_the_old_address_serves(server, tmp_path):
    port = free_port()
    file = tmp_path / "tidegate.toml"
    file.write_text(f'port = {port}\nheader = ["x-version: one"]\n')
    proc = server(APP, "--config", str(file), "--workers", "1")
    url = serving_url(proc)
    assert url.endswith(f":{port}")
    old = ready_pid(proc)

    file.write_text(f'port = {port + 1}\nbacklog = 64\nheader = ["x-version: two"]\n')
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for(rf"config: port {port} -> {port + 1} needs a restart to apply; keeping {port}", start=mark)
    proc.wait_for(r"config: backlog 2048 -> 64 needs a restart to apply; keeping 2048", start=mark)
    proc.wait_for("rolling restart done", start=mark)
    proc.wait_for(rf"pid {old}\) exited with code 0", start=mark)
    # the old address serves the new workers, with the settings that could apply
    wait_until(lambda: version(url) == "two")
    assert get(url + "/").json()["pid"] != old
    assert proc.stop() == 0


@pytest.mark.parametrize(("content", "error"), [
    ("header = [\n", "invalid TOML"),
    ('header = ["x-version: two"]\nkeep_alive_timeout = 9\n', "unknown key 'keep_alive_timeout'"),
    ('header = ["x-version: two"]\ntimeout_keep_alive = "long"\n', "timeout_keep_alive must be a number"),
    ('header = ["x-version: two"]\nssl_keyfile = "key.pem"\n', "ssl_keyfile needs ssl_certfile"),
])
def test_a_broken_file_is_logged_and_the_workers_keep_running(server, tmp_path, content, error):
    file = tmp_path / "tidegate.toml"
    file.write_text('header = ["x-version: one"]\n')
    proc = server(APP, "--config", str(file), "--workers", "1", "--port", "0")
    url = serving_url(proc)
    old = ready_pid(proc)

    file.write_text(content)
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    line = proc.wait_for(rf"config: .*{file.name}.*{error}.*; nothing applied, the workers keep running",
                         start=mark)
    assert "ERROR" in line.string
    # no restart: the same worker answers, as before
    response = get(url + "/")
    assert response.json()["pid"] == old and response.headers["x-version"] == "one"
    assert proc.count("rolling restart") == 0

    # once the file is fixed, the next SIGHUP applies it
    file.write_text('header = ["x-version: two"]\n')
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for("rolling restart done", start=mark)
    wait_until(lambda: version(url) == "two")
    assert proc.stop() == 0


def test_a_found_tidegate_toml_is_reread_and_a_new_worker_count_applies(server, tmp_path):
    file = tmp_path / "tidegate.toml"
    file.write_text(f'app = "{APP}"\napp_dir = "{ROOT}"\nport = 0\nworkers = 1\n')
    proc = server(cwd=tmp_path)
    url = serving_url(proc)
    ready_pid(proc)

    file.write_text(f'app = "{APP}"\napp_dir = "{ROOT}"\nport = 0\nworkers = 2\n')
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for("config: workers 1 -> 2", start=mark)
    proc.wait_for(r"rolling restart of 2 worker\(s\)", start=mark)
    new = ready_pids(proc, 2, start=mark)
    proc.wait_for("rolling restart done", start=mark)
    assert len(set(new)) == 2
    assert get(url + "/").json()["pid"] in new
    assert proc.stop() == 0


GATED_APP = """
import asyncio, os, pathlib

GO = pathlib.Path(__file__).with_name("go")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for _ in range(400):  # a worker's startup waits (20 s at most) for the test to let it finish
                    if GO.exists():
                        break
                    await asyncio.sleep(0.05)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def test_a_sighup_during_a_restart_is_handled_after_it(server, tmp_path):
    (tmp_path / "gated_app.py").write_text(GATED_APP)
    go = tmp_path / "go"
    go.touch()
    file = tmp_path / "tidegate.toml"
    file.write_text('header = ["x-version: one"]\n')
    proc = server("gated_app:app", "--app-dir", str(tmp_path), "--config", str(file), "--workers", "1",
                  "--port", "0")
    url = serving_url(proc)
    old = ready_pid(proc)

    go.unlink()  # the next workers' startup waits
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for(r"started worker 2 \(pid", start=mark)
    file.write_text('header = ["x-version: two"]\n')
    proc.signal(signal.SIGHUP)
    proc.wait_for("SIGHUP while workers are being replaced; handled once they are", start=mark)
    go.touch()
    done = proc.wait_for("rolling restart done", start=mark)
    # then the second SIGHUP: the file read again, and another restart
    second = proc.wait_for("SIGHUP, re-reading", start=proc.lines.index(done.string, mark) + 1)
    start = proc.lines.index(second.string, mark)
    proc.wait_for(r'config: headers \["x-version: one"\] -> \["x-version: two"\]', start=start)
    proc.wait_for("rolling restart done", start=start)
    wait_until(lambda: get(url + "/").headers.get("x-version") == "two")
    assert get(url + "/").text != str(old)
    assert proc.stop() == 0


def test_without_a_config_file_sighup_still_restarts_the_workers(server):
    proc = server(APP, "--workers", "1", "--port", "0")
    url = serving_url(proc)
    old = ready_pid(proc)
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for(r"SIGHUP, no config file to re-read; rolling restart of 1 worker\(s\)", start=mark)
    new = ready_pid(proc, start=mark)
    proc.wait_for("rolling restart done", start=mark)
    assert new != old
    wait_until(lambda: get(url + "/").json()["pid"] == new)
    assert proc.stop() == 0


def test_without_the_supervisor_sighup_is_logged_and_the_server_keeps_serving(server, tmp_path):
    file = tmp_path / "tidegate.toml"
    file.write_text('header = ["x-version: one"]\n')
    proc = server(APP, "--config", str(file), "--port", "0")
    url = serving_url(proc)
    proc.wait_for("ops-app startup")
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for(r"SIGHUP ignored: re-reading the config file needs the supervisor \(run with --workers 1\)",
                  start=mark)
    assert version(url) == "one"
    assert proc.stop() == 0


# ---------------------------------------------------------------------------------------------- no sockets


def test_changes_names_each_setting_in_declared_order():
    old = Config.from_flat(app="a:b", timeout_keep_alive=5, headers=("x-a: 1",))
    new = old.replace(timeout_keep_alive=10.0, headers=("x-a: 2",), log_level="debug")
    assert [c.setting for c in changes(old, new)] == ["headers", "timeout_keep_alive", "log_level"]
    assert [c.describe() for c in changes(old, new)] == [
        'headers ["x-a: 1"] -> ["x-a: 2"]', "timeout_keep_alive 5.0 -> 10.0", 'log_level "info" -> "debug"']
    assert not any(c.needs_restart for c in changes(old, new))
    assert changes(old, old) == []
    assert changes(old, Config.from_flat(app="a:b", timeout_keep_alive=5.0, headers=("x-a: 1",))) == []


@pytest.mark.parametrize(("flat", "value"), [
    ("host", "0.0.0.0"), ("port", 9000), ("uds", "/tmp/x.sock"), ("fd", 3), ("backlog", 10),
    ("bind", ("127.0.0.1:9000",)), ("uds_permissions", "660"), ("metrics_bind", "127.0.0.1:9100"),
    ("reload", True), ("reload_dirs", ("src",)), ("reload_delay", 1.0),
])
def test_the_listeners_metrics_and_reload_need_a_restart(flat, value):
    old = Config.from_flat(app="a:b")
    new = old.replace(**{flat: value}, timeout_keep_alive=9.0)
    found = {c.setting: c for c in changes(old, new)}
    assert found[flat].needs_restart and flat in NEEDS_RESTART
    assert "needs a restart to apply; keeping" in found[flat].describe()
    assert not found["timeout_keep_alive"].needs_restart
    # what the workers get: the running value of the one, the new value of the other
    kept = applicable(old, new)
    assert changes(old, kept) == [Change("timeout_keep_alive", 5.0, 9.0, False)]


@pytest.mark.parametrize(("flat", "value"), [
    ("workers", 4), ("max_requests", 100), ("log_level", "warning"), ("access_log", False), ("app", "c:d"),
    ("ssl_certfile", "cert.pem"), ("limit_concurrency", 10), ("ws_max_size", 1024), ("proxy_headers", True),
])
def test_what_the_workers_read_applies(flat, value):
    old = Config.from_flat(app="a:b")
    new = old.replace(**{flat: value})
    [change] = changes(old, new)
    assert not change.needs_restart
    assert applicable(old, new) == new


def test_a_secret_is_not_logged():
    old = Config.from_flat(app="a:b", ssl_certfile="c.pem", ssl_keyfile_password="hunter2")
    [change] = changes(old, old.replace(ssl_keyfile_password="swordfish"))
    assert change.describe() == "ssl_keyfile_password changed"


def test_a_configuration_from_a_file_can_be_assembled_again(tmp_path):
    file = tmp_path / "prod.toml"
    file.write_text("port = 1111\ntimeout_keep_alive = 3\n")
    config = resolve({"app": "a:b", "port": 2222}, environ={"TIDEGATE_BACKLOG": "10"}, cwd=tmp_path,
                     config_file="prod.toml").config
    again = reassembly_for(config)
    assert again is not None and again.file == file
    file.write_text("port = 3333\ntimeout_keep_alive = 4\nbacklog = 20\n")
    new = again.resolve().config
    # the command line and the environment (as at the start) still win over the file
    assert (new.bind.port, new.bind.backlog, new.timeouts.keep_alive) == (2222, 10, 4.0)
    # built without a file, or another way: nothing to read again
    assert reassembly_for(resolve({"app": "a:b"}, environ={}, cwd=tmp_path).config) is None
    assert reassembly_for(Config.from_flat(app="a:b", port=9)) is None


def test_the_supervisor_rereads_and_logs_without_starting_anything(tmp_path, logs):
    file = tmp_path / "tidegate.toml"
    file.write_text('app = "a:b"\nworkers = 2\nport = 8001\n')
    config = resolve({}, environ={}, cwd=tmp_path).config
    sources = reassembly_for(config)

    async def reread() -> tuple[Config, int] | None:
        supervisor = Supervisor(config, sources)
        assert supervisor.target == 2
        return supervisor.reread()

    file.write_text('app = "a:b"\nworkers = 3\nport = 8002\ntimeout_keep_alive = 8\n')
    result = asyncio.run(reread())
    assert result is not None
    new, target = result
    assert target == 3 and new.workers.workers == 3 and new.bind.port == 8001 and new.timeouts.keep_alive == 8.0
    text = "\n".join(logs.messages())
    assert "config: port 8001 -> 8002 needs a restart to apply; keeping 8001" in text
    assert "config: workers 2 -> 3" in text and "config: timeout_keep_alive 5.0 -> 8.0" in text

    file.write_text('app = "a:b"\nworkers = 0\n')
    assert asyncio.run(reread()) is None
    [error] = [r.getMessage() for r in logs.at(logging.ERROR)]
    assert error.startswith("config: ") and str(file) in error and "workers must be > 0" in error
    assert error.endswith("nothing applied, the workers keep running with the settings they have")

    file.write_text("workers = 2\n")
    assert asyncio.run(reread()) is None
    assert "no APP" in logs.at(logging.ERROR)[-1].getMessage()

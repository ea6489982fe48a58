"""Several listeners at once, UNIX socket permissions, inherited fds and systemd socket activation."""

from __future__ import annotations

import os
import socket
import stat
import sys

import httpx
import pytest

from tidegate.config import BindSettings, Config, ConfigError
from tidegate.runtime.listeners import bind_all, systemd_sockets

from .apps import hello
from .ops_helpers import ROOT, Proc, get, serving_url


def test_several_binds_at_once(run_server, tmp_path):
    path = str(tmp_path / "app.sock")
    outside = socket.socket()
    outside.bind(("127.0.0.1", 0))
    outside.listen(8)
    outside_port = outside.getsockname()[1]
    fd = outside.detach()  # the server owns it now
    server = run_server(hello, bind=("127.0.0.1:0", "[::1]:0", f"unix:{path}", f"fd://{fd}"),
                        uds_permissions="600")
    assert len(server.sockets) == 4
    v4, v6, unix, inherited = server.sockets
    assert httpx.get(f"http://127.0.0.1:{v4.getsockname()[1]}/", timeout=5).text == "Hello, world!"
    assert httpx.get(f"http://[::1]:{v6.getsockname()[1]}/", timeout=5).text == "Hello, world!"
    assert httpx.get(f"http://127.0.0.1:{outside_port}/", timeout=5).text == "Hello, world!"
    transport = httpx.HTTPTransport(uds=path)
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get("http://localhost/").text == "Hello, world!"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert unix.family == socket.AF_UNIX and inherited.fileno() == fd


def test_host_port_uds_and_fd_still_work(run_server, tmp_path):
    server = run_server(hello, host="::1", port=0)
    assert server.sockets[0].family == socket.AF_INET6
    path = str(tmp_path / "u.sock")
    server = run_server(hello, uds=path)
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as client:
        assert client.get("http://localhost/").status_code == 200


def test_bind_failure_closes_what_was_bound(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    bind = Config.from_flat(bind=(f"unix:{tmp_path / 'a.sock'}", f"127.0.0.1:{port}")).bind
    with pytest.raises(ConfigError, match=f"cannot bind 127.0.0.1:{port}"):
        bind_all(bind, environ={})
    taken.close()


def test_default_is_host_and_port():
    sockets = bind_all(BindSettings(port=0), environ={})
    try:
        assert len(sockets) == 1 and sockets[0].getsockname()[0] == "127.0.0.1"
    finally:
        for sock in sockets:
            sock.close()


def test_systemd_variables_for_another_process_are_ignored_and_removed():
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "web"}
    assert systemd_sockets(environ) == []
    assert environ == {}


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_systemd_socket_activation(workers):
    """A parent binds the socket and starts tidegate with it as fd 3 and LISTEN_PID/LISTEN_FDS set, as systemd does:
    tidegate serves on it without binding anything itself."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    launcher = (
        "import os, sys\n"
        f"os.dup2({fd}, 3)\n"
        f"os.close({fd})\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'tidegate', 'tests.ops_apps:app', '--port', '1', "
        f"{', '.join(repr(w) for w in workers)}])\n"
    )
    proc = Proc([], argv0=[sys.executable, "-c", launcher], pass_fds=(fd,))
    try:
        proc.wait_for("socket activation")
        url = serving_url(proc)
        assert url == f"http://127.0.0.1:{port}"
        listener.close()  # only the server holds it now
        if workers:
            for _ in range(2):
                proc.wait_for(r"worker \d+ \(pid \d+\) ready")
        response = get(f"http://127.0.0.1:{port}/")
        assert (response.json()["pid"] == proc.pid) == (not workers)
    finally:
        code = proc.stop()
    assert code == 0, proc.output


def test_bind_on_the_command_line(tmp_path):
    path = tmp_path / "cli.sock"
    proc = Proc(["tests.ops_apps:app", "--bind", "127.0.0.1:0", "--bind", f"unix:{path}",
                 "--uds-permissions", "660"], cwd=ROOT)
    try:
        url = serving_url(proc)
        proc.wait_for(f"serving on unix:{path}")
        assert get(url + "/").status_code == 200
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "supervisor"])
def test_a_port_in_use_exits_with_its_own_code(workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Proc(["tidegate.demo:app", "--port", str(port), *workers])
        assert proc.wait() == 4  # EXIT_ADDRESS_IN_USE: a supervisor or orchestrator can tell it from a bad flag
        assert f"cannot bind 127.0.0.1:{port}: Address already in use" in proc.output
        assert "Traceback" not in proc.output

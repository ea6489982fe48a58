"""Real proxies (nginx, HAProxy) in front of real tidegate processes, for the topology tests.

The proxies' configurations are the files under ``docs/topologies/`` that docs/deployment.md shows: their
``@NAME@`` words are filled in here and the result is run as it is.  Every process is started and stopped by the
test, by its PID."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from .ops_helpers import ROOT, Proc, free_port, serving_url

TOPOLOGIES = ROOT / "docs" / "topologies"
WAIT = 20.0


def binary(name: str) -> str:
    """The Debian binary ``name`` (skips the test where it is not installed)."""
    found = shutil.which(name) or next((str(Path(d) / name) for d in ("/usr/sbin", "/sbin")
                                        if (Path(d) / name).is_file()), None)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/test installs Debian's package where apt-get is available)")
    return found


def render(name: str, **values: Any) -> str:
    """The topology file ``name`` with its ``@NAME@`` words filled in (each one must be given)."""
    text = (TOPOLOGIES / name).read_text()
    wanted = set(re.findall(r"@([A-Z_]+)@", text))
    assert wanted == set(values), f"{name} wants {sorted(wanted)}, given {sorted(values)}"
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def docs_show(name: str) -> bool:
    """Whether docs/deployment.md shows the topology file ``name`` verbatim in a code block."""
    text = (TOPOLOGIES / name).read_text().rstrip("\n")
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    return re.search(r"```[a-z]*\n" + re.escape(text) + r"\n```", deployment) is not None


class PKI:
    """A test CA and a certificate for localhost / 127.0.0.1, as files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert = directory / "chain.pem"
        self.key = directory / "key.pem"
        self.cafile = directory / "ca.pem"
        self.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))
        self.ca.cert_pem.write_to_path(str(self.cafile))

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cafile))
        if alpn:
            context.set_alpn_protocols(alpn)
        return context


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = WAIT) -> None:
    """Poll until 127.0.0.1:``port`` accepts a connection (failing if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before listening on {port}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listening on {port} within {timeout}s")
        time.sleep(0.05)


class Daemon:
    """A proxy run in the foreground as a child of the test; stopped by its PID."""

    def __init__(self, command: list[str], log: Path, cwd: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self._out.close()


@contextlib.contextmanager
def nginx(directory: Path, pki: PKI, apps: list[int]) -> Iterator[tuple[Daemon, int, int]]:
    """nginx from docs/topologies/nginx.conf in front of the instances on ``apps`` ports: (daemon, http port,
    https port)."""
    program = binary("nginx")
    prefix = directory / "nginx"
    prefix.mkdir()
    http_port, https_port = free_port(), free_port()
    config = prefix / "nginx.conf"
    config.write_text(render("nginx.conf", PREFIX=prefix, HTTP_PORT=http_port, HTTPS_PORT=https_port,
                             CERT=pki.cert, KEY=pki.key, APP_A=f"127.0.0.1:{apps[0]}",
                             APP_B=f"127.0.0.1:{apps[1]}"))
    # in the foreground, as the test's own user (a root test run keeps root: its temporary directory is private)
    extra = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    daemon = Daemon([program, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log"), "-g", extra],
                    prefix / "stdout.log", prefix)
    try:
        wait_for_port(http_port, daemon.proc)
        wait_for_port(https_port, daemon.proc)
        yield daemon, http_port, https_port
    finally:
        daemon.stop()


def tidegate(port: int, *args: str, app: str = "tests.topology_apps:app", env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> Proc:
    """A tidegate instance on ``port``, serving once this returns."""
    proc = Proc([app, "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "10", *args],
                env=env, cwd=cwd)
    try:
        serving_url(proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def established(port: int) -> int:
    """How many TCP connections to 127.0.0.1:``port`` are established (read from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if local == f"0100007F:{port:04X}" and state == "01":
            count += 1
    return count


def client(pki: PKI | None = None, *, http2: bool = False, source: str | None = None,
           timeout: float = WAIT) -> httpx.Client:
    """An httpx client (trusting the test CA), connecting from ``source`` when given."""
    verify: Any = pki.client_context() if pki is not None else True
    transport = httpx.HTTPTransport(http2=http2, verify=verify, local_address=source)
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)


@contextlib.contextmanager
def haproxy(directory: Path, apps: list[int]) -> Iterator[tuple[Daemon, int, Path]]:
    """HAProxy from docs/topologies/haproxy.cfg in front of the instances on ``apps`` ports: (daemon, port, its
    runtime socket)."""
    program = binary("haproxy")
    prefix = directory / "haproxy"
    prefix.mkdir()
    port = free_port()
    config = prefix / "haproxy.cfg"
    config.write_text(render("haproxy.cfg", PREFIX=prefix, PORT=port, APP_A=f"127.0.0.1:{apps[0]}",
                             APP_B=f"127.0.0.1:{apps[1]}"))
    daemon = Daemon([program, "-db", "-f", str(config)], prefix / "haproxy.log", prefix)
    try:
        wait_for_port(port, daemon.proc)
        yield daemon, port, prefix / "admin.sock"
    finally:
        daemon.stop()


def haproxy_servers(admin: Path) -> dict[str, str]:
    """Each server of the ``tidegate`` backend → its status as HAProxy's checks see it (``UP``, ``DOWN``...)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(admin))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {row["svname"]: row["status"] for row in rows
            if row.get("pxname") == "tidegate" and row["svname"] not in ("BACKEND", "FRONTEND")}

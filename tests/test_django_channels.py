"""Channels groups across processes: a Redis channel layer shared by several tidegate processes.

A real ``redis-server`` is started on a free loopback port with a temporary directory (``scripts/test`` installs
Debian's package when it is missing), then tidegate processes serving the Django example with
``REDIS_URL`` pointing at it.  A message sent to a chat room through any process reaches every member of the
room, whichever process its WebSocket is connected to.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .ops_helpers import Proc, free_port, serving_url
from .test_django import HAS_WEBSOCKET, coverage_env, start_tidegate

pytest.importorskip("channels_redis")
pytestmark = pytest.mark.skipif(not HAS_WEBSOCKET, reason="this build of tidegate does not serve WebSocket")

WAIT = 20.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test installs it where apt-get is available)")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    proc = Proc(["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"], argv0=[binary],
                cwd=directory)
    try:
        proc.wait_for(r"Ready to accept connections")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def project_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # anonymous WebSocket sessions never reach the database; the path only has to be writable
    return {"REDIS_URL": redis_url, "DJANGO_DB_PATH": str(tmp_path_factory.mktemp("db") / "db.sqlite3"),
            **coverage_env()}


class Client:
    """A WebSocket in a chat room; ``pid`` is the server process it is connected to."""

    def __init__(self, url: str, room: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(url.replace("http://", "ws://") + f"/ws/chat/{room}/", origin=url, open_timeout=WAIT))
        welcome = self.receive()
        assert welcome["type"] == "welcome"
        self.pid: int = welcome["pid"]

    def receive(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ws.recv(WAIT))
        return result

    def say(self, text: str) -> None:
        self.ws.send(json.dumps({"text": text}))

    def close(self) -> None:
        self._stack.close()


def check_broadcasts(clients: list[Client], other_room: Client) -> None:
    """Each client speaks in turn; every client of the room hears it, from whichever process; no one else."""
    for speaker in clients:
        text = f"hello from a client of process {speaker.pid}"
        speaker.say(text)
        for listener in clients:
            message = listener.receive()
            assert message == {"type": "message", "text": text, "sender_pid": speaker.pid, "pid": listener.pid}
    # the other room heard none of it: the first message it gets is its own
    other_room.say("elsewhere")
    assert other_room.receive()["text"] == "elsewhere"


def test_group_broadcast_reaches_clients_of_two_processes(project_env: dict[str, str]) -> None:
    servers = [start_tidegate(project_env, "mysite.asgi:application") for _ in range(2)]
    clients: list[Client] = []
    try:
        (one, one_url), (two, two_url) = servers
        clients = [Client(one_url, "lobby"), Client(two_url, "lobby"), Client(two_url, "lobby")]
        assert [c.pid for c in clients] == [one.pid, two.pid, two.pid]
        other_room = Client(one_url, "kitchen")
        clients_and_other = [*clients, other_room]
        check_broadcasts(clients, other_room)
        # a process that leaves does not stop the others from talking
        clients[0].close()
        del clients[0]
        check_broadcasts(clients, other_room)
        clients = clients_and_other
    finally:
        for client in clients:
            client.close()
        for proc, _ in servers:
            assert proc.stop() == 0, proc.output


def test_group_broadcast_across_worker_processes(project_env: dict[str, str]) -> None:
    """``--workers 2``: the kernel spreads connections over the workers; open them until both are reached."""
    proc = Proc(["--app-dir", str(Path(__file__).resolve().parent.parent / "examples" / "django"), "--port", "0",
                 "--workers", "2", "--timeout-graceful-shutdown", "2", "mysite.asgi:application"],
                env=project_env, cwd=Path(__file__).resolve().parent.parent / "examples" / "django")
    clients: list[Client] = []
    try:
        url = serving_url(proc)
        pids: set[int] = set()
        for _ in range(60):
            client = Client(url, "workers")
            clients.append(client)
            pids.add(client.pid)
            if len(pids) == 2:
                break
        assert len(pids) == 2, "every connection went to the same worker"
        assert proc.pid not in pids  # the supervisor serves nothing itself
        first = {client.pid: client for client in clients}
        other_room = Client(url, "workers-elsewhere")
        try:
            check_broadcasts(clients, other_room)
            assert set(first) == pids
        finally:
            other_room.close()
    finally:
        for client in clients:
            client.close()
        assert proc.stop() == 0, proc.output

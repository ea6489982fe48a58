"""systemd socket activation with the real ``systemd-socket-activate``: it binds two sockets, names them
(``LISTEN_FDNAMES``), and on the first connection starts the service with them (``LISTEN_FDS``, ``LISTEN_PID``).

The service here is what a systemd service unit amounts to: a loop that starts tidegate again each time it exits
(``Restart=always``), each run getting the same inherited sockets with ``LISTEN_PID`` set to its own PID.  The
listening sockets belong to the loop, so while tidegate restarts they stay open: connections wait in the backlog
and the next process accepts them; none is refused."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .ops_helpers import ROOT, Proc, free_port, wait_until
from .topology_helpers import WAIT, binary

RESTARTS = 3


@pytest.fixture
def activated(tmp_path: Path) -> Iterator[dict[str, Any]]:
    program = binary("systemd-socket-activate")
    bash = binary("bash")
    web, admin = free_port(), free_port()
    stop = tmp_path / "stop"
    tidegate = shlex.join([sys.executable, "-m", "tidegate", "tests.topology_apps:app",
                           "--timeout-graceful-shutdown", "5"])
    # Restart=always: a new tidegate, with the same sockets, each time one exits (until the stop file exists)
    service = f'while [ ! -e {shlex.quote(str(stop))} ]; do (LISTEN_PID=$BASHPID exec {tidegate}); done'
    proc = Proc(["-l", f"127.0.0.1:{web}", "-l", f"127.0.0.1:{admin}", "--fdname=web:admin",
                 "-E", "PYTHONPATH=" + str(ROOT), bash, "-c", service], argv0=[program], cwd=ROOT)
    state = {"proc": proc, "web": f"http://127.0.0.1:{web}", "admin": f"http://127.0.0.1:{admin}", "stop": stop}
    try:
        proc.wait_for(rf"Listening on 127\.0\.0\.1:{admin}")
        yield state
    finally:
        stop.touch()
        pid = state.get("pid")
        if isinstance(pid, int) and proc.proc.poll() is None:
            with _gone():
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except Exception:
            proc.kill()
            raise


class _gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is ProcessLookupError


def ask(url: str) -> int:
    response = httpx.get(url + "/", timeout=WAIT, trust_env=False, headers={"connection": "close"})
    assert response.status_code == 200
    return int(response.json()["pid"])


def test_the_first_connection_starts_tidegate_on_both_named_sockets(activated: dict[str, Any]) -> None:
    proc = activated["proc"]
    pid = ask(activated["web"])  # waits in the backlog while the service starts
    activated["pid"] = pid
    # systemd-socket-activate became the service loop (exec), whose child tidegate is
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent == proc.pid
    assert ask(activated["admin"]) == pid
    proc.wait_for(r"systemd sockets: web \(fd 3\), admin \(fd 4\)")
    proc.wait_for(r"using 2 socket\(s\) from systemd socket activation")


@pytest.mark.timeout(90)
def test_restarts_refuse_no_connection(activated: dict[str, Any]) -> None:
    proc = activated["proc"]
    activated["pid"] = pid = ask(activated["web"])
    failures: list[str] = []
    answers: list[int] = []
    done = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(timeout=WAIT, trust_env=False, headers={"connection": "close"}) as http:
            while not done.is_set():
                try:
                    response = http.get(url + "/")
                    assert response.status_code == 200, response.status_code
                    answers.append(response.json()["pid"])
                except Exception as exc:  # every failure is a finding: a refused connection above all
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load, args=(activated[name],)) for name in ("web", "admin", "web")]
    for thread in threads:
        thread.start()
    pids = [pid]
    try:
        for _ in range(RESTARTS):
            mark = len(answers)
            wait_until(lambda mark=mark: len(answers) > mark + 20, timeout=WAIT)
            start = proc.mark()
            os.kill(pids[-1], signal.SIGTERM)
            proc.wait_for(r"stopped", start=start)
            # the next process serves the same sockets
            proc.wait_for(r"using 2 socket\(s\) from systemd socket activation", start=start)
            wait_until(lambda: answers and answers[-1] != pids[-1], timeout=WAIT)
            pids.append(answers[-1])
            activated["pid"] = pids[-1]
        mark = len(answers)
        wait_until(lambda: len(answers) > mark + 20, timeout=WAIT)
    finally:
        done.set()
        for thread in threads:
            thread.join(WAIT)
    print(f"socket activation: {len(answers)} requests over {RESTARTS} restarts, {len(failures)} failed")
    assert not failures, failures[:5]
    assert len(set(pids)) == RESTARTS + 1
    assert proc.proc.poll() is None  # the sockets' holder never went away

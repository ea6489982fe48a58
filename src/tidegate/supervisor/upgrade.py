"""Binary upgrade: on SIGUSR2 the supervisor starts the next generation of itself on the same listening sockets.

The running supervisor (the old generation) starts its own command line again, with the Python, the arguments,
the directory and the environment it was started with (so new code, a new tidegate and the config file are read
afresh).  Its listening sockets, the metrics endpoint's and the write end of a pipe are passed as file
descriptors, named in ``TIDEGATE_INHERIT_FDS`` (``listen:5,listen:6,metrics:7,ready:8``) for the process whose
parent is ``TIDEGATE_INHERIT_PID`` (as systemd's ``LISTEN_FDS`` is for ``LISTEN_PID``).

The new supervisor adopts those sockets instead of binding (the kernel queues connections on them the whole time,
so none is refused), starts its workers, and once every one of them is ready writes ``ready`` on the pipe.  The
old supervisor then stops as on SIGTERM: its workers stop accepting, finish the requests in flight and exit.  The
``--pid`` file names the new supervisor from its start; should it exit before it is ready, the old one logs it,
writes its own pid back to the file, and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
from collections.abc import Callable, MutableMapping

from ..config import ConfigError
from ..startup import command, directory, environment

__all__ = ["INHERIT_FDS", "INHERIT_PID", "Inheritance", "Successor", "announce_ready", "take_inheritance"]

INHERIT_FDS = "TIDEGATE_INHERIT_FDS"
INHERIT_PID = "TIDEGATE_INHERIT_PID"


@dataclasses.dataclass
class Inheritance:
    """What the new generation takes over from the old one."""

    parent: int
    listeners: list[socket.socket]
    metrics: socket.socket | None
    ready: int  # the write end of the pipe the old generation waits on


def take_inheritance(environ: MutableMapping[str, str] | None = None) -> Inheritance | None:
    """The sockets handed over by the previous generation, if this process is the one they were meant for.

    The variables are removed once read, so the workers and later generations do not take them for their own."""
    environ = os.environ if environ is None else environ
    text, parent = environ.pop(INHERIT_FDS, None), environ.pop(INHERIT_PID, None)
    if text is None or parent is None or not parent.isdigit() or int(parent) != os.getppid():
        return None
    listeners: list[socket.socket] = []
    metrics: socket.socket | None = None
    ready: int | None = None
    try:
        for entry in text.split(","):
            name, _, number = entry.partition(":")
            if not number.isdigit() or name not in ("listen", "metrics", "ready"):
                raise ConfigError(f"{INHERIT_FDS}: {entry!r} is not listen:FD, metrics:FD or ready:FD")
            fd = int(number)
            if name == "ready":
                os.set_inheritable(fd, False)
                ready = fd
                continue
            sock = _adopt(fd)
            if name == "listen":
                listeners.append(sock)
            else:
                metrics = sock
        if ready is None or not listeners:
            raise ConfigError(f"{INHERIT_FDS}: no listener or no ready:FD in {text!r}")
    except BaseException:
        for sock in (*listeners, *([metrics] if metrics is not None else [])):
            sock.close()
        raise
    return Inheritance(int(parent), listeners, metrics, ready)


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"{INHERIT_FDS}: fd {fd}: {exc.strerror}") from None
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock


def announce_ready(fd: int) -> None:
    """Tell the old generation that this one serves (it may be gone already: nothing to tell then)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
    with contextlib.suppress(OSError):
        os.close(fd)


class Successor:
    """The old generation's view of the new one it started: ``on_ready`` once every new worker is ready,
    ``on_exit(code)`` when the new supervisor exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listeners: list[socket.socket],
                 metrics: socket.socket | None, on_ready: Callable[[], None],
                 on_exit: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.ready = False
        self.code: int | None = None
        self._pidfd: int | None = None
        read_fd, write_fd = os.pipe()
        names = [*(("listen", s.fileno()) for s in listeners),
                 *([("metrics", metrics.fileno())] if metrics is not None else []), ("ready", write_fd)]
        env = environment()
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):  # systemd's sockets, if any, are passed as ours
            env.pop(name, None)
        env[INHERIT_FDS] = ",".join(f"{name}:{fd}" for name, fd in names)
        env[INHERIT_PID] = str(os.getpid())
        try:
            self.process = subprocess.Popen(command(), cwd=directory(), env=env,
                                            pass_fds=[fd for _, fd in names])
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.pid = self.process.pid
        self._pipe: int | None = read_fd
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, self._readable)
        self._watch_exit()

    def _readable(self) -> None:
        assert self._pipe is not None
        try:
            data = os.read(self._pipe, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data.startswith(b"ready") and not self.ready:
            self.ready = True
            self._close_pipe()
            self.on_ready()
        elif not data:
            self._close_pipe()  # the new supervisor has exited (or is exiting): its exit says how

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # pragma: no cover - no pidfd (not Linux, or an old kernel)
            def wait() -> None:
                code = self.process.wait()
                self.loop.call_soon_threadsafe(self._exited, code)

            self.loop.run_in_executor(None, wait)
            return
        self.loop.add_reader(self._pidfd, self._pidfd_readable)

    def _pidfd_readable(self) -> None:
        self._close_pidfd()
        self._exited(self.process.wait())

    def _exited(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self._close_pipe()
            self.on_exit(code)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self.loop.remove_reader(self._pipe)
            os.close(self._pipe)
            self._pipe = None

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Stop watching (this generation is stopping); the new one runs on."""
        self._close_pipe()
        self._close_pidfd()

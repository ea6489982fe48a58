"""How this process was started (command line, directory, environment) and its ``--pid`` file: what a binary
upgrade needs to start the same server again and hand the pid file over to it."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

__all__ = ["command", "directory", "environment", "reclaim_pid_file", "remember_start", "write_pid_file"]

_start: tuple[str, dict[str, str]] | None = None
_pid_file: str | None = None


def _here() -> str:
    """The working directory, named as the shell named it (``$PWD``) when that is the same directory: a
    deployment that flips a symlink (``/srv/app/current``) then starts the next generation in the new release."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd):
        with contextlib.suppress(OSError):
            if os.path.samefile(pwd, cwd):
                return pwd
    return cwd


def remember_start() -> None:
    """Note the directory and the environment as they are before ``--chdir`` and ``--env-file`` change them."""
    global _start
    if _start is None:
        with contextlib.suppress(OSError):
            _start = (_here(), dict(os.environ))


def command() -> list[str]:
    """This process's command line: the same Python, with the same options and arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


def directory() -> str:
    """The directory this process was started in."""
    return _start[0] if _start is not None else _here()


def environment() -> dict[str, str]:
    """The environment this process was started with."""
    return dict(_start[1] if _start is not None else os.environ)


def _write(path: str, pid: int) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(f"{pid}\n")


def _remove(path: str, pid: int) -> None:
    if os.getpid() != pid:
        return
    try:
        with open(path, encoding="ascii") as file:
            named = file.read().strip()
    except (OSError, ValueError):
        return
    if named == str(pid):  # else the next generation has taken the file over
        with contextlib.suppress(OSError):
            os.unlink(path)


def write_pid_file(path: str) -> None:
    """Write this process's id to ``path`` (an OSError if it cannot); the file is removed when this process exits,
    unless it names another process by then (the next generation, after a binary upgrade)."""
    global _pid_file
    full = os.path.abspath(path)
    _write(full, os.getpid())
    _pid_file = full
    atexit.register(_remove, full, os.getpid())


def reclaim_pid_file() -> str | None:
    """Write this process's id to its pid file again (the next generation wrote its own, then failed to start);
    the file's path, or None without one (or if it cannot be written)."""
    if _pid_file is None:
        return None
    try:
        _write(_pid_file, os.getpid())
    except OSError:
        return None
    return _pid_file

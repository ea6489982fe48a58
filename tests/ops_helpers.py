"""Run ``python -m tidegate`` as a real process and follow its log."""

from __future__ import annotations

import os
import re
import signal as signals
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# no setting from the environment; the choice of build (the suite also runs on the pure modules) is kept
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if (not k.startswith(("TIDEGATE_", "LISTEN_")) or k == "TIDEGATE_NO_EXTENSIONS")
             and k not in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")}
TIMEOUT = 20.0


class Proc:
    """A tidegate process; its stderr lines are collected as they come."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | str = ROOT,
                 argv0: list[str] | None = None, **popen: Any) -> None:
        command = (argv0 or [sys.executable, "-m", "tidegate"]) + args
        self.proc = subprocess.Popen(command, cwd=cwd, env={**CLEAN_ENV, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, **popen)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, *, start: int = 0, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first log line from index ``start`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._seen:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    index += 1
                    if match:
                        return match
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"process exited ({self.proc.returncode}) before {pattern!r}:\n"
                                         + self.output_unlocked())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.output_unlocked())
                self._seen.wait(min(remaining, 0.5))

    def output_unlocked(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        with self._seen:
            return len(self.lines)

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._seen:
            return sum(1 for line in self.lines if regex.search(line))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def stop(self, sig: int = signals.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(timeout)
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait(TIMEOUT)


def serving_url(proc: Proc, *, start: int = 0) -> str:
    match = proc.wait_for(r"(?:serving|listening) on (http://\S+)", start=start)
    return match.group(1)


def get(url: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 10)
    headers = {"connection": "close", **kwargs.pop("headers", {})}
    return httpx.get(url, headers=headers, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.05) -> Any:
    """Poll ``predicate`` (a condition in another process) until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)

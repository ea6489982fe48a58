"""The blocked-loop detector (``--warn-blocking SECONDS``).

A blocking call inside async code (``time.sleep``, a synchronous database driver, heavy CPU work) stalls every
connection the event loop serves.  This module notices it and says where it happened:

- on the loop, a heartbeat: a ``call_later`` callback that stores the time it ran and re-arms itself.  That is all
  the loop pays (a few callbacks a second); requests pay nothing.
- on a daemon thread, the watchdog sleeps until the next heartbeat is overdue by the threshold.  If it did not
  run by then, the loop is stuck: the watchdog takes the loop thread's stack (``sys._current_frames()``), finds
  the request being handled in it (the ``self`` of the exchange's ``run`` frame) and logs one warning per
  incident with the request line, the application frames where the loop is stuck and how to fix it.

When the setting is off nothing is installed: no thread, no timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..asgi.http import escape_log

__all__ = ["Watchdog"]

logger = logging.getLogger("tidegate.error")

_TIDEGATE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ASGI_DIR = os.path.join(_TIDEGATE_DIR, "asgi") + os.sep
_LIFESPAN_FILE = os.path.join(_TIDEGATE_DIR, "runtime", "lifespan.py")
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_STDLIB_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")})
_LIBRARY_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep for key in ("purelib", "platlib")})

#: application frames shown in a report, innermost last
STACK_LIMIT = 12

HINT = ("Blocking calls inside async code stall every request this process serves. Run them off the event loop: "
        "`await asyncio.to_thread(func, ...)`, `await loop.run_in_executor(None, func, ...)`, or in Django "
        "`await sync_to_async(func)(...)`; or make the view synchronous.")


def _is_internal(filename: str) -> bool:
    """Frames of the server and of asyncio itself: never the place to fix a blocking call."""
    return (filename.startswith((_TIDEGATE_DIR, _ASYNCIO_DIR)) and not filename.endswith("demo.py")) \
        or "uvloop" in filename or filename.startswith("<frozen")


def _is_library(filename: str) -> bool:
    """Installed packages and the standard library: the user's code is elsewhere."""
    return (filename.startswith(_STDLIB_DIRS + _LIBRARY_DIRS) or "site-packages" in filename
            or "dist-packages" in filename or filename.startswith("<"))


def describe_scope(scope: Any) -> str | None:
    if not isinstance(scope, dict):
        return None
    kind = scope.get("type")
    path = scope.get("path", "")
    query = scope.get("query_string", b"")
    target = path + ("?" + query.decode("latin-1") if query else "")
    if kind == "http":
        text = f"{scope.get('method', '?')} {target}"
    elif kind == "websocket":
        text = f"WebSocket {target}"
    else:
        return None
    client = scope.get("client")
    if client:
        text += f" from {client[0]}:{client[1]}"
    return escape_log(text)


def _scope_in_frame(frame: FrameType) -> str | None:
    """A request scope an application frame holds: a ``scope`` local, or the ``scope`` of ``request``/``self``.

    Attributes are read from the instance dict only, so no property or ``__getattr__`` of the app runs here.
    """
    names = frame.f_locals
    described = describe_scope(names.get("scope"))
    if described is not None:
        return described
    for name in ("request", "self"):
        try:
            attributes = object.__getattribute__(names.get(name), "__dict__")
        except AttributeError:
            continue
        if isinstance(attributes, dict):
            described = describe_scope(attributes.get("scope"))
            if described is not None:
                return described
    return None


def analyse(frame: FrameType | None) -> tuple[str, list[FrameType]]:
    """The loop thread's innermost frame → (what it is handling, the application frames outermost first).

    The request is the one whose exchange is running (its ``run`` frame is on the stack).  An app that handles
    each request in a task of its own (Django does) leaves no exchange frame under it: then the innermost
    application frame that holds a scope names it.
    """
    chain: list[FrameType] = []
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    chain.reverse()
    handling = None
    app_start = 0
    for index, f in enumerate(chain):
        code = f.f_code
        if code.co_name == "run" and code.co_filename.startswith(_ASGI_DIR):
            described = describe_scope(getattr(f.f_locals.get("self"), "scope", None))
            if described is not None:
                handling = "while handling " + described
                app_start = index + 1
        elif code.co_name == "_main" and code.co_filename == _LIFESPAN_FILE:
            handling = "during the application's lifespan"
            app_start = index + 1
    app_frames = [f for f in chain[app_start:] if not _is_internal(f.f_code.co_filename)]
    if handling is None:
        for f in reversed(app_frames):
            described = _scope_in_frame(f)
            if described is not None:
                handling = "while handling " + described
                break
    return handling or "outside any request", app_frames


class Watchdog:
    """Watch the running loop of the thread that calls :meth:`start`; warn when it stalls for ``threshold`` s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        self.threshold = threshold
        #: the heartbeat's period: a fraction of the threshold, so a stall is seen soon after it crosses it
        self.period = min(max(threshold / 4.0, 0.005), 1.0)
        self._clock = clock
        self.last_beat = clock()
        self._handle: asyncio.TimerHandle | None = None
        self._reported: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread = threading.get_ident()
        #: incidents reported so far
        self.incidents = 0

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="tidegate-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _beat(self) -> None:
        self.last_beat = self._clock()
        self._handle = self.loop.call_later(self.period, self._beat)

    # ------------------------------------------------------------------ the watching thread

    def _watch(self) -> None:
        while True:
            delay = self.check(self._clock())
            if self._stop.wait(delay):
                return

    def check(self, now: float) -> float:
        """Report a stall if the heartbeat is overdue by the threshold; return how long to wait before next."""
        beat = self.last_beat
        late = now - beat - self.period
        if late < self.threshold:
            if self._reported is not None and beat != self._reported:
                logger.debug("the event loop runs again (it was blocked for about %.2fs)",
                             beat - self._reported - self.period)
                self._reported = None
            return self.threshold - late
        if self._reported != beat:
            self._reported = beat
            self.incidents += 1
            self.report(late)
        return self.period

    def report(self, blocked_for: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        handling, frames = analyse(frame)
        del frame
        lines = [f"The event loop has been blocked for {blocked_for:.2f}s (--warn-blocking {self.threshold:g}) "
                 f"{handling}."]
        if frames:
            user = next((f for f in reversed(frames) if not _is_library(f.f_code.co_filename)), frames[-1])
            lines.append(f"Stuck in {user.f_code.co_name}() at {user.f_code.co_filename}:{user.f_lineno}")
            summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in frames[-STACK_LIMIT:]),
                                                     capture_locals=False)
            lines.append("Application stack (most recent call last):")
            lines.append("".join(summary.format()).rstrip("\n"))
        else:
            lines.append("No application frame is on the loop's stack (the loop is stuck in the server or in a "
                         "library callback).")
        lines.append(HINT)
        frames.clear()
        logger.warning("%s", "\n".join(lines))

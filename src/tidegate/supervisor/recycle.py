"""A worker's memory and age limits: ``--workers-max-rss`` and ``--workers-lifetime``.

The worker watches itself: its resident memory is read from ``/proc/self/statm`` every :data:`RSS_INTERVAL`
seconds (one small read, on a timer of the event loop; where there is no ``/proc`` the limit is logged as not
applied), and its lifetime is one timer, lengthened by up to a tenth at random so that workers started together do
not all retire together.  Past either limit the worker retires as it does after ``--max-requests``: it tells the
supervisor (which starts its replacement), stops taking connections and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable

from ..config import WorkerSettings

__all__ = ["RSS_INTERVAL", "Recycler", "jittered", "read_rss", "rss_from_statm"]

logger = logging.getLogger("tidegate.error")

#: seconds between two readings of the worker's resident memory
RSS_INTERVAL = 1.0
#: the largest share of --workers-lifetime added at random
LIFETIME_JITTER = 0.1
MIB = 1024 * 1024


def rss_from_statm(text: str, page_size: int) -> int:
    """Resident memory in bytes from the text of ``/proc/<pid>/statm`` (sizes in pages: total, resident, ...)."""
    return int(text.split()[1]) * page_size


def read_rss() -> int | None:
    """This process's resident memory in bytes; None where ``/proc`` cannot tell."""
    try:
        with open("/proc/self/statm", "rb") as file:
            text = file.read().decode("ascii")
        return rss_from_statm(text, os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def jittered(lifetime: float, draw: float) -> float:
    """``lifetime`` lengthened by up to a tenth: ``draw`` is a random number in [0, 1)."""
    return lifetime * (1.0 + LIFETIME_JITTER * draw)


class Recycler:
    """Calls ``retire(reason)`` once, when the worker's memory or age passes its limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: WorkerSettings, retire: Callable[[str], None], *,
                 rss: Callable[[], int | None] = read_rss, draw: Callable[[], float] = random.random) -> None:
        self.loop = loop
        self.max_rss = settings.workers_max_rss * MIB if settings.workers_max_rss else 0
        self.lifetime = jittered(settings.workers_lifetime, draw()) if settings.workers_lifetime else 0.0
        self._retire = retire
        self._rss = rss
        self._age_timer: asyncio.TimerHandle | None = None
        self._rss_timer: asyncio.TimerHandle | None = None
        self.done = False

    def start(self) -> None:
        if self.lifetime:
            self._age_timer = self.loop.call_later(self.lifetime, self._aged)
        if self.max_rss:
            if self._rss() is None:
                logger.warning("worker %d: cannot read its memory use (no /proc/self/statm): --workers-max-rss "
                               "is not applied", os.getpid())
            else:
                self._check_rss()

    def stop(self) -> None:
        self.done = True
        for timer in (self._age_timer, self._rss_timer):
            if timer is not None:
                timer.cancel()
        self._age_timer = self._rss_timer = None

    def _aged(self) -> None:
        self._fire(f"served {self.lifetime:.1f}s (--workers-lifetime)")

    def _check_rss(self) -> None:
        if self.done:
            return
        rss = self._rss()
        if rss is not None and rss > self.max_rss:
            self._fire(f"memory {rss / MIB:.0f} MiB over --workers-max-rss {self.max_rss // MIB} MiB")
            return
        self._rss_timer = self.loop.call_later(RSS_INTERVAL, self._check_rss)

    def _fire(self, reason: str) -> None:
        if not self.done:
            self.stop()
            self._retire(reason)

"""Worker processes under a supervising parent: bind once, spawn, health-check, respawn, roll, reload.

The parent (:mod:`.parent`) binds every listener, starts worker processes (:mod:`.worker`) that inherit them, and
talks to each over a private socket pair (:mod:`.channel`): the worker says when it is ready, answers health
checks and reports its metrics.
"""

from __future__ import annotations

from .parent import supervise

__all__ = ["supervise"]

"""ASGI 2 apps (``App(scope)`` returning a coroutine callable ``instance(receive, send)``), served as ASGI 3."""

from __future__ import annotations

import inspect
from typing import Any

from .wsgi import positional_parameters

__all__ = ["ASGI2Middleware", "is_asgi2_app"]


def is_asgi2_app(app: Any) -> bool:
    """True if ``app`` looks like an ASGI 2 application: called with the scope alone, and not a coroutine function
    (a class whose instances are the per-connection callables, or a function returning one)."""
    if inspect.isbuiltin(app):
        return False
    shape = positional_parameters(app)
    return shape is not None and shape[1] == 1


class ASGI2Middleware:
    """Serve an ASGI 2 app as ASGI 3: make its instance for the scope, then run it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        instance = self.app(scope)
        await instance(receive, send)

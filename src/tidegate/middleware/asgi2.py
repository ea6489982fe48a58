"""ASGI 2 apps (``App(scope)`` returning a coroutine callable ``instance(receive, send)``), served as ASGI 3."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["ASGI2Middleware", "is_asgi2_app"]


def is_asgi2_app(app: Any) -> bool:
    """True if ``app`` looks like an ASGI 2 application: called with the scope alone, and not a coroutine function
    (a class whose instances are the per-connection callables, or a function returning one)."""
    if not callable(app) or inspect.iscoroutinefunction(app) or inspect.isbuiltin(app):
        return False
    plain = inspect.isclass(app) or inspect.isfunction(app) or inspect.ismethod(app)
    if not plain and inspect.iscoroutinefunction(type(app).__call__):
        return False
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return False
    positional = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return False
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and param.default is param.empty:
            positional += 1
    return positional == 1


class ASGI2Middleware:
    """Serve an ASGI 2 app as ASGI 3: make its instance for the scope, then run it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        instance = self.app(scope)
        await instance(receive, send)

"""The ASGI lifespan protocol (asgiref lifespan.rst): startup before serving, shutdown on every exit path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..asgi.http import ASGIApp, Message

__all__ = ["Lifespan", "LifespanFailure"]

logger = logging.getLogger("tidegate.error")

_STARTUP_TYPES = ("lifespan.startup.complete", "lifespan.startup.failed")
_SHUTDOWN_TYPES = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class LifespanFailure(Exception):
    """Startup (or, with ``lifespan=on``, shutdown) failed; the message is the app's."""


class Lifespan:
    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done: asyncio.Future[Message] | None = None
        self._shutdown_done: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._received = False
        self._started = False

    async def startup(self) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup_done = loop.create_future()
        self._shutdown_done = loop.create_future()
        self._task = loop.create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._startup_done
        if message["type"] == "lifespan.startup.failed":
            raise LifespanFailure(message.get("message") or "the application's lifespan startup failed")
        if message["type"] == "error":
            raise LifespanFailure(message["message"])
        self._started = message["type"] == "lifespan.startup.complete"

    async def shutdown(self) -> None:
        if not self._started or self._task is None or self._shutdown_done is None:
            return
        self._started = False
        await self._inbox.put({"type": "lifespan.shutdown"})
        message = await self._shutdown_done
        if message["type"] == "lifespan.shutdown.failed":
            logger.error("lifespan shutdown failed: %s", message.get("message", ""))
        elif message["type"] == "error":
            logger.error("lifespan shutdown failed: %s", message["message"])

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            assert self._startup_done is not None and self._shutdown_done is not None
            if not self._startup_done.done():
                if self.mode == "auto" and not self._received:
                    logger.info("ASGI lifespan not supported by the application (%s: %s); running without it",
                                type(exc).__name__, exc)
                    self._startup_done.set_result({"type": "unsupported"})
                    return
                logger.error("Exception in the application's lifespan startup", exc_info=exc)
                self._startup_done.set_result({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
            elif not self._shutdown_done.done():
                logger.error("Exception in the application's lifespan", exc_info=exc)
                self._shutdown_done.set_result({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            assert self._startup_done is not None and self._shutdown_done is not None
            if not self._startup_done.done():
                if self.mode == "on":
                    self._startup_done.set_result(
                        {"type": "error", "message": "the application returned from lifespan before startup"})
                else:
                    self._startup_done.set_result({"type": "unsupported"})
            elif not self._shutdown_done.done():
                self._shutdown_done.set_result({"type": "lifespan.shutdown.complete"})

    async def _receive(self) -> Message:
        message = await self._inbox.get()
        self._received = True
        return message

    async def _send(self, message: Message) -> None:
        assert self._startup_done is not None and self._shutdown_done is not None
        kind = message.get("type")
        if kind in _STARTUP_TYPES:
            if self._startup_done.done():
                raise RuntimeError(f"{kind!r} sent twice or out of order")
            self._startup_done.set_result(message)
        elif kind in _SHUTDOWN_TYPES:
            if self._shutdown_done.done() or not self._startup_done.done():
                raise RuntimeError(f"{kind!r} sent out of order")
            self._shutdown_done.set_result(message)
        else:
            raise RuntimeError(f"unknown lifespan message type {kind!r}")

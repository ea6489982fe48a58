"""Errors the ASGI layer raises into the application."""

from __future__ import annotations

__all__ = ["ASGIError", "ClientDisconnected"]


class ASGIError(RuntimeError):
    """The application sent a message that is invalid or out of order; the text names the field."""


class ClientDisconnected(OSError):
    """``send()`` was called after the client went away (ASGI spec 2.4: an ``OSError`` subclass)."""

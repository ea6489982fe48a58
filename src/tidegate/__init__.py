"""tidegate: a production ASGI server."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, ConfigError
from .launch import run
from .runtime.server import serve

__all__ = ["Config", "ConfigError", "__version__", "run", "serve"]

"""tidegate: a production ASGI server."""

from __future__ import annotations

__version__ = "0.1.0"

from ._build import BUILD  # first: it decides between the compiled and the pure modules before either is imported
from .config import Config, ConfigError
from .launch import run
from .runtime.server import serve

__all__ = ["BUILD", "Config", "ConfigError", "__version__", "run", "serve"]

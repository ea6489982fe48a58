"""Which build of tidegate runs: its hot path compiled with mypyc, or pure Python.

``pip install`` compiles the modules in :data:`COMPILED` with mypyc where a C compiler is at hand (see ``setup.py``);
the same modules stay beside the compiled ones as Python source, the reference and the fallback.  Python imports a
compiled module before its source, so tidegate decides here, once and before any of them is imported, which of the
two it runs: all compiled, or all pure (the compiled modules call each other directly, so a mix cannot run).

``TIDEGATE_NO_EXTENSIONS=1`` in the environment chooses pure Python (as ``AIOHTTP_NO_EXTENSIONS`` does for aiohttp):
at install time nothing is compiled, at run time the compiled modules are left unused.  In a source checkout,
compiled modules older than their sources are left unused too, so that an edit is never shadowed by a stale build.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# the hot path: the HTTP/1.1, HTTP/2 and WebSocket protocol cores, the ASGI exchanges and their drivers
COMPILED = (
    "protocol/events.py",
    "protocol/http1.py",
    "protocol/http2.py",
    "protocol/websocket.py",
    "asgi/awaiting.py",
    "asgi/scope.py",
    "asgi/http.py",
    "asgi/websocket.py",
    "runtime/writes.py",
    "runtime/context.py",
    "runtime/websocket.py",
    "runtime/h1.py",
    "runtime/h2.py",
    "runtime/ws.py",
)

NO_EXTENSIONS = "TIDEGATE_NO_EXTENSIONS"

_HERE = Path(__file__).resolve().parent


def _module_name(path: str) -> str:
    return "tidegate." + path[: -len(".py")].replace("/", ".")


def _extension(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


class _SourceFirst:
    """A meta path finder that loads the compiled modules from their Python source."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        source = self._sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _decide() -> str:
    sources = {_module_name(path): _HERE / path for path in COMPILED}
    extensions = {name: _extension(source) for name, source in sources.items()}
    present = [ext for ext in extensions.values() if ext is not None]
    if not present:
        return "pure Python (not compiled: no C compiler or mypyc when it was installed, or "\
               f"{NO_EXTENSIONS} was set)"
    if os.environ.get(NO_EXTENSIONS, "") not in ("", "0"):
        reason = f"pure Python ({NO_EXTENSIONS} is set)"
    elif len(present) < len(sources):
        reason = "pure Python (some compiled modules are missing)"
    elif (_HERE.parent.parent / "pyproject.toml").exists() and any(
            ext is not None and ext.stat().st_mtime < sources[name].stat().st_mtime
            for name, ext in extensions.items()):
        reason = "pure Python (the compiled modules are older than their sources: reinstall to compile them again)"
    else:
        return "compiled with mypyc"
    if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(sources))
    return reason


#: What runs, as ``tidegate --version`` says it: "compiled with mypyc", or "pure Python (why)".
BUILD = _decide()
COMPILED_BUILD = BUILD == "compiled with mypyc"

"""Watch source files for ``--reload`` (development), with watchfiles (``pip install tidegate[reload]``)."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ..config import ConfigError, ReloadSettings

__all__ = ["DEFAULT_EXCLUDES", "DEFAULT_INCLUDES", "FileFilter", "Watcher"]

logger = logging.getLogger("tidegate.error")

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", "__pycache__", "*.pyc", "*~", ".venv", "venv", "node_modules")


class FileFilter:
    """A path is watched when its name matches an include glob and no part of it matches an exclude glob."""

    def __init__(self, includes: Iterable[str], excludes: Iterable[str], roots: Iterable[str] = ()) -> None:
        self.includes = tuple(includes) or DEFAULT_INCLUDES
        self.excludes = tuple(excludes) or DEFAULT_EXCLUDES
        self.roots = tuple(roots)

    def __call__(self, change: object, path: str) -> bool:
        # judge the part of the path below the watched directory (which may itself sit in a hidden one)
        parts = Path(path).parts
        for root in self.roots:
            if path.startswith(root.rstrip(os.sep) + os.sep):
                parts = Path(os.path.relpath(path, root)).parts
                break
        for pattern in self.excludes:
            if fnmatch.fnmatch(path, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts):
                return False
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern) for pattern in self.includes)


class Watcher:
    """Calls ``on_change(paths)`` from a thread after each batch of changes."""

    def __init__(self, settings: ReloadSettings, on_change: Callable[[list[str]], None]) -> None:
        try:
            import watchfiles
        except ImportError:
            raise ConfigError("--reload needs watchfiles: pip install 'tidegate[reload]'") from None
        self._watchfiles = watchfiles
        self.dirs = [os.path.abspath(d) for d in settings.reload_dirs] or [os.getcwd()]
        for directory in self.dirs:
            if not os.path.isdir(directory):
                raise ConfigError(f"reload_dirs: {directory!r} is not a directory")
        self.filter = FileFilter(settings.reload_includes, settings.reload_excludes, self.dirs)
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tidegate-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for changes in self._watchfiles.watch(*self.dirs, watch_filter=self.filter, stop_event=self._stop,
                                              debounce=300, step=50, raise_interrupt=False):
            self.on_change(sorted({path for _, path in changes}))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

"""Watch source files for ``--reload`` (development): with watchfiles (``pip install tidegate[reload]``), else by
polling every ``--reload-delay``."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError, ReloadSettings

__all__ = ["DEFAULT_EXCLUDES", "DEFAULT_INCLUDES", "FileFilter", "Watcher"]

logger = logging.getLogger("tidegate.error")

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", "__pycache__", "*.pyc", "*~", ".venv", "venv", "node_modules")


class FileFilter:
    """A path is watched when its name matches an include glob and no part of it matches an exclude glob.  The globs
    given add to the defaults."""

    def __init__(self, includes: Iterable[str], excludes: Iterable[str], roots: Iterable[str] = ()) -> None:
        self.includes = DEFAULT_INCLUDES + tuple(i for i in includes if i not in DEFAULT_INCLUDES)
        self.excludes = DEFAULT_EXCLUDES + tuple(e for e in excludes if e not in DEFAULT_EXCLUDES)
        self.roots = tuple(roots)

    def excluded_dir(self, name: str) -> bool:
        """Whether a directory of this name is never entered."""
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.excludes)

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
        watchfiles: Any = None
        try:
            import watchfiles
        except ImportError:
            logger.warning("watchfiles is not installed: watching for changes by polling every %.2fs "
                           "(pip install 'tidegate[reload]' for a watcher that does not poll)", settings.reload_delay)
        self._watchfiles = watchfiles
        self.delay = settings.reload_delay
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
        if self._watchfiles is None:
            self._poll()
            return
        for changes in self._watchfiles.watch(*self.dirs, watch_filter=self.filter, stop_event=self._stop,
                                              debounce=max(int(self.delay * 1000), 1), step=50,
                                              raise_interrupt=False):
            self.on_change(sorted({path for _, path in changes}))

    def _files(self) -> Iterator[tuple[str, float]]:
        for root in self.dirs:
            for directory, subdirs, names in os.walk(root):
                subdirs[:] = [d for d in subdirs if not self.filter.excluded_dir(d)]
                for name in names:
                    path = os.path.join(directory, name)
                    if self.filter(None, path):
                        try:
                            yield path, os.stat(path).st_mtime
                        except OSError:
                            continue  # gone meanwhile

    def _poll(self) -> None:
        seen = dict(self._files())
        while not self._stop.wait(self.delay):
            now = dict(self._files())
            changed = sorted({p for p, mtime in now.items() if seen.get(p) != mtime} | (seen.keys() - now.keys()))
            seen = now
            if changed:
                self.on_change(changed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

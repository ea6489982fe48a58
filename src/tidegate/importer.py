"""Import the application named on the command line."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["AppImportError", "import_app"]


class AppImportError(Exception):
    """The app path names no module, no attribute or nothing callable; the message says which."""


def import_app(spec: str, *, app_dir: str = ".", factory: bool = False) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted); call it first if ``factory``."""
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise AppImportError(f"the app must be given as 'module:attribute', not {spec!r}")
    if attrs.endswith("()"):
        raise AppImportError(f"{spec!r} calls a factory: give {module_name}:{attrs[:-2]} with --factory, and "
                             "tidegate calls it")
    if module_name.endswith(".py"):
        dotted = module_name[:-3].replace("/", ".").replace(os.sep, ".").lstrip(".")
        raise AppImportError(f"{spec!r} names a file: give the module, {dotted}:{attrs} (and --app-dir for the "
                             "directory it is in)")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppImportError(f"could not import module {module_name!r} (looked in {directory} and on "
                                 "sys.path)") from None
        raise  # a module the user's code imports is missing: that traceback is theirs to see
    app: Any = module
    for attr in attrs.split("."):
        try:
            app = getattr(app, attr)
        except AttributeError:
            raise AppImportError(f"attribute {attrs!r} not found in module {module_name!r}") from None
    if factory:
        if not callable(app):
            raise AppImportError(f"{spec!r} is not callable, so it cannot be a factory")
        app = app()
    if not callable(app):
        raise AppImportError(f"{spec!r} is not callable" + (" (returned by the factory)" if factory else ""))
    return app

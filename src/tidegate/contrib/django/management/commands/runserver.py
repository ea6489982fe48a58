"""``manage.py runserver`` through tidegate.

It keeps Django's runserver interface (address and port, ``--ipv6``, ``--noreload``, and with
``django.contrib.staticfiles`` installed ``--nostatic`` and ``--insecure``), its system checks, migration
warning and autoreloader, and serves the project's ASGI application with tidegate instead of the WSGI
development server.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import CommandError
from django.db import connections
from django.utils import autoreload
from django.utils.module_loading import import_string

from tidegate.config import ConfigError
from tidegate.runner import run_config
from tidegate.sources import resolve

if apps.is_installed("django.contrib.staticfiles"):
    from django.contrib.staticfiles.management.commands.runserver import Command as BaseCommand
else:  # pragma: no cover - the example project installs staticfiles
    from django.core.management.commands.runserver import Command as BaseCommand

__all__ = ["Command", "get_asgi_application"]


def get_asgi_application() -> Any:
    """The project's ASGI app: ``settings.ASGI_APPLICATION`` (a dotted path) if set, else Django's handler."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        try:
            return import_string(path)
        except ImportError as exc:
            raise CommandError(f"ASGI_APPLICATION {path!r} could not be imported: {exc}") from exc
    from django.core.asgi import get_asgi_application as django_asgi

    return django_asgi()


class Command(BaseCommand):
    help = "Starts a development server that serves the project's ASGI application through tidegate."

    def get_handler(self, *args: Any, **options: Any) -> Any:
        """The ASGI application; in DEBUG (or with --insecure) wrapped to serve static files as runserver does."""
        app = get_asgi_application()
        static = options.get("use_static_handler", False) and (settings.DEBUG or options.get("insecure_serving"))
        if static and apps.is_installed("django.contrib.staticfiles"):
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            app = ASGIStaticFilesHandler(app)
        return app

    def tidegate_config(self) -> Any:
        """tidegate's settings: the address given to runserver and ``settings.TIDEGATE`` over the usual sources."""
        flat: dict[str, Any] = dict(getattr(settings, "TIDEGATE", None) or {})
        flat.update(host=self.addr, port=int(self.port))
        flat.setdefault("app", str(getattr(settings, "ASGI_APPLICATION", None) or "django.core.asgi"))
        try:
            return resolve(flat).config
        except ConfigError as exc:
            raise CommandError(f"tidegate: {exc}") from exc

    def inner_run(self, *args: Any, **options: Any) -> None:
        # an error from the previous run under the reloader (e.g. a syntax error) is shown now
        autoreload.raise_last_exception()
        if not options.get("skip_checks"):
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for connection in connections.all(initialized_only=True):
            connection.close()
        config = self.tidegate_config()
        app = self.get_handler(*args, **options)
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        self.stdout.write(
            f"{datetime.now().strftime('%B %d, %Y - %X')}\n"
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting tidegate development server at {self.protocol}://{host}:{self.port}/\n"
            "Quit the server with CONTROL-C.")
        self.stdout.flush()
        code = run_config(config, app=app)  # a failure (e.g. the port is taken) is logged as one line
        if code:
            if threading.current_thread() is threading.main_thread():
                sys.exit(code)
            # under the autoreloader this runs in a thread, where sys.exit would not end the process
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

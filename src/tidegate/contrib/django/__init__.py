"""Django integration: add ``"tidegate.contrib.django"`` to ``INSTALLED_APPS``, before
``"django.contrib.staticfiles"``, and ``manage.py runserver`` serves through tidegate.

What it serves is the project's ASGI application (``settings.ASGI_APPLICATION`` if set, as Channels projects
do, else Django's own ASGI handler), so HTTP, WebSocket and streaming behave as they will in production.  As
Django's runserver does, it reloads on code changes (Django's own autoreloader; ``--noreload`` turns it off) and,
in ``DEBUG`` (or with ``--insecure``), serves static files through Django's static files handler
(``--nostatic`` turns that off).  tidegate's settings come from ``settings.TIDEGATE`` (a dict of flat setting
names, e.g. ``{"warn_blocking": 0.5}``), from ``TIDEGATE_*`` environment variables and from ``tidegate.toml``.
"""

"""ASGI 2 apps (a class called with the scope, whose instance takes receive and send) served through an adapter."""

from __future__ import annotations

from typing import Any

import httpx

from tidegate.middleware.asgi2 import is_asgi2_app

from .apps import hello


class Asgi2App:
    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        if self.scope["type"] != "http":
            return
        body = f"asgi2 {self.scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def asgi2_function(scope: dict[str, Any]) -> Any:
    return Asgi2App(scope)


class Asgi3Instance:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await hello(scope, receive, send)


def test_asgi2_apps_are_told_apart() -> None:
    assert is_asgi2_app(Asgi2App) and is_asgi2_app(asgi2_function)
    assert not is_asgi2_app(hello) and not is_asgi2_app(Asgi3Instance())
    assert not is_asgi2_app(lambda environ, start_response: [])  # WSGI
    assert not is_asgi2_app(lambda *args: None)  # cannot be told: taken as ASGI 3
    assert not is_asgi2_app(len) and not is_asgi2_app("not callable")


def test_an_asgi2_app_is_served_through_the_adapter(run_server: Any) -> None:
    for app, settings in ((Asgi2App, {}), (asgi2_function, {"interface": "asgi2"})):
        server = run_server(app, **settings)
        response = httpx.get(server.url + "/x", timeout=10)
        assert response.status_code == 200 and response.text == "asgi2 /x"

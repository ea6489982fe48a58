"""tidegate.run() and tidegate.serve() for embedding."""

from __future__ import annotations

import asyncio
import signal
import sys

import httpx
import pytest

import tidegate

from .ops_apps import app as ops_app
from .ops_helpers import Proc, get, serving_url


def test_serve_in_your_own_loop_with_a_shutdown_trigger():
    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await ops_app(scope, receive, send)

    async def main():
        stop = asyncio.Event()
        started = asyncio.get_running_loop().create_future()
        config = tidegate.Config.from_flat(app="-", port=0, access_log=False)
        task = asyncio.create_task(tidegate.serve(app, config, shutdown_trigger=stop.wait,
                                                  on_started=started.set_result))
        sockets = await started
        port = sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/", timeout=5)
        stop.set()
        await asyncio.wait_for(task, 10)
        return response

    response = asyncio.run(main())
    assert response.status_code == 200
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def run_script(code: str) -> Proc:
    return Proc([], argv0=[sys.executable, "-c", code])


@pytest.mark.parametrize("extra", ["", ", workers=2"])
def test_run_blocks_until_sigterm(extra):
    proc = run_script(f"import tidegate; tidegate.run('tests.ops_apps:app', port=0, lifespan='on'{extra})")
    try:
        url = serving_url(proc)
        proc.wait_for("ops-app startup")
        if extra:
            proc.wait_for(r"worker 2 \(pid \d+\) ready")
        assert get(url + "/").status_code == 200
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert "ops-app shutdown" in proc.output


def test_run_failures_raise_system_exit():
    proc = run_script("import tidegate; tidegate.run('tests.ops_apps:missing', port=0)")
    assert proc.wait() == 1
    with pytest.raises(tidegate.ConfigError, match="need the app as an import string"):
        tidegate.run(ops_app, workers=2)
    with pytest.raises(tidegate.ConfigError, match="unknown setting 'wrokers'"):
        tidegate.run("tests.ops_apps:app", wrokers=2)

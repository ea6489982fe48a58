"""The demo page in a real browser: headless Chromium, driven over the DevTools protocol.

Chromium (Debian's ``chromium`` package) is installed by ``scripts/test`` where apt-get is available; without it
the test is skipped and says why.  Every wait has a deadline; the browser is started with its own profile in a
temporary directory and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tidegate import demo

from .conftest import LineReader

WAIT = 20.0
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def devtools_url(tmp_path: Path) -> Iterator[str]:
    """Start headless Chromium; yield the DevTools endpoint of the browser."""
    browser = find_browser()
    if browser is None:
        pytest.skip("Chromium is not installed (scripts/test installs Debian's chromium package when it runs as "
                    "root where apt-get is available)")
    process = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = LineReader(process.stderr)
    try:
        line = stderr.wait_for("DevTools listening on", timeout=60)
        match = re.search(r"(ws://\S+)", line)
        assert match, line
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        stderr.wait_closed(10)
        assert process.stderr is not None
        process.stderr.close()


# Resolves with an element's text once a condition on it holds, watching the element for changes.
WAIT_TEXT = """new Promise((resolve) => {
  const el = document.getElementById(ELEMENT_ID);
  const check = () => {
    const text = el.textContent;
    if (CONDITION) { resolve(text); return true; }
    return false;
  };
  if (!check()) {
    new MutationObserver(check).observe(el, {childList: true, characterData: true, subtree: true});
  }
})"""


class Page:
    """One browser tab, over a flattened DevTools session."""

    def __init__(self, cdp: ClientConnection) -> None:
        self.cdp = cdp
        self.ids = itertools.count(1)
        self.session: str | None = None
        self.pending: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        await self.cdp.send(json.dumps(message))
        while True:
            reply = json.loads(await asyncio.wait_for(self.cdp.recv(), WAIT))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result
            self.pending.append(reply)

    async def event(self, name: str) -> dict[str, Any]:
        while True:
            for event in self.pending:
                if event.get("method") == name:
                    self.pending.remove(event)
                    return event
            self.pending.append(json.loads(await asyncio.wait_for(self.cdp.recv(), WAIT)))

    async def open(self, url: str) -> None:
        target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        self.session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "script failed"))
        return result["result"].get("value")

    async def text_when(self, element_id: str, condition: str) -> str:
        """The text of an element once ``condition`` (JavaScript, on ``text``) holds; waits for changes."""
        script = WAIT_TEXT.replace("ELEMENT_ID", json.dumps(element_id)).replace("CONDITION", condition)
        return str(await asyncio.wait_for(self.evaluate(script), WAIT))


@pytest.mark.timeout(180)
def test_demo_page_websocket_and_sse_clock_in_chromium(run_server: Any, devtools_url: str) -> None:
    server = run_server(demo.app, lifespan="on")

    async def main() -> None:
        async with connect(devtools_url, max_size=None, open_timeout=WAIT, ping_interval=None) as cdp:
            page = Page(cdp)
            await page.open(server.url + "/")
            # the page opened a WebSocket to /ws and sent a greeting: the echo is shown
            assert await page.text_when("ws-state", 'text === "open"') == "open"
            assert await page.text_when("ws-echo", "text.length > 0") == "hello from the browser"
            # and a message typed in the page makes the round trip too
            await page.evaluate('document.getElementById("ws-text").value = "typed in the browser";'
                                'document.getElementById("ws-send").click()')
            assert await page.text_when("ws-echo", 'text === "typed in the browser"') == "typed in the browser"
            # the Server-Sent Events clock shows the time, then ticks
            first = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text)")
            later = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text) && text !== " + json.dumps(first))
            assert later != first

    asyncio.run(asyncio.wait_for(main(), 150))

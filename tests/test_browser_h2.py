"""The demo page over HTTPS in headless Chromium: fetched over HTTP/2 (ALPN h2), its WebSocket over HTTP/2 too.

The certificate is made by the test (trustme) and the browser told to ignore that it does not know its CA.  Chromium
is found, started and stopped as in ``test_browser.py`` (skipped, saying why, where it is not installed).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect

from tidegate import demo

from .test_browser import WAIT, Page, devtools_url  # noqa: F401  (devtools_url is a fixture)


@pytest.mark.timeout(180)
def test_demo_page_over_http2_in_chromium(run_server: Any, devtools_url: str, tmp_path: Path,  # noqa: F811
                                          logs: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    server = run_server(demo.app, lifespan="on", ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                        access_log=True)
    url = f"https://localhost:{server.port}/"

    async def main() -> None:
        async with connect(devtools_url, max_size=None, open_timeout=WAIT, ping_interval=None) as cdp:
            page = Page(cdp)
            # what --ignore-certificate-errors does, for this browser: the test's CA is not one it knows
            await page.call("Security.setIgnoreCertificateErrors", ignore=True)
            await page.open(url)
            # the page itself came over HTTP/2
            assert await page.evaluate("performance.getEntries()[0].nextHopProtocol") == "h2"
            # the request the page made: the app saw HTTP/2 over https
            shown = await page.text_when("json", "text.length > 0")
            assert json.loads(shown)["http_version"] == "2"
            protocols = await page.evaluate(
                "performance.getEntriesByType('resource').map((e) => [e.name, e.nextHopProtocol])")
            assert [p for name, p in protocols if name.endswith("/json")] == ["h2"]
            # the WebSocket echo works over the same HTTP/2 connection (RFC 8441) and the SSE clock ticks
            assert await page.text_when("ws-state", 'text === "open"') == "open"
            assert await page.text_when("ws-echo", "text.length > 0") == "hello from the browser"
            first = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text)")
            later = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text) && text !== " + json.dumps(first))
            assert later != first

    asyncio.run(asyncio.wait_for(main(), 150))
    # the WebSocket was a stream of the HTTP/2 connection (extended CONNECT answered 200), not an HTTP/1.1 upgrade
    line = logs.wait_for(lambda r: r.name == "tidegate.access" and "WebSocket" in r.getMessage()).getMessage()
    assert "WebSocket /ws HTTP/2" in line and line.endswith(" 200")

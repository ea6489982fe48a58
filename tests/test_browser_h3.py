"""The demo page over HTTP/3 in headless Chromium: forced onto QUIC, and found by Alt-Svc the way a browser finds it.

The certificate is made by the test (trustme); Chromium is told to trust it for QUIC by the hash of its public key
(``--ignore-certificate-errors-spki-list``), which is what it takes on QUIC, where ``Security.setIgnoreCertificate
Errors`` does not reach.  Chromium is found as in ``test_browser.py`` (skipped, saying why, where it is not
installed); skipped too where the ``http3`` extra is not installed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect

from tidegate import demo

from .conftest import LineReader
from .test_browser import WAIT, Page, find_browser

if sys.version_info < (3, 11):
    pytest.skip("HTTP/3 needs Python 3.11 or later (--http3 refuses older ones)", allow_module_level=True)
pytest.importorskip("aioquic", reason="the http3 extra (aioquic) is not installed")


def spki_hash(certificate_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): how Chromium names a certificate to trust by its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate(certificate_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(profile: Path, *flags: str) -> Iterator[str]:
    """Headless Chromium with ``flags``; yields its DevTools endpoint; stopped by its PID."""
    browser = find_browser()
    if browser is None:
        pytest.skip("Chromium is not installed (scripts/test installs Debian's chromium package when it runs as "
                    "root where apt-get is available)")
    process = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--enable-quic", *flags, "about:blank"],
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


@pytest.fixture
def https_demo(run_server: Any, tmp_path: Path) -> tuple[Any, str]:
    """The demo app over HTTPS with --http3; returns the server and the hash of its certificate's key."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    server = run_server(demo.app, lifespan="on", ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), http3=True,
                        access_log=True, timeout_keep_alive=1)
    return server, spki_hash(cert.cert_chain_pems[0].bytes())


async def resource_protocols(page: Page) -> list[list[str]]:
    result: list[list[str]] = await page.evaluate(
        "performance.getEntriesByType('resource').map((e) => [new URL(e.name).pathname, e.nextHopProtocol])")
    return result


@pytest.mark.timeout(180)
def test_demo_page_over_http3_in_chromium(https_demo: tuple[Any, str], tmp_path: Path, logs: Any) -> None:
    server, spki = https_demo
    origin = f"127.0.0.1:{server.port}"

    async def main(devtools: str) -> None:
        async with connect(devtools, max_size=None, open_timeout=WAIT, ping_interval=None) as cdp:
            page = Page(cdp)
            await page.open(f"https://{origin}/")
            # the page itself came over HTTP/3
            assert await page.evaluate("performance.getEntries()[0].nextHopProtocol") == "h3"
            # the request the page made: the app saw HTTP/3
            shown = await page.text_when("json", "text.length > 0")
            assert json.loads(shown)["http_version"] == "3"
            # the Server-Sent Events clock ticks over it
            first = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text)")
            later = await page.text_when("clock", r"/^\d\d:\d\d:\d\d$/.test(text) && text !== " + json.dumps(first))
            assert later != first
            # the fetch upload comes back through the streamed echo
            await page.evaluate('document.getElementById("text").value = "uploaded over QUIC";'
                                'document.getElementById("send").click()')
            assert await page.text_when("echo", "text.length > 0") == "uploaded over QUIC"
            protocols = dict(await resource_protocols(page))
            assert protocols["/json"] == "h3" and protocols["/echo"] == "h3"

    with chromium(tmp_path / "profile", f"--origin-to-force-quic-on={origin}",
                  f"--ignore-certificate-errors-spki-list={spki}") as devtools:
        asyncio.run(asyncio.wait_for(main(devtools), 150))
    lines = [r.getMessage() for r in logs.records if r.name == "tidegate.access"]
    assert any('"GET / HTTP/3" 200' in line for line in lines), lines
    assert any('"POST /echo HTTP/3" 200' in line for line in lines), lines
    # the clock's stream, which ends with the browser
    assert any('"GET /events HTTP/3" 200' in line for line in lines), lines


class Tab(Page):
    """A page that records its responses (protocol and headers, from the Network domain) and can be closed."""

    async def open(self, url: str) -> None:
        self.target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        self.session = (await self.call("Target.attachToTarget", targetId=self.target, flatten=True))["sessionId"]
        await self.call("Page.enable")
        await self.call("Network.enable")
        await self.call("Page.navigate", url=url)
        await self.event("Page.loadEventFired")

    def responses(self) -> list[dict[str, Any]]:
        """The responses seen so far: their URL, protocol and headers."""
        return [event["params"]["response"] for event in self.pending if event.get("method") ==
                "Network.responseReceived"]

    async def close(self) -> None:
        self.session = None
        await self.call("Target.closeTarget", targetId=self.target)


@pytest.mark.timeout(180)
def test_chromium_finds_http3_by_alt_svc(https_demo: tuple[Any, str], tmp_path: Path) -> None:
    server, spki = https_demo
    # (not "localhost": the browser may try QUIC to ::1 first, where nothing listens, and then mark HTTP/3 broken)
    url = f"https://127.0.0.1:{server.port}/"

    async def main(devtools: str) -> None:
        async with connect(devtools, max_size=None, open_timeout=WAIT, ping_interval=None) as cdp:
            tab = Tab(cdp)
            await tab.open(url)
            # the first load: TLS over TCP (HTTP/2 by ALPN), and its response says where HTTP/3 is
            assert await tab.evaluate("performance.getEntries()[0].nextHopProtocol") == "h2"
            page = next(r for r in tab.responses() if r["url"] == url)
            assert page["protocol"] == "h2"
            assert {k.lower(): v for k, v in page["headers"].items()}["alt-svc"] == f'h3=":{server.port}"; ma=86400'
            # a later load goes over HTTP/3 (the browser tries QUIC once it knows of it, racing TCP; an HTTP/2
            # connection still open may serve a load or two first)
            protocols = []
            for _ in range(10):
                await tab.close()
                await asyncio.sleep(1.5)  # past --timeout-keep-alive: the idle connections close
                tab = Tab(cdp)
                await tab.open(url)
                protocols.append(await tab.evaluate("performance.getEntries()[0].nextHopProtocol"))
                if protocols[-1] == "h3":
                    break
            assert protocols[-1] == "h3", protocols
            shown = await tab.text_when("json", "text.length > 0")
            assert json.loads(shown)["http_version"] == "3"

    # The browser takes QUIC only from servers whose certificate chains to a public root, unless the host is one
    # it forces QUIC on: forcing it on another port of the host (where nothing listens) lifts that for the host
    # and leaves this port to be found by Alt-Svc.
    with chromium(tmp_path / "profile", f"--ignore-certificate-errors-spki-list={spki}",
                  "--origin-to-force-quic-on=127.0.0.1:1") as devtools:
        asyncio.run(asyncio.wait_for(main(devtools), 150))

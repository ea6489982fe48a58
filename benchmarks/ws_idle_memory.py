"""Idle WebSocket memory: RSS growth per open, idle WebSocket connection, tidegate beside uvicorn.

For each server it starts one process on 127.0.0.1 serving a small echo app, warms it up with a few connections,
then opens CONNECTIONS WebSocket connections (each does one echo round trip, then stays open and idle, answering
the server's pings) and reports how much the server's RSS (/proc/PID/status) grew per connection.  It is run
twice per server by default: once with clients that offer no extension, once with clients that offer
permessage-deflate the way browsers do.

    python benchmarks/ws_idle_memory.py                          # 5,000 connections, every server, both offers
    python benchmarks/ws_idle_memory.py --connections 1000 --servers tidegate --deflate off
    python benchmarks/ws_idle_memory.py --connections 1000,3000 --servers tidegate --deflate on   # and the margin

"Growth per connection" divides the RSS added by the connections by their count, so it also carries what the
process pays once whatever the count (allocator arenas, caches filled on first use): a build that starts smaller
can show more growth for the same sessions.  Given two or more counts (each in a fresh process), the script also
reports the *marginal* cost: the RSS added between the smallest and the largest count, per connection, which
those fixed costs cancel out of.

Servers: ``tidegate`` (this interpreter, ``-m tidegate``), ``uvicorn-sansio`` (``--ws websockets-sansio``, its
default) and ``uvicorn-websockets`` (``--ws websockets``), both with ``--loop uvloop --http httptools`` and run
with ``--uvicorn-python``.  Everything stays on loopback, every wait has a deadline, the whole run is bounded by
``--max-seconds``, and only the PIDs this script started are signalled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
'''

MASK = b"\x12\x34\x56\x78"
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def server_commands(tidegate_python: str, uvicorn_python: str) -> dict[str, Callable[[int, str], list[str]]]:
    def tidegate(port: int, app_dir: str) -> list[str]:
        return [tidegate_python, "-m", "tidegate", "_ws_idle_app:app", "--app-dir", app_dir, "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning", "--lifespan", "off"]

    def uvicorn(ws: str) -> Callable[[int, str], list[str]]:
        def command(port: int, app_dir: str) -> list[str]:
            return [uvicorn_python, "-m", "uvicorn", "_ws_idle_app:app", "--app-dir", app_dir, "--host",
                    "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning", "--lifespan",
                    "off", "--loop", "uvloop", "--http", "httptools", "--ws", ws]
        return command

    return {"tidegate": tidegate, "uvicorn-sansio": uvicorn("websockets-sansio"),
            "uvicorn-websockets": uvicorn("websockets")}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def masked(payload: bytes, b0: int) -> bytes:
    assert len(payload) < 126
    return bytes((b0, 0x80 | len(payload))) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


HELLO = masked(b"hello, idle world", 0x81)


class IdleClient(asyncio.Protocol):
    """Handshake, one echo, then idle: pings are answered, nothing else is sent."""

    def __init__(self, port: int, deflate: bool, ready: asyncio.Future[None]) -> None:
        key = base64.b64encode(os.urandom(16))
        self.request = (b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
                        % (port, key, DEFLATE_OFFER if deflate else b""))
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.open = False
        self.lost = False
        self.pings = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                status = buffer.split(b"\r\n", 1)[0]
                self._fail(f"handshake answered {status!r}")
                return
            self.open = True
            buffer = buffer[end + 4:]
            assert self.transport is not None
            self.transport.write(HELLO)
        while len(buffer) >= 2:
            b0, b1 = buffer[0], buffer[1]
            length, start = b1 & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                break
            payload, buffer = buffer[start:start + length], buffer[start + length:]
            opcode = b0 & 0x0F
            if opcode in (1, 2) and not self.ready.done():
                self.ready.set_result(None)
            elif opcode == 9 and self.transport is not None:
                self.pings += 1
                self.transport.write(masked(payload, 0x8A))
            elif opcode == 8:
                self._fail("the server closed the connection")
        self.buffer = buffer

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost during the handshake"))


async def open_clients(port: int, count: int, deflate: bool, batch: int, deadline: float) -> list[IdleClient]:
    loop = asyncio.get_running_loop()
    clients: list[IdleClient] = []

    async def one() -> None:
        ready: asyncio.Future[None] = loop.create_future()
        _, client = await loop.create_connection(lambda: IdleClient(port, deflate, ready), "127.0.0.1", port)
        clients.append(client)
        await ready

    while len(clients) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(clients)} of {count} connections opened in time")
        size = min(batch, count - len(clients))
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(size))), min(left, 60))
    return clients


def close_clients(clients: list[IdleClient]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


async def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start listening in time") from None
            await asyncio.sleep(0.05)


async def measure(name: str, command: list[str], count: int, deflate: bool, args: argparse.Namespace,
                  end: float) -> dict[str, float]:
    port = int(command[command.index("--port") + 1])
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        await wait_listening(port, process)
        # warm-up: the same path a few times, then closed, so the baseline holds the code and caches
        warm = await open_clients(port, args.warmup, deflate, args.batch, end)
        close_clients(warm)
        del warm
        await asyncio.sleep(args.settle)
        baseline = rss_kib(process.pid)
        started = time.monotonic()
        clients = await open_clients(port, count, deflate, args.batch, end)
        opened = time.monotonic() - started
        gc.collect()
        # idle: let the server settle (and ping, if its interval is shorter than the idle time)
        await asyncio.sleep(min(args.idle, max(0.0, end - time.monotonic())))
        after = rss_kib(process.pid)
        lost = sum(1 for c in clients if c.lost)
        pings = sum(c.pings for c in clients)
        close_clients(clients)
        return {"baseline": baseline, "after": after, "per_conn": (after - baseline) * 1024 / count,
                "opened_s": opened, "lost": lost, "pings": pings}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def raise_fd_limit(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 1024
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            raise SystemExit(f"need {want} file descriptors, the hard limit is {hard}")


async def main(args: argparse.Namespace) -> int:
    counts = sorted({int(n) for n in args.connections.split(",") if n.strip()})
    raise_fd_limit(counts[-1] + args.warmup)
    commands = server_commands(args.tidegate_python, args.uvicorn_python)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for name in names:
        if name not in commands:
            raise SystemExit(f"unknown server {name!r} (known: {', '.join(commands)})")
    offers = {"off": [False], "on": [True], "both": [False, True]}[args.deflate]
    end = time.monotonic() + args.max_seconds
    app_dir = tempfile.mkdtemp(prefix="ws-idle-")
    results: list[tuple[str, bool, int, dict[str, float] | str]] = []
    try:
        with open(os.path.join(app_dir, "_ws_idle_app.py"), "w") as f:
            f.write(APP)
        for deflate in offers:
            for count in counts:
                for name in names:
                    if time.monotonic() >= end:
                        results.append((name, deflate, count, "skipped: --max-seconds reached"))
                        continue
                    command = commands[name](free_port(), app_dir)
                    try:
                        result: dict[str, float] | str = await measure(name, command, count, deflate, args, end)
                    except (OSError, RuntimeError, TimeoutError) as exc:
                        result = f"failed: {exc}"
                    results.append((name, deflate, count, result))
                    print(f"{name:20} deflate offered: {'yes' if deflate else 'no ':3}  {count:6,} connections  "
                          + (result if isinstance(result, str) else
                             f"RSS {result['baseline'] / 1024:7.1f} -> {result['after'] / 1024:7.1f} MiB  "
                             f"{result['per_conn'] / 1024:6.2f} KiB/connection  (opened in "
                             f"{result['opened_s']:.1f} s, lost {int(result['lost'])}, pings answered "
                             f"{int(result['pings'])})"), flush=True)
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)
    print()
    print(f"Idle WebSocket connections: {', '.join(f'{n:,}' for n in counts)} per server, one echo each, then idle "
          f"{args.idle:.0f} s")
    print()
    print("| server | client offers permessage-deflate | connections | RSS before | RSS with connections "
          "| growth per connection |")
    print("|---|---|---:|---:|---:|---:|")
    failed = False
    for name, deflate, count, result in results:
        if isinstance(result, str):
            failed = True
            print(f"| {name} | {'yes' if deflate else 'no'} | {count:,} | {result} | | |")
        else:
            print(f"| {name} | {'yes' if deflate else 'no'} | {count:,} | {result['baseline'] / 1024:.1f} MiB | "
                  f"{result['after'] / 1024:.1f} MiB | {result['per_conn'] / 1024:.2f} KiB |")
    if len(counts) > 1:
        print()
        print(f"| server | client offers permessage-deflate | marginal cost per connection, {counts[0]:,} → "
              f"{counts[-1]:,} |")
        print("|---|---|---:|")
        for deflate in offers:
            for name in names:
                low, high = (next((r for n, d, c, r in results if n == name and d == deflate and c == count), None)
                             for count in (counts[0], counts[-1]))
                if isinstance(low, dict) and isinstance(high, dict):
                    margin = f"{(high['after'] - low['after']) / (counts[-1] - counts[0]):.2f} KiB"
                else:
                    margin = "n/a"
                print(f"| {name} | {'yes' if deflate else 'no'} | {margin} |")
    return 1 if failed else 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="5000",
                        help="idle connections per run; several, comma-separated, add the marginal cost")
    parser.add_argument("--servers", default="tidegate,uvicorn-sansio,uvicorn-websockets")
    parser.add_argument("--deflate", choices=("off", "on", "both"), default="both",
                        help="whether the clients offer permessage-deflate")
    parser.add_argument("--warmup", type=int, default=200, help="connections opened and closed before the baseline")
    parser.add_argument("--batch", type=int, default=200, help="connections opened at once")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the connections stay idle before the RSS")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after the warm-up before the baseline")
    parser.add_argument("--tidegate-python", default=sys.executable)
    parser.add_argument("--uvicorn-python", default="/tmp/peers/venv/bin/python")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop by this time whatever is left")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        sys.exit(asyncio.run(main(parse())))
    sys.exit(uvloop.run(main(parse())))

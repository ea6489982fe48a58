"""What one HTTP/1.1 request costs tidegate's own code: no sockets, no kernel, no load tool.

``--connections`` HTTP/1.1 drivers on fake transports share one ServerContext on uvloop; each pass hands every
driver one request (``GET /``, as wrk sends it) from a single callback, as a loop pass of the event loop would,
then lets their apps run.  Prints the best of ``--repeat`` timings in nanoseconds per request.

With ``--batch N`` a pass hands the requests out N connections at a time, letting each group's apps run before the
next group is read: ``--connections 1000 --batch 64`` has a thousand connections' state but no more than 64
requests in flight, which tells the cost of many requests in flight from the cost of many connections.

    python benchmarks/inprocess.py --app hello --connections 64
    python benchmarks/inprocess.py --app hello --connections 1000 --batch 64

The apps are ../shared/bench/apps.py's when it is there (``--apps-dir``), else a built-in hello.  Numbers swing
with what else the machine runs: compare builds by alternating runs, pinned to one core (``taskset -c 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import sys
import time
from typing import Any

import uvloop

from tidegate._build import BUILD
from tidegate.config import Config
from tidegate.runtime.context import ServerContext
from tidegate.runtime.h1 import H1Driver

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


class Transport:
    """Takes every write at once and counts them."""

    def __init__(self) -> None:
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, items: Any) -> None:
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def measure(app: Any, connections: int, batch: int, passes: int, repeat: int) -> float:
    loop = asyncio.get_running_loop()
    ctx = ServerContext(app, Config.from_flat(app="bench:app", access_log=False), loop)
    drivers: list[tuple[H1Driver, Transport]] = []
    for _ in range(connections):
        transport = Transport()
        driver = H1Driver(ctx)
        driver.as_protocol().connection_made(transport)  # type: ignore[arg-type]
        drivers.append((driver, transport))
    groups = [drivers[i:i + batch] for i in range(0, connections, batch)]

    async def run(count: int) -> None:
        for _ in range(count):
            for group in groups:
                for driver, _transport in group:
                    driver.data_received(REQUEST)
                await asyncio.sleep(0)  # the apps' first (here: only) steps
                await asyncio.sleep(0)  # the drivers' end-of-response callbacks

    await run(max(1, passes // 2))  # warm-up
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        await run(passes)
        best = min(best, (time.perf_counter() - started) / (passes * connections))
    if not all(transport.writes for _driver, transport in drivers):
        raise SystemExit("a connection wrote nothing: the app did not answer")
    return best * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="hello", help="an app of apps.py (hello, json, ...)")
    parser.add_argument("--apps-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=0, help="connections read per group (default: all)")
    parser.add_argument("--requests", type=int, default=40_000, help="requests per timing (about)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gc-threshold", type=int, default=10_000, help="as the server's --gc-threshold")
    args = parser.parse_args()
    app: Any = hello
    if os.path.exists(os.path.join(args.apps_dir, "apps.py")):
        sys.path.insert(0, args.apps_dir)
        app = getattr(importlib.import_module("apps"), args.app)
    elif args.app != "hello":
        raise SystemExit(f"no apps.py in {args.apps_dir}: only the built-in hello")
    gc.set_threshold(args.gc_threshold)
    passes = max(1, args.requests // args.connections)
    batch = args.batch or args.connections
    cost = uvloop.run(measure(app, args.connections, batch, passes, args.repeat))
    print(f"{args.app}, {args.connections} connections, batch {batch} ({BUILD}): {cost:.0f} ns per request")


if __name__ == "__main__":
    main()

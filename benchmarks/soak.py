"""Soak test: memory stability of one tidegate process under a long run.

Starts ``python -m tidegate`` (this interpreter) on 127.0.0.1 with a small app, then
  1. sends REQUESTS keep-alive requests over CONNECTIONS connections (several in flight per connection),
  2. opens NEW_CONNECTIONS fresh connections, one request each (``Connection: close``),
sampling the server's RSS (/proc/PID/status) throughout. It prints the RSS after warm-up and at the end of each
phase, and the growth. Everything goes to loopback, every loop is bounded in count and time, and only the PID
this script started is signalled.

    python benchmarks/soak.py                       # 1,000,000 requests + 100,000 connections
    python benchmarks/soak.py --requests 100000 --new-connections 10000   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''

REQUEST = b"GET /soak?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: soak\r\n\r\n"
CLOSE_REQUEST = b"GET /soak HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
RESPONSE_END = re.compile(rb"\r\n\r\nok")


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


async def keep_alive_client(port: int, count: int, depth: int, deadline: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    buffer = b""
    try:
        while done < count and time.monotonic() < deadline:
            batch = min(depth, count - done)
            writer.write(REQUEST * batch)
            seen = 0
            while seen < batch:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    raise ConnectionError("server closed a keep-alive connection")
                buffer += chunk
                found = len(RESPONSE_END.findall(buffer))
                if found:
                    seen += found
                    buffer = buffer[buffer.rfind(b"\r\n\r\nok") + 6:]
            done += batch
    finally:
        writer.close()
    return done


async def one_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CLOSE_REQUEST)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    if not data.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected answer {data[:40]!r}")


async def new_connections(port: int, count: int, parallel: int, deadline: float) -> int:
    done = 0
    while done < count and time.monotonic() < deadline:
        batch = min(parallel, count - done)
        await asyncio.gather(*(one_connection(port) for _ in range(batch)))
        done += batch
    return done


async def sampler(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), rss_kib(pid)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def main(args: argparse.Namespace) -> int:
    port = free_port()
    workdir = os.path.dirname(os.path.abspath(__file__))
    app_file = os.path.join(workdir, "_soak_app.py")
    with open(app_file, "w") as f:
        f.write(APP)
    server = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "_soak_app:app", "--app-dir", workdir, "--port", str(port),
         "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "30"],
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                await asyncio.sleep(0.05)
        samples: list[tuple[float, int]] = []
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler(server.pid, samples, stop))
        end = time.monotonic() + args.max_seconds

        per_conn = args.requests // args.connections
        warm = max(1, per_conn // 10)
        await asyncio.gather(*(keep_alive_client(port, warm, args.depth, end) for _ in range(args.connections)))
        after_warmup = rss_kib(server.pid)
        started = time.monotonic()
        counts = await asyncio.gather(*(keep_alive_client(port, per_conn - warm, args.depth, end)
                                        for _ in range(args.connections)))
        requests_done = sum(counts) + warm * args.connections
        after_requests = rss_kib(server.pid)
        requests_seconds = time.monotonic() - started
        started = time.monotonic()
        conns_done = await new_connections(port, args.new_connections, args.parallel, end)
        conns_seconds = time.monotonic() - started
        after_connections = rss_kib(server.pid)
        stop.set()
        await sampling
        peak = max(kib for _, kib in samples) if samples else after_connections
        print(f"keep-alive requests: {requests_done:,} in {requests_seconds:.1f} s over {args.connections} connections")
        print(f"new connections:     {conns_done:,} in {conns_seconds:.1f} s")
        print(f"RSS after warm-up:   {after_warmup / 1024:.1f} MiB")
        growth = (after_requests - after_warmup) / 1024
        print(f"RSS after requests:  {after_requests / 1024:.1f} MiB  (growth {growth:+.2f} MiB)")
        print(f"RSS after conns:     {after_connections / 1024:.1f} MiB  (growth since warm-up "
              f"{(after_connections - after_warmup) / 1024:+.2f} MiB)")
        print(f"RSS peak:            {peak / 1024:.1f} MiB ({len(samples)} samples)")
        incomplete = requests_done < args.requests or conns_done < args.new_connections
        if incomplete:
            print("stopped early: --max-seconds reached")
        return 1 if incomplete else 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(app_file)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=8, help="pipelined requests in flight per connection")
    parser.add_argument("--new-connections", type=int, default=100_000)
    parser.add_argument("--parallel", type=int, default=50, help="new connections opened at once")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by this time whatever the counts")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        sys.exit(asyncio.run(main(parse())))
    sys.exit(uvloop.run(main(parse())))

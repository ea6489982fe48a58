"""HTTP/3 (and HTTP/2) load client on aioquic and h2, and the h3 scenario: tidegate against hypercorn.

h2load is the project's load tool, but the build this was written with does not speak QUIC (``h2load --npn-list h3``
negotiates nothing: it was built without ngtcp2), so this client drives QUIC with aioquic's sans-IO connection and
HTTP/3 layer directly (no asyncio stream objects), keeping ``--streams`` requests in flight on each of
``--connections`` connections, in ``--processes`` processes.  ``--protocol h2`` drives HTTP/2 over TLS with the h2
library the same way, so that HTTP/3 and HTTP/2 are compared with the same client.

Being Python, the client costs about as much CPU per request as the servers do: give it the cores (``--processes``)
and read ``server CPU ms/request`` (from the server's /proc/PID/stat, ``--server-pid``) beside requests/s.

    # one load run against a server already listening (HTTP/3, then HTTP/2, on the same port)
    python benchmarks/h3_load.py run https://127.0.0.1:8443/ --duration 10
    python benchmarks/h3_load.py run https://127.0.0.1:8443/ --duration 10 --protocol h2

    # the scenario: start tidegate (--http3) and hypercorn (--quic-bind) in turn on the same app, load each
    python benchmarks/h3_load.py compare --hypercorn /tmp/hc/bin/hypercorn [--hypercorn-worker-class uvloop]

Everything goes to loopback; only the processes this script started are signalled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''


# ---------------------------------------------------------------------------------------------- HTTP/3 client

class H3Load(asyncio.DatagramProtocol):
    """One QUIC connection keeping ``streams`` GET requests in flight until ``deadline``."""

    def __init__(self, host: str, port: int, path: str, streams: int, deadline: float, stats: dict[str, int]) -> None:
        from aioquic.h3.connection import H3_ALPN, H3Connection
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost",
                                          verify_mode=ssl.CERT_NONE, max_data=1 << 24, max_stream_data=1 << 22)
        self.quic = QuicConnection(configuration=configuration)
        self.h3 = H3Connection(self.quic)
        self.addr = (host, port)
        self.loop = asyncio.get_running_loop()
        self.headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", host.encode()),
                        (b":path", path.encode()), (b"user-agent", b"h3_load")]
        self.streams = streams
        self.deadline = deadline
        self.stats = stats
        self.open: set[int] = set()
        self.done = self.loop.create_future()
        self.connected = False
        self.transport: asyncio.DatagramTransport | None = None
        self._tx = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.quic.connect(self.addr, now=self.loop.time())
        self.transmit()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        from aioquic.h3.events import DataReceived, HeadersReceived
        from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset

        self.quic.receive_datagram(data, addr, now=self.loop.time())
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.connected = True
                for _ in range(self.streams):
                    self.request()
            elif isinstance(event, ConnectionTerminated):
                if not self.done.done():
                    self.done.set_result(None)
                return
            elif isinstance(event, StreamReset):
                self.stats["errors"] += 1
                self.finished(event.stream_id)
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    status = dict(h3_event.headers).get(b":status")
                    if status != b"200":
                        self.stats["errors"] += 1
                if isinstance(h3_event, (HeadersReceived, DataReceived)) and h3_event.stream_ended:
                    self.stats["requests"] += 1
                    self.finished(h3_event.stream_id)
        self.schedule()

    def request(self) -> None:
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(stream_id, self.headers, end_stream=True)
        self.open.add(stream_id)

    def finished(self, stream_id: int) -> None:
        self.open.discard(stream_id)
        if self.loop.time() < self.deadline:
            self.request()
        elif not self.open:
            self.quic.close()
            if not self.done.done():
                self.done.set_result(None)

    def schedule(self) -> None:
        if not self._tx:
            self._tx = True
            self.loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._tx = False
        assert self.transport is not None
        if self.transport.is_closing():
            return
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data, addr)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self.loop.call_at(timer_at, self.on_timer)
        self._timer_at = timer_at

    def on_timer(self) -> None:
        self._timer = None
        self.quic.handle_timer(now=self.loop.time())
        if self.quic.next_event() is not None and not self.done.done():
            self.done.set_result(None)  # terminated (idle timeout)
        self.transmit()


async def h3_connection(host: str, port: int, path: str, streams: int, deadline: float,
                        stats: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: H3Load(host, port, path, streams, deadline, stats), remote_addr=(host, port))
    try:
        await asyncio.wait_for(protocol.done, deadline - loop.time() + 10)
    except asyncio.TimeoutError:
        stats["errors"] += len(protocol.open)
    finally:
        transport.close()


# ---------------------------------------------------------------------------------------------- HTTP/2 client

async def h2_connection(host: str, port: int, path: str, streams: int, deadline: float,
                        stats: dict[str, int]) -> None:
    import h2.config
    import h2.connection
    import h2.events

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 24)
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", path.encode()),
               (b"user-agent", b"h3_load")]
    loop = asyncio.get_running_loop()
    open_streams: set[int] = set()

    def request() -> None:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=True)
        open_streams.add(stream_id)

    for _ in range(streams):
        request()
    writer.write(conn.data_to_send())
    try:
        while open_streams:
            data = await reader.read(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    if dict(event.headers).get(b":status") != b"200":
                        stats["errors"] += 1
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    stats["errors"] += 1
                    open_streams.discard(event.stream_id)
                if isinstance(event, h2.events.StreamEnded):
                    stats["requests"] += 1
                    open_streams.discard(event.stream_id)
                    if loop.time() < deadline:
                        request()
            writer.write(conn.data_to_send())
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------- one run

def _worker(args: tuple[str, str, int, int, str, float, float]) -> dict[str, int]:
    url, protocol, connections, streams, loop_kind, start_at, duration = args
    if loop_kind == "uvloop":
        import uvloop

        uvloop.install()
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 443, parts.path or "/"
    stats = {"requests": 0, "errors": 0}

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        connect = h3_connection if protocol == "h3" else h2_connection
        await asyncio.gather(*(connect(host, port, path, streams, deadline, stats) for _ in range(connections)))

    asyncio.run(main())
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of every process under it (hypercorn serves from a child process
    even with one worker), from Linux's /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0)
        todo += children.get(current, [])
    return total / os.sysconf("SC_CLK_TCK")


def load(url: str, protocol: str = "h3", duration: float = 10.0, connections: int = 8, streams: int = 8,
         processes: int = 1, server_pids: list[int] | None = None, loop: str = "uvloop") -> dict[str, Any]:
    """Load ``url`` for ``duration`` seconds; requests/s, errors and (given its PIDs) the server's CPU time."""
    start_at = time.time() + 0.5
    jobs = [(url, protocol, connections, streams, loop, start_at, duration)] * processes
    before = sum(cpu_seconds(pid) for pid in server_pids or [])
    began = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_worker, jobs)
    elapsed = time.monotonic() - began - 0.5
    after = sum(cpu_seconds(pid) for pid in server_pids or [])
    requests = sum(r["requests"] for r in results)
    report = {"protocol": protocol, "url": url, "connections": connections * processes, "streams": streams,
              "requests": requests, "errors": sum(r["errors"] for r in results),
              "requests_per_second": round(requests / max(elapsed, 1e-9), 1)}
    if server_pids:
        report["server_cpu_ms_per_request"] = round((after - before) * 1000 / max(requests, 1), 4)
    return report


# ---------------------------------------------------------------------------------------------- the scenario

def free_port() -> int:
    """A port free on both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def certificate(directory: Path) -> tuple[str, str]:
    import trustme

    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    return str(certfile), str(keyfile)


def wait_udp_and_tcp(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(1.0)  # the QUIC listener comes up with (or just after) the TCP one
                return
        time.sleep(0.1)
    raise TimeoutError("the server did not start")


def start_server(kind: str, port: int, certfile: str, keyfile: str, directory: Path,
                 hypercorn: str, worker_class: str = "asyncio") -> subprocess.Popen[bytes]:
    if kind == "tidegate":
        command = [sys.executable, "-m", "tidegate", "h3app:app", "--app-dir", str(directory), "--port", str(port),
                   "--ssl-certfile", certfile, "--ssl-keyfile", keyfile, "--http3", "--no-access-log",
                   "--log-level", "warning"]
    else:
        command = [hypercorn, "h3app:app", "--bind", f"127.0.0.1:{port}", "--quic-bind", f"127.0.0.1:{port}",
                   "--certfile", certfile, "--keyfile", keyfile, "--log-level", "warning", "--worker-class",
                   worker_class]
    return subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / "h3app.py").write_text(APP)
        certfile, keyfile = certificate(directory)
        runs = [("tidegate", "h3"), ("hypercorn", "h3"), ("tidegate", "h2")]
        results = []
        for server, protocol in runs:
            if server == "hypercorn" and not args.hypercorn:
                continue
            port = free_port()
            process = start_server(server, port, certfile, keyfile, directory, args.hypercorn,
                                   args.hypercorn_worker_class)
            try:
                wait_udp_and_tcp(port, process)
                url = f"https://127.0.0.1:{port}/"
                load(url, protocol, 1.0, args.connections, args.streams, args.processes, [process.pid])  # warm up
                report = load(url, protocol, args.duration, args.connections, args.streams, args.processes,
                              [process.pid])
            finally:
                stop(process)
            report["server"] = server
            results.append(report)
            print(json.dumps(report), flush=True)
        by = {(r["server"], r["protocol"]): r for r in results}
        ours = by[("tidegate", "h3")]
        for other in (("hypercorn", "h3"), ("tidegate", "h2")):
            if other in by:
                theirs = by[other]
                ratio = ours["requests_per_second"] / max(theirs["requests_per_second"], 1e-9)
                cpu = theirs["server_cpu_ms_per_request"] / max(ours["server_cpu_ms_per_request"], 1e-9)
                print(f"tidegate h3 / {other[0]} {other[1]}: {ratio:.2f}x the requests/s, "
                      f"{cpu:.2f}x the server CPU per request on their side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "compare"):
        command = sub.add_parser(name)
        command.add_argument("--duration", type=float, default=10.0)
        command.add_argument("--connections", type=int, default=8, help="connections per client process")
        command.add_argument("--streams", type=int, default=8, help="requests in flight per connection")
        command.add_argument("--processes", type=int, default=1, help="client processes")
    run = sub.choices["run"]
    run.add_argument("url")
    run.add_argument("--protocol", choices=("h3", "h2"), default="h3")
    run.add_argument("--server-pid", type=int, action="append", default=[])
    sub.choices["compare"].add_argument("--hypercorn", default="", help="hypercorn[h3]'s hypercorn script")
    sub.choices["compare"].add_argument("--hypercorn-worker-class", default="asyncio", choices=("asyncio", "uvloop"))
    args = parser.parse_args()
    if args.command == "run":
        print(json.dumps(load(args.url, args.protocol, args.duration, args.connections, args.streams,
                              args.processes, args.server_pid)))
    else:
        compare(args)


if __name__ == "__main__":
    main()

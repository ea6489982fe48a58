"""Bounded memory: does one tidegate process stay flat while its clients send and never read?

Starts ``python -m tidegate`` (this interpreter, or ``--server-cmd``) on 127.0.0.1 with a small app written to a
temporary directory, one fresh server per scenario, warms it up with a few normal exchanges and takes its RSS
(/proc/PID/status) as the baseline. Then, per scenario, CLIENTS raw non-blocking sockets:

  pipeline-never-read        pipeline up to REQUESTS ``GET /big?n=<seq>`` requests without reading; the app answers
                             each with one ``http.response.body`` of RESPONSE_SIZE bytes and echoes <seq> in ``x-n``.
                             A server that honours its write high-water mark stops reading, so the kernel stops
                             accepting the client's bytes: the script counts what it accepted in SEND_SECONDS.
                             Then the clients read, each until it holds exactly as many complete responses as it got
                             requests onto the wire (a request cut short is finished first), checking status, length
                             and the ``x-n`` order, within READ_SECONDS.
  pipeline-never-read-small  the same with a 2-byte response (``GET /small``).
  ws-ping-flood              complete a WebSocket handshake, then send masked PING frames (125-byte payload) for
                             SEND_SECONDS without ever reading; the app accepts and awaits receive() in a loop.

The server's RSS is sampled every ``--sample-interval`` seconds by a thread. Growth is the peak RSS during the
never-read phase (sending, then ``--hold-seconds`` more without reading) minus the baseline, divided by CLIENTS;
the verdict compares it with ``--limit-mib``. The exit status is 1 if a scenario went over the limit or a
pipeline's responses were not all complete and in order, 2 if a server could not be started, else 0.

A server that does not bound its buffers can eat the machine: if its RSS passes ``--max-rss-mib`` (default: the
smaller of 4 GiB and half of MemAvailable) the watcher SIGKILLs it and the scenario is over the limit.

    python benchmarks/bounded_memory.py                                   # 4 clients, 100 KB responses, 10 s
    python benchmarks/bounded_memory.py --clients 1 --send-seconds 3      # a quick look
    PYTHONPATH=/other/checkout/src python benchmarks/bounded_memory.py --server-cmd "python -m tidegate"

``--server-cmd`` must run the server in the process it starts (no wrapper that forks), since that PID's RSS is
what is measured. Everything goes to loopback, every loop is bounded in count and time, and only the PID this
script started is signalled.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import os
import resource
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

APP = '''
BODIES = {{"/big": b"x" * {size}, "/small": b"ok"}}


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = BODIES.get(scope["path"], b"ok")
        seq = b"-"
        for pair in scope["query_string"].split(b"&"):
            if pair.startswith(b"n="):
                seq = pair[2:]
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(body)).encode()), (b"x-n", seq)]}})
        await send({{"type": "http.response.body", "body": body}})
    elif scope["type"] == "websocket":
        await receive()
        await send({{"type": "websocket.accept"}})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
'''

APP_MODULE = "_bounded_memory_app"
SCENARIOS = ("pipeline-never-read", "pipeline-never-read-small", "ws-ping-flood")
RECV_SIZE = 256 * 1024
REQUESTS_PER_BLOCK = 1024
PINGS_PER_BLOCK = 512
MAX_HEAD = 64 * 1024


LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_this_script() -> None:
    """Run in the server child before exec: the kernel SIGKILLs it should this script die without cleaning up."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def rss_kib(pid: int) -> int | None:
    """The VmRSS of PID in KiB, or None once it has gone (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def mem_available_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 8192


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


class RssWatch(threading.Thread):
    """Samples the server's RSS, keeps the peak per phase, and SIGKILLs the server past the ceiling."""

    def __init__(self, server: subprocess.Popen[bytes], interval: float, ceiling_kib: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.ceiling_kib = ceiling_kib
        self.phase = "warm-up"
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self.tripped = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kib = rss_kib(self.server.pid)
            if kib is None:
                return
            self.samples += 1
            phase = self.phase
            if kib > self.peaks.get(phase, 0):
                self.peaks[phase] = kib
            if kib > self.ceiling_kib:
                self.tripped = True
                with contextlib.suppress(OSError):
                    self.server.kill()
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class Server:
    """One server process on 127.0.0.1, its output in a log file; only its own PID is ever signalled."""

    def __init__(self, command: list[str], app_dir: str, name: str) -> None:
        self.port = free_port()
        self.log_path = os.path.join(app_dir, f"server-{name}.log")
        self.command = [*command, f"{APP_MODULE}:app", "--app-dir", app_dir, "--host", "127.0.0.1", "--port",
                        str(self.port), "--no-access-log", "--log-level", "warning", "--lifespan", "off",
                        "--timeout-graceful-shutdown", "3"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        # no other thread runs here (a scenario's RSS watcher starts after this and is joined before the next)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_this_script)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self.process
                except OSError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"the server exited with {self.process.returncode}: "
                                           f"{self.log_tail()}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not listen within {timeout:.0f} s: "
                                           f"{self.log_tail()}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, size: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - size))
                return log.read().decode(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- HTTP/1.1 --------------------------------------------------------------------------------------------------


def request(path: str, seq: int, width: int) -> bytes:
    return b"GET %s?n=%0*d HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bounded-memory\r\n\r\n" % (
        path.encode(), width, seq)


class ResponseReader:
    """Parses a stream of HTTP/1.1 responses framed by content-length; checks status, size and x-n order."""

    def __init__(self, body_size: int) -> None:
        self.body_size = body_size
        self.head = bytearray()
        self.body_left = 0
        self.in_body = False
        self.complete = 0
        self.problem: str | None = None  # the first response that was not the expected one
        self.broken = False  # framing lost: nothing more can be parsed

    def feed(self, buf: bytearray, size: int) -> None:
        pos = 0
        while pos < size and not self.broken:
            if self.in_body:
                take = min(self.body_left, size - pos)
                pos += take
                self.body_left -= take
                if not self.body_left:
                    self.in_body = False
                    self.complete += 1
                continue
            if self.head:  # a head split over reads: look for its end across the seam
                old = len(self.head)
                piece = min(size - pos, 8192)
                self.head += buf[pos:pos + piece]
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    pos += piece
                    if len(self.head) > MAX_HEAD:
                        self._broken("a response head over 64 KiB")
                    continue
                pos += end + 4 - old
                head = bytes(self.head[:end])
                self.head.clear()
            else:
                end = buf.find(b"\r\n\r\n", pos, size)
                if end < 0:
                    self.head += buf[pos:size]
                    if len(self.head) > MAX_HEAD:
                        self._broken("a response head over 64 KiB")
                    return
                head = bytes(buf[pos:end])
                pos = end + 4
            self._start(head)

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        try:
            length = int(fields[b"content-length"])
        except (KeyError, ValueError):
            self._broken(f"response {self.complete} has no usable content-length: {lines[0]!r}")
            return
        if self.problem is None:
            seq = fields.get(b"x-n", b"")
            if not lines[0].startswith(b"HTTP/1.1 200 "):
                self.problem = f"response {self.complete} is {lines[0].decode(errors='replace')!r}"
            elif not seq.isdigit() or int(seq) != self.complete:
                self.problem = f"response {self.complete} carries x-n {seq.decode(errors='replace')!r}"
            elif length != self.body_size:
                self.problem = f"response {self.complete} has {length} body bytes, not {self.body_size}"
        self.body_left = length
        self.in_body = True
        if not length:
            self.in_body = False
            self.complete += 1

    def _broken(self, why: str) -> None:
        self.broken = True
        if self.problem is None:
            self.problem = why


class PipelineClient:
    """Pipelines numbered requests of one fixed length from a non-blocking socket, never reading."""

    def __init__(self, port: int, path: str, total: int, body_size: int) -> None:
        self.path = path
        self.total = total
        self.width = max(6, len(str(total)))
        self.length = len(request(path, 0, self.width))
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.reader = ResponseReader(body_size)
        self.next_seq = 0
        self.block = memoryview(b"")
        self.offset = 0
        self.sent = 0
        self.last_progress = 0.0
        self.error: str | None = None
        self.pending = b""
        self.expected = 0
        self.eof = False

    def refill(self) -> bool:
        if self.next_seq >= self.total:
            return False
        end = min(self.total, self.next_seq + REQUESTS_PER_BLOCK)
        self.block = memoryview(b"".join(request(self.path, n, self.width) for n in range(self.next_seq, end)))
        self.offset = 0
        self.next_seq = end
        return True

    def finish_sending(self) -> None:
        """Stop pipelining: the responses due are for every request begun; the rest of a cut one is still owed."""
        full, cut = divmod(self.sent, self.length)
        self.expected = full + (1 if cut else 0)
        self.pending = request(self.path, full, self.width)[cut:] if cut else b""
        self.block = memoryview(b"")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def warm_up_http(port: int, path: str, body_size: int, count: int, deadline: float) -> None:
    """COUNT requests, eight in flight at a time, each response read and checked."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = ResponseReader(body_size)
        buf = bytearray(RECV_SIZE)
        done = 0
        while done < count:
            batch = min(8, count - done)
            sock.sendall(b"".join(request(path, n, 6) for n in range(done, done + batch)))
            done += batch
            while reader.complete < done and not reader.broken:
                if time.monotonic() > deadline:
                    raise RuntimeError("warm-up did not finish in time")
                size = sock.recv_into(buf)
                if not size:
                    raise RuntimeError("the server closed the warm-up connection")
                reader.feed(buf, size)
            if reader.problem:
                raise RuntimeError(f"warm-up: {reader.problem}")


def send_until(clients: list[PipelineClient] | list[WsClient], deadline: float, watch: RssWatch) -> None:
    """Push each client's stream until the kernel stops taking it, all is sent, or the deadline passes."""
    started = time.monotonic()
    with selectors.DefaultSelector() as selector:
        for client in clients:
            selector.register(client.sock, selectors.EVENT_WRITE, client)
        while selector.get_map() and not watch.tripped and time.monotonic() < deadline:
            for key, _ in selector.select(0.1):
                client = key.data
                for _ in range(64):  # a bounded burst per wake-up, so one client cannot starve the others
                    if client.offset >= len(client.block) and not client.refill():
                        selector.unregister(client.sock)
                        break
                    try:
                        sent = client.sock.send(client.block[client.offset:])
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        client.error = f"send: {exc}"
                        selector.unregister(client.sock)
                        break
                    client.offset += sent
                    client.sent += sent
                    client.last_progress = time.monotonic() - started


def read_responses(clients: list[PipelineClient], deadline: float, watch: RssWatch) -> None:
    """Each client finishes a cut request, then reads until it has every response it is owed (or the deadline)."""
    buf = bytearray(RECV_SIZE)
    with selectors.DefaultSelector() as selector:
        for client in clients:
            if client.error is None and client.reader.complete < client.expected:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
                selector.register(client.sock, events, client)
        while selector.get_map() and not watch.tripped and time.monotonic() < deadline:
            for key, events in selector.select(0.2):
                client = key.data
                if events & selectors.EVENT_WRITE and client.pending:
                    try:
                        client.pending = client.pending[client.sock.send(client.pending):]
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        client.error = f"send: {exc}"
                        selector.unregister(client.sock)
                        continue
                    if not client.pending:
                        selector.modify(client.sock, selectors.EVENT_READ, client)
                if not events & selectors.EVENT_READ:
                    continue
                for _ in range(64):
                    try:
                        size = client.sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        client.error = f"recv: {exc}"
                        selector.unregister(client.sock)
                        break
                    if not size:
                        client.eof = True
                        selector.unregister(client.sock)
                        break
                    client.reader.feed(buf, size)
                    if client.reader.complete >= client.expected or client.reader.broken:
                        selector.unregister(client.sock)
                        break


def pipeline_verdict(clients: list[PipelineClient], started: float) -> tuple[bool, str]:
    complete = sum(min(c.reader.complete, c.expected) for c in clients)
    expected = sum(c.expected for c in clients)
    problems = [c.reader.problem for c in clients if c.reader.problem]
    extra = sum(max(0, c.reader.complete - c.expected) for c in clients)
    ok = complete == expected and not problems and not extra
    why = problems[:1] or [c.error for c in clients if c.error][:1]
    if not why and any(c.eof and c.reader.complete < c.expected for c in clients):
        why = ["the server closed a connection early"]
    detail = f"{complete:,}/{expected:,} in {time.monotonic() - started:.1f} s"
    if extra:
        detail += f", {extra} unexpected extra"
    if why:
        detail += f"; {why[0]}"
    return ok, ("yes" if ok else "no") + f" ({detail})"


# -- WebSocket ---------------------------------------------------------------------------------------------------


def masked_frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PING_PAYLOAD = bytes(range(125))
PING_FRAME_SIZE = 2 + 4 + len(PING_PAYLOAD)


def ws_handshake(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /flood HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key))
    head = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk or len(head) > MAX_HEAD or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"WebSocket handshake failed: {head[:80]!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        status = head.split(b"\r\n", 1)[0]
        raise RuntimeError(f"WebSocket handshake answered {status!r}")
    return sock


def warm_up_ws(port: int, count: int, deadline: float) -> None:
    """COUNT connections: handshake, ten pings whose pongs are read, a close."""
    for _ in range(count):
        sock = ws_handshake(port)
        try:
            sock.sendall(b"".join(masked_frame(0x9, b"warm %d" % i) for i in range(10)))
            buffer = b""
            pongs = 0
            while pongs < 10:
                if time.monotonic() > deadline:
                    raise RuntimeError("WebSocket warm-up did not finish in time")
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed the WebSocket warm-up connection")
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
                    if buffer[0] & 0x0F == 0xA:
                        pongs += 1
                    buffer = buffer[2 + (buffer[1] & 0x7F):]
            sock.sendall(masked_frame(0x8, (1000).to_bytes(2, "big")))
        finally:
            sock.close()


class WsClient:
    """Floods masked pings from a non-blocking socket, never reading."""

    def __init__(self, port: int) -> None:
        self.sock = ws_handshake(port)
        self.sock.setblocking(False)
        self.block = memoryview(b"".join(masked_frame(0x9, PING_PAYLOAD) for _ in range(PINGS_PER_BLOCK)))
        self.offset = 0
        self.sent = 0
        self.last_progress = 0.0
        self.error: str | None = None

    def refill(self) -> bool:
        self.offset = 0  # the block is whole frames, so it repeats seamlessly
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- scenarios ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    name: str
    failed: str | None = None
    before: int = 0  # KiB, after the warm-up
    peak: int = 0  # KiB, highest sample while the clients did not read
    after_send: int | None = None  # KiB, when the never-read phase ended
    peak_read: int | None = None  # KiB, highest sample while the pipelines read
    after: int | None = None  # KiB, once the clients closed
    samples: int = 0
    tripped: bool = False
    sent: str = "-"
    detail: str = ""
    in_order: bool | None = None
    responses: str = ""
    exited: str = ""


def run_scenario(name: str, args: argparse.Namespace, command: list[str], app_dir: str, ceiling_kib: int) -> Result:
    result = Result(name)
    server = Server(command, app_dir, name)
    process = server.start()
    watch = RssWatch(process, args.sample_interval, ceiling_kib)
    pipelines: list[PipelineClient] = []
    floods: list[WsClient] = []
    try:
        watch.start()
        warm_deadline = time.monotonic() + 30
        path, body_size = ("/small", 2) if name.endswith("-small") else ("/big", args.response_size)
        if name.startswith("pipeline"):
            warm_up_http(server.port, path, body_size, args.warmup, warm_deadline)
        else:
            warm_up_ws(server.port, max(1, args.warmup // 10), warm_deadline)
        time.sleep(args.settle)
        result.before = rss_kib(process.pid) or 0

        watch.phase = "never-read"
        if name.startswith("pipeline"):
            pipelines = [PipelineClient(server.port, path, args.requests, body_size) for _ in range(args.clients)]
            send_until(pipelines, time.monotonic() + args.send_seconds, watch)
        else:
            floods = [WsClient(server.port) for _ in range(args.clients)]
            send_until(floods, time.monotonic() + args.send_seconds, watch)
        hold_end = time.monotonic() + args.hold_seconds
        while time.monotonic() < hold_end and not watch.tripped:
            time.sleep(0.05)
        result.after_send = rss_kib(process.pid)
        watch.phase = "after"

        clients: list[PipelineClient] | list[WsClient] = pipelines or floods
        sent_bytes = sum(c.sent for c in clients)
        if pipelines:
            result.sent = f"{sum(c.sent // c.length for c in pipelines):,} requests"
        else:
            result.sent = f"{sent_bytes // PING_FRAME_SIZE:,} pings"
        stalls = ", ".join(f"{c.last_progress:.1f}" for c in clients)
        errors = [c.error for c in clients if c.error]
        result.detail = (f"the kernel took {sent_bytes / 2**20:.1f} MiB ({result.sent}); last progress per client "
                         f"at {stalls} s of {args.send_seconds:g} s" + (f"; {errors[0]}" if errors else ""))

        if pipelines and not watch.tripped:
            started = time.monotonic()
            for client in pipelines:
                client.finish_sending()
            watch.phase = "reading"
            read_responses(pipelines, started + args.read_seconds, watch)
            result.in_order, result.responses = pipeline_verdict(pipelines, started)
            watch.phase = "after"
        elif pipelines:
            result.in_order = False
            result.responses = "n/a (the server was killed at the RSS ceiling)"
        for client in clients:
            client.close()
        pipelines, floods = [], []
        time.sleep(args.settle)
        result.after = rss_kib(process.pid)
    finally:
        for client in [*pipelines, *floods]:
            client.close()
        watch.stop()
        exited = process.poll()
        server.stop()
    result.peak = max(watch.peaks.get("never-read", 0), result.after_send or 0)
    result.peak_read = watch.peaks.get("reading")
    result.samples = watch.samples
    result.tripped = watch.tripped
    if exited is not None and not watch.tripped:
        result.exited = f"the server exited with {exited}: {server.log_tail(300)}"
    return result


def report(result: Result) -> None:
    name = result.name
    print(f"{name}: {result.detail}")
    if result.after_send is None:
        line = f"{name}: the server was gone by the end of the never-read phase"
    else:
        line = f"{name}: RSS after the never-read phase {mib(result.after_send)} MiB"
    if result.peak_read:
        line += f", peak while reading {mib(result.peak_read)} MiB"
    if result.after:
        line += f", after closing {mib(result.after)} MiB"
    print(f"{line} ({result.samples} samples)")
    if result.responses:
        print(f"{name}: responses complete and in order: {result.responses}")
    if result.exited:
        print(f"{name}: {result.exited}")
    sys.stdout.flush()


def main(args: argparse.Namespace) -> int:
    command = shlex.split(args.server_cmd) if args.server_cmd else [sys.executable, "-m", "tidegate"]
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    ceiling_mib = args.max_rss_mib or min(4096, mem_available_mib() // 2)
    print(f"server: {shlex.join(command)}")
    print(f"clients {args.clients}, requests {args.requests:,}, response {args.response_size:,} B, send "
          f"{args.send_seconds:g} s + hold {args.hold_seconds:g} s, read {args.read_seconds:g} s, limit "
          f"{args.limit_mib:g} MiB/client, RSS ceiling {ceiling_mib} MiB", flush=True)
    app_dir = tempfile.mkdtemp(prefix="bounded-memory-")
    results: list[Result] = []
    try:
        with open(os.path.join(app_dir, f"{APP_MODULE}.py"), "w") as f:
            f.write(APP.format(size=args.response_size))
        for name in names:
            try:
                result = run_scenario(name, args, command, app_dir, ceiling_mib * 1024)
            except (OSError, RuntimeError) as exc:
                print(f"{name}: failed: {exc}", flush=True)
                results.append(Result(name, failed=str(exc)))
                continue
            results.append(result)
            report(result)
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)

    status = 0
    print()
    print("| scenario | sent, never read | RSS before | RSS peak | growth | per client | verdict | in order |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for result in results:
        if result.failed:
            status = 2
            print(f"| {result.name} | failed | | | | | | |")
            continue
        growth = max(0, result.peak - result.before) / 1024
        per_client = growth / args.clients
        over = per_client > args.limit_mib or result.tripped
        verdict = "OVER" if over else "ok"
        if result.tripped:
            verdict += f" (killed at the {ceiling_mib} MiB ceiling)"
        in_order = "-" if result.in_order is None else "yes" if result.in_order else "no"
        if (over or result.in_order is False) and status == 0:
            status = 1
        print(f"| {result.name} | {result.sent} | {mib(result.before)} MiB | {mib(result.peak)} MiB | "
              f"{growth:.1f} MiB | {per_client:.2f} MiB | {verdict} | {in_order} |")
    print(f"\n(this script's own peak RSS: {mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)} MiB)")
    return status


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: %(default)s")
    parser.add_argument("--clients", type=int, default=4, help="connections per scenario")
    parser.add_argument("--requests", type=int, default=100_000, help="most requests pipelined per client")
    parser.add_argument("--response-size", type=int, default=100_000, help="body bytes of each /big response")
    parser.add_argument("--send-seconds", type=float, default=10.0, help="how long the clients send, never reading")
    parser.add_argument("--hold-seconds", type=float, default=2.0,
                        help="how long the clients go on not reading after they stop sending")
    parser.add_argument("--read-seconds", type=float, default=60.0, help="how long the clients may take to read")
    parser.add_argument("--limit-mib", type=float, default=1.0, help="largest acceptable RSS growth per client")
    parser.add_argument("--max-rss-mib", type=int, default=0,
                        help="SIGKILL the server past this RSS [default: min(4096, MemAvailable / 2)]")
    parser.add_argument("--warmup", type=int, default=32, help="requests (WebSocket: tenths of connections) first")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds before the baseline and after closing")
    parser.add_argument("--sample-interval", type=float, default=0.02, help="seconds between RSS samples")
    parser.add_argument("--server-cmd", default=None,
                        help="how to start the server, shell-quoted; the app, --host, --port etc. are appended "
                             "[default: this interpreter -m tidegate]")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.response_size < 0:
        parser.error("--clients and --requests must be positive, --response-size not negative")
    return args


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally clauses, which stop the server


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    sys.exit(main(parse()))

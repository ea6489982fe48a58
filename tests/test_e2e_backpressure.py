"""Back-pressure that holds whatever the client does, against a real ``python -m tidegate`` process whose RSS is
read from /proc: a client that pipelines and never reads, one that reads only after a pause, a WebSocket client
that floods pings and never reads.  Every app call runs to completion.

The app reports on itself at ``/stats`` (from another connection): how many calls started, how many finished their
code after the last ``send()``, how many wait in that ``send()``, and the process's RSS.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .ops_helpers import Proc, serving_url

APP = '''
import asyncio
import os

stats = {"started": 0, "done": 0, "in_send": 0, "held": 0}
release = asyncio.Event()
BIG = b"x" * 100_000
HUGE = b"x" * 1_000_000


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":  # reads its body only once /release is asked for
        stats["held"] += 1
        await release.wait()
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/release":
        release.set()
    if scope["path"] in ("/stats", "/release"):
        body = ('{"started": %d, "done": %d, "in_send": %d, "held": %d, "rss": %d}'
                % (stats["started"], stats["done"], stats["in_send"], stats["held"], rss_kib())).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    stats["started"] += 1
    n = scope["query_string"].decode().partition("n=")[2]
    body = {"/big": BIG, "/huge": HUGE}.get(scope["path"], b"ok")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), (b"x-n", n.encode())]})
    stats["in_send"] += 1
    try:
        await send({"type": "http.response.body", "body": body})
    finally:
        stats["in_send"] -= 1
    stats["done"] += 1  # the step after the last send (a background task, a cleanup)
'''

MIB = 1024
#: how long a stats request may wait: right after a flood (600,000 one-byte HTTP/2 frames, say) the server is still
#: working through it, a loop pass per read; the pure build under coverage on a slow machine has taken over 10 s
STATS_TIMEOUT = 60.0


#: the raw client sockets the running test opened (see connect)
_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    """Every raw client socket a test opened is closed when it ends, passed or failed: a failure is then reported
    once, as itself, not again by the next test as an unclosed socket."""
    yield
    while _opened:
        _opened.pop().close()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    _opened.append(sock)
    return sock


@pytest.fixture
def server(tmp_path: Path) -> Any:
    (tmp_path / "bpapp.py").write_text(APP)
    proc = Proc(["bpapp:app", "--port", "0", "--no-access-log", "--lifespan", "off", "--timeout-write", "60"],
                cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    try:
        url = serving_url(proc)
        yield int(url.rsplit(":", 1)[1])
    finally:
        proc.stop()
    assert "was destroyed but it is pending" not in proc.output


def stats(port: int, path: str = "/stats") -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=STATS_TIMEOUT) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    result: dict[str, int] = json.loads(data.partition(b"\r\n\r\n")[2])
    return result


def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send as much of ``data`` as the server takes within ``seconds``; the bytes sent."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        _, writable, _ = select.select([], [sock], [], remaining)
        if writable:
            sent += sock.send(view[sent:])
    sock.setblocking(True)
    return sent


def watch_rss(port: int, seconds: float, until: Any) -> tuple[int, dict[str, int]]:
    """The highest RSS (KiB) the server reports over ``seconds`` (sampled every 0.1 s, stopping early once
    ``until(stats)``), and the last stats.  This bounds an observation, it does not wait for an outcome."""
    peak = 0
    deadline = time.monotonic() + seconds
    while True:
        now = stats(port)
        peak = max(peak, now["rss"])
        if until(now) or time.monotonic() >= deadline:
            return peak, now
        time.sleep(0.1)


def read_responses(sock: socket.socket, count: int, timeout: float = 30.0) -> list[int]:
    """Read ``count`` responses (content-length bodies); their x-n values in order."""
    sock.settimeout(timeout)
    buffer = b""
    numbers: list[int] = []
    while len(numbers) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(buffer) >= head_end + 4 + length:
                numbers.append(int(head.split(b"x-n: ")[1].split(b"\r\n")[0]))
                buffer = buffer[head_end + 4 + length:]
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError(f"the server closed after {len(numbers)} responses")
        buffer += chunk
    return numbers


def wait_for_stats(port: int, predicate: Any, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = stats(port)
        if predicate(now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.05)


def pipelined(count: int, path: str = "/big") -> bytes:
    return b"".join(b"GET %s?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (path.encode(), i) for i in range(count))


def test_a_pipelining_client_that_never_reads_costs_bounded_memory(server: Any) -> None:
    # 2 x 2,000 pipelined requests for 100 KB responses sent as one body each: 400 MB if answered ahead
    port = server
    count = 2000
    base = stats(port)["rss"]
    clients = []
    for _ in range(2):
        sock = connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sent = send_for(sock, pipelined(count), 5.0)
        clients.append((sock, sent))
    peak, now = watch_rss(port, 1.5, lambda s: False)
    growth = peak - base
    assert growth < 24 * MIB, f"the server grew by {growth / MIB:.1f} MiB for two clients that never read"
    assert now["started"] < 2 * count  # it waits for the clients, it does not answer ahead of them
    # the clients read at last: every response, in order, none lost
    total = 0
    for sock, sent in clients:
        requests = pipelined(count)[:sent].count(b"\r\n\r\n")
        assert read_responses(sock, requests) == list(range(requests))
        total += requests
        sock.close()
    final = wait_for_stats(port, lambda s: s["done"] >= total)
    assert final["done"] == final["started"] == total  # every app call ran its code after the last send()
    assert final["in_send"] == 0


def test_every_app_call_resumes_after_its_last_send(server: Any) -> None:
    # an ordinary client: it pipelines 30 requests (for 30 MB, more than the kernel's buffers hold) and reads once
    # it has sent them all and the server waits on it
    port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(pipelined(30, "/huge"))
        stalled = wait_for_stats(port, lambda s: s["in_send"] >= 1 or s["done"] == 30)
        assert stalled["done"] < 30  # the client's pause made the server wait
        assert read_responses(sock, 30) == list(range(30))
    final = wait_for_stats(port, lambda s: s["done"] == 30)
    assert final["done"] == final["started"] == 30
    assert final["in_send"] == 0


def websocket(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A raw socket past a WebSocket handshake on /ws (``receive_buffer``: the socket's, set before it)."""
    sock = connect(port)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def test_a_websocket_ping_flood_that_never_reads_costs_bounded_memory(server: Any) -> None:
    port = server
    base = stats(port)["rss"]
    sock = websocket(port, receive_buffer=65536)
    ping = masked_frame(0x9, b"p" * 125)
    flood = ping * 2000  # 262 KB of pings per send, 250 KB of pongs owed for each
    sent = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        part = send_for(sock, flood, deadline - time.monotonic())
        sent += part
        if part < len(flood):
            break  # the server stopped reading
    peak, _ = watch_rss(port, 1.0, lambda s: False)
    growth = peak - base
    assert growth < 16 * MIB, f"the server grew by {growth / MIB:.1f} MiB for {sent // len(ping)} pings"
    assert sent < 64 * len(flood)  # it stopped reading long before the client stopped sending
    sock.close()
    assert stats(port)["rss"] > 0  # still serving everyone else


def send_all_for(socks: list[socket.socket], data: bytes, seconds: float) -> list[int]:
    """Send ``data`` on every socket, as far as the server takes it within ``seconds``; the bytes sent on each."""
    sent = [0] * len(socks)
    for sock in socks:
        sock.setblocking(False)
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        busy = [sock for sock, done in zip(socks, sent, strict=True) if done < len(data)]
        if remaining <= 0 or not busy:
            break
        _, writable, _ = select.select([], busy, [], remaining)
        for sock in writable:
            i = socks.index(sock)
            sent[i] += sock.send(data[sent[i]:sent[i] + 65536])
    for sock in socks:
        sock.setblocking(True)
    return sent


def test_a_body_in_one_byte_chunks_to_an_app_that_does_not_read_costs_its_bytes_not_a_piece_each(server: Any) -> None:
    # 8 clients send 1-byte chunks to an app that does not read: the server stops reading each at the request
    # buffer (64 KiB), whose memory is its bytes, not tens of bytes of bookkeeping per piece (nor an event per
    # chunk for the length of a read)
    port = server
    base = stats(port)["rss"]
    socks = [connect(port) for _ in range(8)]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST /hold HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    flood = b"1\r\nz\r\n" * 2_000_000  # 12 MB for 2 MB of body: more than the kernel's buffers hold
    sent = send_all_for(socks, flood, 4.0)
    peak, now = watch_rss(port, 1.0, lambda s: False)
    growth = peak - base
    assert now["held"] == len(socks)
    assert all(count < len(flood) for count in sent)  # the server stopped reading every one
    assert growth < 2 * MIB, f"the server grew by {growth / MIB:.1f} MiB for {len(socks)} clients' 1-byte chunks"
    stats(port, "/release")  # the app reads at last: every byte sent arrives
    for sock, count in zip(socks, sent, strict=True):
        chunks = -(-count // 6)  # the last one perhaps cut: its end is sent now
        sock.sendall(flood[count:chunks * 6] + b"0\r\n\r\n")
        response = b""
        while not response.endswith(b"\r\n\r\n" + str(chunks).encode()):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the answer ({response!r})"
            response += chunk
        sock.close()


def test_a_message_in_a_million_one_byte_fragments_costs_its_size(server: Any) -> None:
    # a message's memory is bounded by its size (--ws-max-size), whatever its fragmentation: ~55 bytes of
    # bookkeeping per fragment would make these 1 M one-byte fragments cost 55 MB
    port = server
    base = stats(port)["rss"]
    sock = websocket(port)
    fragment = bytes((0x00, 0x81)) + b"\x00\x00\x00\x00" + b"z"  # a continuation, not final, 1 byte
    data = bytes((0x02, 0x81)) + b"\x00\x00\x00\x00" + b"a" + fragment * 1_000_000
    sent = send_for(sock, data, 20.0)
    assert sent == len(data)
    peak, _ = watch_rss(port, 1.0, lambda s: False)
    growth = peak - base
    assert growth < 8 * MIB, f"the server grew by {growth / MIB:.1f} MiB for one message in 1 M fragments"
    sock.sendall(bytes((0x80, 0x81)) + b"\x00\x00\x00\x00" + b"!")  # the last fragment: the message is whole
    sock.sendall(bytes((0x88, 0x82)) + b"\x00\x00\x00\x00" + b"\x03\xe8")
    assert sock.recv(16)[:1] == b"\x88"  # the close is answered: everything before it was taken
    sock.close()


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def h2_frames(sock: socket.socket, buffer: bytearray) -> tuple[int, int, int, bytes]:
    """The next frame the server sent: (type, flags, stream id, payload)."""
    while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk
    size = int.from_bytes(buffer[:3], "big")
    frame = (buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF, bytes(buffer[9:9 + size]))
    del buffer[:9 + size]
    return frame


def test_http2_bodies_in_one_byte_data_frames_cost_their_bytes(server: Any) -> None:
    # 20 streams, each sending 30,000 one-byte DATA frames (within its window) to an app that does not read yet:
    # what waits is 30 KB a stream, not a piece object per frame
    from hpack import Encoder

    port = server
    base = stats(port)["rss"]
    streams = list(range(1, 41, 2))
    count = 30_000
    encoder = Encoder()
    sock = connect(port, timeout=30)
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0)
    for stream_id in streams:
        block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/hold"),
                                (":authority", "t")])
        out += h2_frame(0x1, 0x4, stream_id, block)  # END_HEADERS, the body follows
    sock.sendall(out)
    for stream_id in streams:
        sock.sendall(h2_frame(0x0, 0, stream_id, b"z") * count)
    peak, now = watch_rss(port, 1.0, lambda s: False)
    growth = peak - base
    assert now["held"] == len(streams)
    assert growth < 4 * MIB, f"the server grew by {growth / MIB:.1f} MiB for {len(streams) * count} DATA frames"
    stats(port, "/release")
    sock.sendall(b"".join(h2_frame(0x0, 0x1, stream_id) for stream_id in streams))  # END_STREAM
    bodies: dict[int, bytes] = {}
    ended: set[int] = set()
    buffer = bytearray()
    while ended != set(streams):
        kind, flags, stream_id, payload = h2_frames(sock, buffer)
        if kind == 0x0 and stream_id:
            bodies[stream_id] = bodies.get(stream_id, b"") + payload
        if kind in (0x0, 0x1) and flags & 0x1 and stream_id:
            ended.add(stream_id)
        assert kind != 0x3 and kind != 0x7, f"stream reset or GOAWAY: {payload!r}"
    assert all(bodies[stream_id] == str(count).encode() for stream_id in streams)
    sock.close()

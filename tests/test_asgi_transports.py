"""One ASGI behaviour suite, parametrised over the four transports.

Every behaviour is written once, as an app (on the server's loop) and a client script (in the test thread), and runs
over each transport it applies to: HTTP/1.1 (h11 over a socket), HTTP/2 with prior knowledge (h2 over a socket),
WebSocket over HTTP/1.1 (the ``websockets`` sync client) and WebSocket over HTTP/2 (RFC 8441 extended CONNECT, h2
for the stream and the ``websockets`` sans-IO protocol for the frames).

Two small adapters make that possible:

- the app side, :class:`Channel`: *pieces* in (request body chunks / messages), *pieces* out (response body chunks /
  messages), an end (the end of the request body / a text message ``"end"``) and the final send (the last body
  chunk / ``websocket.close``);
- the client side, :class:`Session` and its four implementations, with the same verbs.

Over HTTP a body keeps no piece boundaries, so bodies are compared joined; over WebSocket messages are compared one
by one.  Nothing here sleeps to synchronise: the app reports to the test through :class:`Reports` (waited on with a
timeout) and the test lets the app go on through :class:`~tests.apps.Gate`.  Every wait has a timeout and every loop
a bound.  Durations decide something in two places only: the write-deadline test runs the server with a real
``timeout_write=1`` (and waits for its effect on an event, generously), and :meth:`TCPFlood.wait_paused`: a TCP
client knows it is held back only by seeing no progress for a while; a slow machine can only make that check weaker,
never fail it.  No assertion is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side
from websockets.sync.client import connect as ws_connect

from tidegate.asgi.errors import ClientDisconnected

from .apps import Gate
from .conftest import LogRecords, ServerThread

TIMEOUT = 10.0
# a piece of a big transfer: its index as 4 bytes, repeated (so order and loss show)
PIECE = 65536
# how long a TCP flooder must make no progress before we call it held back (see TCPFlood.wait_paused)
STALL = 0.5
# small client socket buffers: less for the kernel to hold, so back-pressure reaches the server sooner
CLIENT_BUFFER = 131072

HTTP = ["http1", "http2"]
WEBSOCKET = ["ws-http1", "ws-http2"]
ALL = HTTP + WEBSOCKET

CANCEL = h2.errors.ErrorCodes.CANCEL


def error_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


def piece(i: int, size: int = PIECE) -> bytes:
    return struct.pack(">I", i) * (size // 4)


def digest(pieces: list[bytes]) -> str:
    return hashlib.sha256(b"".join(pieces)).hexdigest()


# ==================================================================================================== app → test


class Reports:
    """What apps on the server's loop tell the test thread: (kind, value) items, waited for with a timeout."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._changed = threading.Condition()

    def put(self, kind: str, value: Any = None) -> None:
        with self._changed:
            self.items.append((kind, value))
            self._changed.notify_all()

    def values(self, kind: str) -> list[Any]:
        with self._changed:
            return [value for got, value in self.items if got == kind]

    def has(self, kind: str) -> bool:
        return bool(self.values(kind))

    def wait(self, kind: str, count: int = 1, timeout: float = TIMEOUT) -> Any:
        """The ``count``-th value reported as ``kind`` (TimeoutError if it does not come in time, AssertionError at
        once if an app failed)."""

        def ready() -> bool:
            kinds = [got for got, _ in self.items]
            return "app failed" in kinds or kinds.count(kind) >= count

        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise TimeoutError(f"the app did not report {kind!r} #{count} in {timeout}s; it said {self.items!r}")
            failures = [value for got, value in self.items if got == "app failed"]
            assert not failures, "the app failed:\n" + "\n".join(failures)
            return [value for got, value in self.items if got == kind][count - 1]

    def guard(self, app: Any) -> Any:
        """``app``, whose exceptions (its failed assertions) are reported before the server sees them."""

        async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            except Exception:
                self.put("app failed", traceback.format_exc())
                raise

        return guarded


# ==================================================================================================== app side


class End:
    """The client said it has nothing more to send (end of the request body / the text message ``"end"``)."""

    def __repr__(self) -> str:
        return "END"


END = End()


@dataclass
class Disconnected:
    """``http.disconnect`` (code None) or ``websocket.disconnect``."""

    code: int | None
    reason: str = ""


class Channel:
    """The app's view of one exchange, the same over HTTP and WebSocket."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.websocket = scope["type"] == "websocket"
        self._receive = receive
        self._send = send
        self._started = False
        self._end_pending = False
        self._body_done = False

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    async def open(self) -> None:
        """WebSocket: take the connect message and accept.  HTTP: nothing (the response starts with a send)."""
        if self.websocket:
            message = await self._receive()
            assert message["type"] == "websocket.connect", message
            await self._send({"type": "websocket.accept"})

    async def receive(self) -> bytes | End | Disconnected:
        """The next piece, END, or Disconnected."""
        if self.websocket:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return Disconnected(message.get("code"), message.get("reason") or "")
            if message.get("text") is not None:
                return END if message["text"] == "end" else message["text"].encode()
            return bytes(message["bytes"])
        if self._end_pending:
            self._end_pending = False
            return END
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return Disconnected(None)
            assert message["type"] == "http.request", message
            assert not self._body_done, "http.request after the end of the body"
            body = bytes(message.get("body", b""))
            more = message.get("more_body", False)
            if not more:
                self._body_done = True
                if body:
                    self._end_pending = True
                    return body
                return END
            if body:
                return body

    async def receive_all(self) -> list[bytes]:
        """Every piece up to END (AssertionError on a disconnect)."""
        pieces = []
        while True:
            item = await self.receive()
            if isinstance(item, End):
                return pieces
            assert not isinstance(item, Disconnected), item
            pieces.append(item)

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self._send({"type": "http.response.start", "status": 200,
                              "headers": [(b"content-type", b"application/octet-stream")]})

    async def send(self, data: bytes) -> None:
        """One piece."""
        if self.websocket:
            await self._send({"type": "websocket.send", "bytes": data})
        else:
            await self._start()
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self) -> None:
        """The final send: the end of the response body / a close frame (1000)."""
        if self.websocket:
            await self._send({"type": "websocket.close", "code": 1000})
        else:
            await self._start()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_watched(channel: Channel, data: bytes, on_wait: Callable[[], None]) -> None:
    """``channel.send(data)``, calling ``on_wait()`` if the send waits for the client.

    The exchange awaits nothing but the stream's drain (tidegate.asgi.http / .websocket), and a drain that need not
    wait returns at once: a send still pending after the loop went round a few times waits for the client."""
    task = asyncio.ensure_future(channel.send(data))
    for _ in range(20):
        if task.done():
            break
        await asyncio.sleep(0)  # one turn of the loop, not a duration
    if not task.done():
        on_wait()
    await task


# ==================================================================================================== client side


class Session:
    """The client's view of one exchange (one request, one WebSocket), the same verbs on every transport."""

    name = ""
    #: messages keep their boundaries (WebSocket); a body does not (HTTP)
    framed = False
    #: pieces a flood sends: more than every buffer between the client and the app can hold, when the only way a
    #: client learns it is held back is a TCP socket that stops taking bytes
    flood_pieces = 512
    #: the close code the server sent (WebSocket)
    close_code: int | None = None
    #: what :meth:`wait_dropped` may say when the server drops the exchange
    drops: tuple[str, ...] = ()

    def send_piece(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Nothing more to send: end the request body / send the text message ``"end"``."""
        raise NotImplementedError

    def receive_piece(self) -> bytes | None:
        """The next piece, None at the end (the body's end / the server's close frame); EOFError if the server
        dropped the exchange instead."""
        raise NotImplementedError

    def abort(self) -> None:
        """The client goes away: HTTP/1.1 and WebSocket over HTTP/1.1 close the connection, HTTP/2 resets the
        stream."""
        raise NotImplementedError

    def drop(self) -> None:
        """The client's whole TCP connection goes at once, with a reset (SO_LINGER 0), on every transport."""
        raise NotImplementedError

    def wait_dropped(self) -> str:
        """Read (and throw away) whatever comes until the exchange ends; say how it did (see :attr:`drops`)."""
        raise NotImplementedError

    def wait_connection_closed(self) -> None:
        """Read until the server closes the connection (the caller then closes its end, as clients do)."""
        raise NotImplementedError

    def flood(self, pieces: list[bytes]) -> int:
        """Send ``pieces`` until the server stops taking them; return how many bytes went."""
        raise NotImplementedError

    def finish_flood(self) -> None:
        """Send the rest of the flood (the server takes it again), then the end."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ built on the verbs

    def receive_all(self, limit: int = 100_000) -> list[bytes]:
        pieces = []
        for _ in range(limit):
            data = self.receive_piece()
            if data is None:
                return pieces
            pieces.append(data)
        raise AssertionError(f"more than {limit} pieces")

    def receive_bytes(self, size: int) -> bytes:
        """Exactly ``size`` bytes of what the app sends (over WebSocket: one message)."""
        data = b""
        for _ in range(size + 1):
            if len(data) >= size:
                break
            more = self.receive_piece()
            assert more is not None, f"the response ended after {len(data)} of {size} bytes"
            data += more
        assert len(data) == size, f"{len(data)} bytes, not {size}"
        return data


def tcp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_BUFFER)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` send a TCP reset, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def drain_socket(sock: socket.socket, limit: int = 100_000) -> str:
    """Read until the peer closes (or resets) the connection."""
    try:
        for _ in range(limit):
            if not sock.recv(65536):
                return "connection closed"
    except ConnectionResetError:
        return "connection reset"
    raise AssertionError("the connection stayed open")


class TCPFlood:
    """Send pieces from a thread over a blocking TCP socket; the test thread sees when the server stops taking them."""

    def __init__(self, send_one: Callable[[bytes], None], pieces: list[bytes]) -> None:
        self.sent = 0
        self.finished = False
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._send_one = send_one
        self._pieces = pieces
        self._thread = threading.Thread(target=self._run, name="tcp-flood", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for data in self._pieces:
                self._send_one(data)
                with self._changed:
                    self.sent += len(data)
                    self._changed.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def wait_paused(self) -> int:
        """Bytes sent once the sender made no progress for STALL seconds (all of them if it never stopped).

        A server that keeps reading lets the thread finish, whatever the machine's speed: that is what fails the
        test.  A server that stops reading leaves the thread blocked in ``send``: no progress."""
        with self._changed:
            for _ in range(len(self._pieces) + 2):
                if self.finished:
                    break
                if not self._changed.wait(STALL) and not self.finished:
                    break
            if self.error is not None:
                raise self.error
            return self.sent

    def join(self) -> None:
        self._thread.join(TIMEOUT * 3)
        assert not self._thread.is_alive(), f"the flood is stuck after {self.sent} bytes"
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------------------------------------------- HTTP/1.1


class TCPSession(Session):
    """A session alone on its TCP connection: a flood learns it is held back when the socket stops taking bytes."""

    _flood: TCPFlood | None = None

    def flood(self, pieces: list[bytes]) -> int:
        self._flood = TCPFlood(self.send_piece, pieces)
        return self._flood.wait_paused()

    def finish_flood(self) -> None:
        assert self._flood is not None
        self._flood.join()
        self.end()


class H1Session(TCPSession):
    """One POST with a chunked body, made and read by h11 over a socket."""

    name = "http1"
    drops = ("connection closed", "connection reset")  # in the middle of a chunked body

    def __init__(self, port: int, path: str) -> None:
        self.sock = tcp_socket(port)
        self.conn = h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self._write(h11.Request(method="POST", target=path, headers=[
            ("Host", "localhost"), ("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")]))

    def _write(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def send_piece(self, data: bytes) -> None:
        self._write(h11.Data(data=data))

    def end(self) -> None:
        self._write(h11.EndOfMessage())

    def receive_piece(self) -> bytes | None:
        for _ in range(1_000_000):
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    raise EOFError("the server closed the connection")
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                self.status = event.status_code
                assert self.status == 200, event
            elif isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return None
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the server closed the connection")
        raise AssertionError("no end to the response")

    def abort(self) -> None:
        self.sock.close()

    def drop(self) -> None:
        reset_on_close(self.sock)
        self.sock.close()

    def wait_dropped(self) -> str:
        return drain_socket(self.sock)

    def wait_connection_closed(self) -> None:
        drain_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------------------- HTTP/2


class StreamReset(EOFError):
    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset with {error_name(code)}")
        self.code = code


class H2Wire:
    """An h2 client connection over a socket, its events sorted per stream.

    The server's frames are split here and given to h2 one by one, because h2 takes nothing after a GOAWAY while a
    graceful shutdown goes on answering the open streams: past a GOAWAY, DATA and RST_STREAM frames are read raw
    (and the few bytes we still send are written raw)."""

    def __init__(self, port: int) -> None:
        self.sock = tcp_socket(port)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.buffer = b""
        self.goaway: tuple[int, int] | None = None
        self.closed = False
        self.streams: dict[int, deque[tuple[Any, ...]]] = {}
        self.pings: list[bytes] = []
        self.settings = False
        self.conn.initiate_connection()
        self.flush()
        self.until(lambda: self.settings)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def queue(self, stream_id: int) -> deque[tuple[Any, ...]]:
        return self.streams.setdefault(stream_id, deque())

    def pump(self) -> None:
        """Read once from the socket (at most TIMEOUT); EOFError once the server closed the connection."""
        if self.closed:
            raise EOFError("the server closed the connection")
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise EOFError("the server closed the connection")
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            frame, self.buffer = self.buffer[:9 + length], self.buffer[9 + length:]
            if self.goaway is None:
                self._take(self.conn.receive_data(frame))
            else:
                self._take_raw(frame)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the EOF is for the next read to see
            self.flush()

    def _take(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings = True
            elif isinstance(event, h2.events.ResponseReceived):
                self.queue(event.stream_id).append(("head", dict(event.headers)))
            elif isinstance(event, h2.events.DataReceived):
                if event.flow_controlled_length:
                    try:  # reading gives the window back
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    except h2.exceptions.StreamClosedError:
                        pass
                self.queue(event.stream_id).append(("data", event.data))
            elif isinstance(event, h2.events.StreamEnded):
                self.queue(event.stream_id).append(("end",))
            elif isinstance(event, h2.events.StreamReset):
                self.queue(event.stream_id).append(("reset", int(event.error_code)))
            elif isinstance(event, h2.events.PingAckReceived):
                self.pings.append(event.ping_data)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = (event.last_stream_id, int(event.error_code))

    def _take_raw(self, frame: bytes) -> None:
        ftype, flags = frame[3], frame[4]
        stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        payload = frame[9:]
        if ftype == 0x0:  # DATA
            if flags & 0x8:  # PADDED
                payload = payload[1:len(payload) - payload[0]]
            if payload:
                self.queue(stream_id).append(("data", payload))
            if flags & 0x1:
                self.queue(stream_id).append(("end",))
        elif ftype == 0x3:  # RST_STREAM
            self.queue(stream_id).append(("reset", int.from_bytes(payload[:4], "big")))

    def send_raw_data(self, stream_id: int, data: bytes, end: bool) -> None:
        """DATA frames past a GOAWAY (h2 sends nothing then): only a few bytes, well within the windows."""
        chunks = [data[i:i + 16384] for i in range(0, len(data), 16384)] or [b""]
        for i, chunk in enumerate(chunks):
            flags = 0x1 if end and i == len(chunks) - 1 else 0
            self.sock.sendall(len(chunk).to_bytes(3, "big") + bytes((0x0, flags)) + stream_id.to_bytes(4, "big")
                              + chunk)

    def until(self, condition: Callable[[], bool], limit: int = 100_000) -> None:
        for _ in range(limit):
            if condition():
                return
            self.pump()
        raise AssertionError("the condition did not come to hold")

    def ping(self, payload: bytes) -> None:
        """A PING round trip: whatever the server sent before answering it has been read."""
        self.conn.ping(payload)
        self.flush()
        self.until(lambda: payload in self.pings)
        self.pings.remove(payload)

    def close(self) -> None:
        self.sock.close()


class H2StreamSession(Session):
    """What the HTTP/2 sessions share: one stream on a connection of its own, sending within the windows."""

    flood_pieces = 64  # h2's windows hold back the client without any doubt: this is far past them
    drops = ("stream reset CANCEL", "connection closed")

    def __init__(self, port: int) -> None:
        self.wire = H2Wire(port)
        self.stream_id = self.wire.conn.get_next_available_stream_id()
        self.headers: dict[bytes, bytes] = {}
        self._unsent = b""

    def next_event(self) -> tuple[Any, ...]:
        queue = self.wire.queue(self.stream_id)
        self.wire.until(lambda: bool(queue))
        return queue.popleft()

    def send_stream(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` on the stream, waiting (reading) for window as needed."""
        wire = self.wire
        if wire.goaway is not None:
            wire.send_raw_data(self.stream_id, data, end)
            return
        offset = 0
        for _ in range(len(data) + 1):
            if offset >= len(data):
                break
            offset += self._send_within_window(data[offset:])
            if offset < len(data):
                self._wait_window()
        if end:
            wire.conn.end_stream(self.stream_id)
        wire.flush()

    def _send_within_window(self, data: bytes) -> int:
        conn = self.wire.conn
        sent = 0
        for _ in range(len(data) + 1):
            size = min(conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size,
                       len(data) - sent)
            if size <= 0:
                break
            conn.send_data(self.stream_id, data[sent:sent + size])
            sent += size
        self.wire.flush()
        return sent

    def _wait_window(self) -> None:
        queue = self.wire.queue(self.stream_id)

        def ready() -> bool:
            if any(event[0] == "reset" for event in queue):
                raise StreamReset(self.stream_id, next(e for e in queue if e[0] == "reset")[1])
            return self.wire.conn.local_flow_control_window(self.stream_id) > 0

        self.wire.until(ready)

    def abort(self) -> None:
        try:
            self.wire.conn.reset_stream(self.stream_id, CANCEL)
        except h2.exceptions.StreamClosedError:
            return  # the exchange was over already
        self.wire.flush()

    def drop(self) -> None:
        reset_on_close(self.wire.sock)
        self.wire.sock.close()

    def wait_dropped(self) -> str:
        for _ in range(1_000_000):
            try:
                event = self.next_event()
            except EOFError:
                return "connection closed"
            if event[0] == "reset":
                return f"stream reset {error_name(event[1])}"
        raise AssertionError("the stream was not dropped")

    def wait_connection_closed(self) -> None:
        with pytest.raises(EOFError):
            self.wire.until(lambda: False)

    def flood(self, pieces: list[bytes]) -> int:
        """Send within the windows until they are shut, then check with a PING round trip that the server gave no
        window back for what it got: it holds us back."""
        data = self._wire_bytes(pieces)
        sent = 0
        for i in range(len(data) + 1):
            sent += self._send_within_window(data[sent:])
            if sent >= len(data):
                break
            self.wire.ping(struct.pack(">Q", i))
            if self.wire.conn.local_flow_control_window(self.stream_id) <= 0:
                break
        self._unsent = data[sent:]
        return sent

    def finish_flood(self) -> None:
        self.send_stream(self._unsent)
        self._unsent = b""
        self.end()

    def _wire_bytes(self, pieces: list[bytes]) -> bytes:
        return b"".join(pieces)

    def close(self) -> None:
        self.wire.close()


class H2Session(H2StreamSession):
    """One POST on a stream of its own connection."""

    name = "http2"

    def __init__(self, port: int, path: str) -> None:
        super().__init__(port)
        self.wire.conn.send_headers(self.stream_id, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"localhost"),
            (b"content-type", b"application/octet-stream")])
        self.wire.flush()

    def send_piece(self, data: bytes) -> None:
        self.send_stream(data)

    def end(self) -> None:
        self.send_stream(b"", end=True)

    def receive_piece(self) -> bytes | None:
        for _ in range(1_000_000):
            event = self.next_event()
            if event[0] == "head":
                self.headers = event[1]
                assert self.headers[b":status"] == b"200", self.headers
            elif event[0] == "data":
                if event[1]:
                    return bytes(event[1])
            elif event[0] == "end":
                return None
            elif event[0] == "reset":
                raise StreamReset(self.stream_id, event[1])
        raise AssertionError("no end to the response")


# ---------------------------------------------------------------------------------------------------- WebSocket


class WSH1Session(TCPSession):
    """The websockets sync client, on a socket with small buffers."""

    name = "ws-http1"
    framed = True
    drops = ("connection closed without a close frame",)

    def __init__(self, port: int, path: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(ws_connect(
            f"ws://127.0.0.1:{port}{path}", sock=tcp_socket(port), compression=None, max_size=None,
            ping_interval=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT))

    def send_piece(self, data: bytes) -> None:
        self.ws.send(data)

    def end(self) -> None:
        self.ws.send("end")

    def receive_piece(self) -> bytes | None:
        try:
            message = self.ws.recv(timeout=TIMEOUT)
        except ConnectionClosedOK as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else None
            return None
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else None
            raise EOFError(f"the connection was lost: {closed!r}") from closed
        return message if isinstance(message, bytes) else message.encode()

    def abort(self) -> None:
        # no close frame: the TCP connection just ends (a FIN, unless unread bytes make the kernel reset it)
        with contextlib.suppress(OSError):  # unless it is closed already
            self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.close_socket()  # the client's reading thread may be held by its full queue: close for it

    def drop(self) -> None:
        reset_on_close(self.ws.socket)
        self.ws.close_socket()  # wakes the client's reading thread, then closes the socket

    def wait_dropped(self) -> str:
        for _ in range(1_000_000):
            try:
                self.ws.recv(timeout=TIMEOUT)
            except ConnectionClosed as closed:
                if closed.rcvd is None:
                    return "connection closed without a close frame"
                return f"close frame {closed.rcvd.code}"
        raise AssertionError("the connection was not dropped")

    def wait_connection_closed(self) -> None:
        self.wait_dropped()

    def close(self) -> None:
        self._stack.close()


class WSH2Session(H2StreamSession):
    """Extended CONNECT on a stream of its own connection; frames made and read by websockets' sans-IO protocol."""

    name = "ws-http2"
    framed = True

    def __init__(self, port: int, path: str) -> None:
        super().__init__(port)
        assert self.wire.conn.remote_settings.enable_connect_protocol == 1
        self.protocol = Protocol(Side.CLIENT, max_size=None)
        self.fragments: list[bytes] = []
        self.messages: deque[bytes] = deque()
        self.wire.conn.send_headers(self.stream_id, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"localhost"), (b"sec-websocket-version", b"13")])
        self.wire.flush()
        event = self.next_event()
        assert event[0] == "head" and event[1][b":status"] == b"200", event

    def _send_protocol_output(self, end: bool = False) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data or end:
            self.send_stream(data, end=end)

    def send_piece(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self._send_protocol_output()

    def end(self) -> None:
        self.protocol.send_text(b"end")
        self._send_protocol_output()

    def receive_piece(self) -> bytes | None:
        for _ in range(1_000_000):
            if self.messages:
                return self.messages.popleft()
            if self.protocol.close_rcvd is not None:
                self.close_code = self.protocol.close_rcvd.code
                return None
            event = self.next_event()
            if event[0] == "reset":
                raise StreamReset(self.stream_id, event[1])
            if event[0] == "end":
                raise EOFError("the stream ended without a close frame")
            if event[0] != "data":
                continue
            self.protocol.receive_data(event[1])
            for frame in self.protocol.events_received():
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                    self.fragments.append(frame.data)
                    if frame.fin:
                        self.messages.append(b"".join(self.fragments))
                        self.fragments = []
            # pongs, and our half of the closing handshake (then our side of the stream ends)
            self._send_protocol_output(end=self.protocol.close_rcvd is not None)
        raise AssertionError("no message came")

    def wait_dropped(self) -> str:
        for _ in range(1_000_000):
            try:
                self.receive_piece()
            except StreamReset as reset:
                return f"stream reset {error_name(reset.code)}"
            except EOFError:
                return "connection closed" if self.wire.closed else "stream ended without a close frame"
            if self.protocol.close_rcvd is not None:
                return f"close frame {self.protocol.close_rcvd.code}"
        raise AssertionError("the stream was not dropped")

    def _wire_bytes(self, pieces: list[bytes]) -> bytes:
        for data in pieces:
            self.protocol.send_binary(data)
        return b"".join(self.protocol.data_to_send())


# ---------------------------------------------------------------------------------------------------- fixtures


SESSIONS: dict[str, Callable[[int, str], Session]] = {
    "http1": H1Session, "http2": H2Session, "ws-http1": WSH1Session, "ws-http2": WSH2Session}


class Transport:
    """``transport.open(server, path)``: a session on this transport; every one is closed after the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.websocket = name.startswith("ws-")
        self.sessions: list[Session] = []

    def open(self, server: ServerThread, path: str = "/") -> Session:
        session = SESSIONS[self.name](server.port, path)
        self.sessions.append(session)
        return session

    def __repr__(self) -> str:
        return self.name


@pytest.fixture
def transport(request: pytest.FixtureRequest, run_server: Any) -> Iterator[Transport]:
    # run_server is set up first, so the sessions are closed before the servers stop
    chosen = Transport(str(request.param))
    yield chosen
    for session in chosen.sessions:
        try:
            session.close()
        except (OSError, ConnectionClosed):
            pass


def start(run_server: Any, reports: Reports, app: Any, **settings: Any) -> ServerThread:
    settings.setdefault("ws_ping_interval", 0)  # no keepalive frames in the middle of what a test looks at
    settings.setdefault("timeout_graceful_shutdown", 5)  # a stuck app does not hold the teardown for long
    server: ServerThread = run_server(reports.guard(app), **settings)
    return server


def over(names: list[str]) -> Any:
    return pytest.mark.parametrize("transport", names, indirect=True)


# ==================================================================================================== behaviours


@over(ALL)
def test_request_streaming_reaches_the_app_piece_by_piece_in_order(run_server: Any, transport: Transport) -> None:
    """Each piece reaches the app before the next is sent (it is not held back until the end), then a burst of
    many pieces arrives whole and in order."""
    size = 1000
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        pending = b""
        items: list[bytes] = []
        for _ in range(100_000):
            item = await channel.receive()
            if isinstance(item, End):
                break
            assert not isinstance(item, Disconnected), item
            items.append(item)
            pending += item
            while len(pending) >= size:
                reports.put("piece", pending[:size])
                pending = pending[size:]
        reports.put("items", items)
        await channel.send(b"%d" % len(items))
        await channel.finish()

    server = start(run_server, reports, app)
    session = transport.open(server, "/upload")
    lockstep = [piece(i, size) for i in range(10)]
    for i, data in enumerate(lockstep, 1):
        session.send_piece(data)
        assert reports.wait("piece", i) == data
    burst = [piece(i, size) for i in range(10, 310)]
    for data in burst:
        session.send_piece(data)
    session.end()
    items = reports.wait("items")
    sent = lockstep + burst
    if session.framed:
        assert items == sent
    else:
        assert digest(items) == digest(sent)
    assert reports.values("piece") == sent
    answer = session.receive_all()
    if session.framed:
        assert answer == [b"310"]
        assert session.close_code == 1000
    else:
        assert b"".join(answer) == str(len(items)).encode()


@over(ALL)
def test_response_streaming_reaches_the_client_piece_by_piece_in_order(run_server: Any, transport: Transport) -> None:
    """The app sends a piece and waits until the client has it: nothing is held back until the response ends; then
    a burst of many pieces arrives whole and in order."""
    size = 1000
    steps = 10
    gates = [Gate() for _ in range(steps)]
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive_all() == []
        for i in range(steps):
            await channel.send(piece(i, size))
            await gates[i].wait(TIMEOUT)
        for i in range(steps, steps + 300):
            await channel.send(piece(i, size))
        await channel.finish()
        reports.put("done")

    server = start(run_server, reports, app)
    session = transport.open(server, "/download")
    session.end()
    for i in range(steps):
        assert session.receive_bytes(size) == piece(i, size)
        gates[i].set()
    rest = session.receive_all()
    expected = [piece(i, size) for i in range(steps, steps + 300)]
    if session.framed:
        assert rest == expected
        assert session.close_code == 1000
    else:
        assert digest(rest) == digest(expected)
    reports.wait("done")


@over(ALL)
@pytest.mark.parametrize("phase", ["mid-stream", "after-end"])
@pytest.mark.parametrize("how", ["ends-exchange", "resets-connection"])
def test_client_going_away_wakes_the_app_waiting_in_receive(run_server: Any, transport: Transport, phase: str,
                                                            how: str) -> None:
    """The client goes away while the app waits in receive().  ``ends-exchange``: HTTP/1.1 and WebSocket over
    HTTP/1.1 close the connection (no close frame), HTTP/2 resets the stream; ``resets-connection``: the TCP
    connection is reset, on every transport.  Mid-stream the request body is not finished (no "end" message);
    after its end the app waits in receive() all the same."""
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        reports.put("first", await channel.receive())
        if phase == "after-end":
            reports.put("end", await channel.receive())
        reports.put("waiting")
        item = await channel.receive()
        reports.put("woken", item)
        try:
            await channel.send(b"too late")
        except OSError as exc:
            reports.put("send after", type(exc))

    server = start(run_server, reports, app)
    session = transport.open(server, "/hold")
    session.send_piece(b"hello")
    assert reports.wait("first") == b"hello"
    if phase == "after-end":
        session.end()
        assert reports.wait("end") is END
    reports.wait("waiting")
    if how == "ends-exchange":
        session.abort()
    else:
        session.drop()
    woken = reports.wait("woken")
    assert isinstance(woken, Disconnected), woken
    assert woken.code == (1006 if transport.websocket else None), woken
    assert issubclass(reports.wait("send after"), ClientDisconnected)


@over(ALL)
def test_an_exception_thrown_into_the_waiting_app_reaches_it_as_itself(run_server: Any, transport: Transport) -> None:
    """A future the app awaits fails, then its own timeout expires while it waits in receive(): each time the app
    catches the exception itself, never a DeprecationWarning in its place (warnings are errors here, and compiled
    code once passed a thrown exception on in the three-argument form Python 3.12 deprecated), and it answers."""
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failing.get_loop().call_soon(failing.set_exception, LookupError("from a future"))
        try:
            await failing
        except LookupError as exc:
            reports.put("caught", str(exc))
        try:
            await asyncio.wait_for(channel.receive(), 0.05)  # the client sends nothing until it has the answer
        except asyncio.TimeoutError:
            reports.put("timed out")
        await channel.send(b"answered")
        await channel.finish()

    server = start(run_server, reports, app)
    session = transport.open(server, "/waits")
    assert reports.wait("caught") == "from a future"
    reports.wait("timed out")
    answer = session.receive_all()
    assert b"".join(answer) == b"answered"
    if session.framed:
        assert session.close_code == 1000


@over(ALL)
@pytest.mark.parametrize("how", ["ends-exchange", "resets-connection"])
def test_client_going_away_wakes_the_app_waiting_in_send(run_server: Any, transport: Transport, how: str) -> None:
    """The app waits in send() for a client that does not read; the client goes away (as above): that send()
    raises ClientDisconnected, long before any write deadline."""
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive_all() == []
        try:
            for i in range(1024):
                await send_watched(channel, piece(i), lambda: reports.put("waiting"))
        except OSError as exc:
            reports.put("send raised", type(exc))
            return
        raise AssertionError("no send() waited for a client that reads nothing, in 1024 pieces")

    server = start(run_server, reports, app)  # the write deadline is the default 60 s
    session = transport.open(server, "/big")
    session.end()
    reports.wait("waiting")
    if how == "ends-exchange":
        session.abort()
    else:
        session.drop()
    assert issubclass(reports.wait("send raised"), ClientDisconnected)


@over(ALL)
def test_a_client_that_does_not_read_makes_send_wait_and_loses_nothing(run_server: Any,
                                                                        transport: Transport) -> None:
    """The app sends until a send() waits for the client; it says so (while waiting) and goes on only once the
    client reads; the client then gets every piece, in order."""
    reports = Reports()
    extra = 8
    limit = 1024  # 64 MiB: far past what the socket buffers of both sides hold

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive_all() == []
        waited_at: list[int] = []
        count = 0
        for i in range(limit):
            await send_watched(channel, piece(i), lambda i=i: (waited_at.append(i), reports.put("waiting", i)))
            count += 1
            if waited_at:
                reports.put("resumed", i)
                break
        assert waited_at, f"no send() waited for a client that reads nothing, in {limit} pieces"
        for i in range(count, count + extra):
            await channel.send(piece(i))
        count += extra
        await channel.finish()
        reports.put("done", (count, waited_at))

    server = start(run_server, reports, app)
    session = transport.open(server, "/big")
    session.end()
    index = reports.wait("waiting")
    assert index < limit
    # the client has read nothing: that send() waits still
    assert not reports.has("resumed") and not reports.has("done")
    pieces = session.receive_all(limit=10 * limit)
    count, waited_at = reports.wait("done")
    assert waited_at == [index] and reports.values("resumed") == [index]
    expected = [piece(i) for i in range(count)]
    if session.framed:
        assert len(pieces) == count and pieces == expected
        assert session.close_code == 1000
    else:
        assert sum(map(len, pieces)) == count * PIECE and digest(pieces) == digest(expected)


@over(ALL)
def test_a_client_sending_to_an_app_that_does_not_receive_is_held_back_and_loses_nothing(
        run_server: Any, transport: Transport) -> None:
    """Over TCP the client's socket stops taking bytes; over HTTP/2 its windows are not given back (a PING round
    trip shows it).  Once the app reads, the rest goes through and the app gets every byte, in order."""
    reports = Reports()
    go = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        reports.put("ready")
        await go.wait(TIMEOUT * 2)
        hasher = hashlib.sha256()
        sizes: list[int] = []
        for _ in range(1_000_000):
            item = await channel.receive()
            if isinstance(item, End):
                break
            assert not isinstance(item, Disconnected), item
            hasher.update(item)
            sizes.append(len(item))
        reports.put("received", (sizes, hasher.hexdigest()))
        await channel.send(b"ok")
        await channel.finish()

    server = start(run_server, reports, app)
    session = transport.open(server, "/upload")
    reports.wait("ready")
    pieces = [piece(i) for i in range(session.flood_pieces)]
    total = len(pieces) * PIECE
    sent = session.flood(pieces)
    assert 0 < sent < total, f"{sent} of {total} bytes went while the app did not receive"
    assert not reports.has("received")
    go.set()
    session.finish_flood()
    sizes, received_digest = reports.wait("received", timeout=TIMEOUT * 3)
    assert sum(sizes) == total and received_digest == digest(pieces)
    if session.framed:
        assert sizes == [PIECE] * len(pieces)
    assert b"".join(session.receive_all()) == b"ok"


@over(ALL)
def test_code_after_the_final_send_always_runs(run_server: Any, transport: Transport) -> None:
    """The app's last send (the end of the body / the close frame) is not where its call ends, whether the client
    stays to the end of the exchange or goes away as soon as it has its answer."""
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        try:
            await channel.open()
            question = b"".join(await channel.receive_all())
            await channel.send(b"answer to " + question)
            try:
                await channel.finish()
            except OSError as exc:  # the client may be gone already: a legitimate answer, reported
                reports.put("final send raised", type(exc))
            for _ in range(3):
                await asyncio.sleep(0)  # more work of the app's own after the response, e.g. a cleanup
            reports.put("after final send", question)
        except asyncio.CancelledError:
            reports.put("cancelled", channel.path)
            raise

    server = start(run_server, reports, app)
    for i in range(6):
        session = transport.open(server, f"/q{i}")
        session.send_piece(b"q%d" % i)
        session.end()
        if i % 2:
            # gone as soon as the answer is in
            assert session.receive_bytes(len(b"answer to q0")) == b"answer to q%d" % i
            session.abort()
        else:
            assert b"".join(session.receive_all()) == b"answer to q%d" % i
            if session.framed:
                assert session.close_code == 1000
        session.close()
        assert reports.wait("after final send", i + 1) == b"q%d" % i
    assert reports.values("after final send") == [b"q%d" % i for i in range(6)]
    assert not reports.has("cancelled")
    for raised in reports.values("final send raised"):
        assert issubclass(raised, ClientDisconnected)


@over(ALL)
def test_a_client_that_never_reads_is_dropped_at_the_write_deadline(run_server: Any, transport: Transport) -> None:
    """With --timeout-write 1 a client that takes nothing of an endless response is dropped: the app's waiting
    send() raises ClientDisconnected, and the client sees its connection (HTTP/2: its stream) go."""
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive_all() == []
        sent = 0
        try:
            for i in range(100_000):  # 6 GiB: endless for a client that reads nothing
                await channel.send(piece(i))
                sent += 1
        except OSError as exc:
            reports.put("send raised", type(exc))
            return
        raise AssertionError(f"{sent} pieces went to a client that reads nothing")

    server = start(run_server, reports, app, timeout_write=1)
    session = transport.open(server, "/endless")
    session.end()
    raised = reports.wait("send raised", timeout=TIMEOUT * 2)
    assert issubclass(raised, ClientDisconnected), raised
    assert session.wait_dropped() in session.drops


@over(HTTP)
@pytest.mark.parametrize("phase", ["receiving", "responding"])
def test_graceful_shutdown_lets_the_request_in_flight_complete(run_server: Any, transport: Transport,
                                                               logs: LogRecords, phase: str) -> None:
    """The server is asked to stop while a request is in flight: while its body still comes in, or while the
    response goes out.  The request completes, then the connection closes and the server stops."""
    reports = Reports()
    finish = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive() == b"request "
        reports.put("started")
        body = b"request " + b"".join(await channel.receive_all())
        await channel.send(b"first ")
        await finish.wait(TIMEOUT)
        await channel.send(body)
        await channel.finish()
        reports.put("finished")

    server = start(run_server, reports, app)
    session = transport.open(server, "/slow")
    session.send_piece(b"request ")
    reports.wait("started")
    if phase == "receiving":
        server.request_stop()
        logs.wait_for(lambda r: r.getMessage() == "shutting down")
    session.send_piece(b"body")
    session.end()
    assert session.receive_bytes(6) == b"first "
    if phase == "responding":
        server.request_stop()
        logs.wait_for(lambda r: r.getMessage() == "shutting down")
    finish.set()
    assert b"".join(session.receive_all()) == b"request body"
    reports.wait("finished")
    session.wait_connection_closed()
    session.close()
    server.stop()


@over(WEBSOCKET)
def test_graceful_shutdown_closes_a_websocket_with_1001(run_server: Any, transport: Transport) -> None:
    reports = Reports()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        channel = Channel(scope, receive, send)
        await channel.open()
        assert await channel.receive() == b"hello"
        await channel.send(b"hello to you")
        reports.put("chatting")
        reports.put("woken", await channel.receive())
        try:
            await channel.send(b"too late")
        except OSError as exc:
            reports.put("send after", type(exc))

    server = start(run_server, reports, app)
    session = transport.open(server, "/chat")
    session.send_piece(b"hello")
    assert session.receive_piece() == b"hello to you"
    reports.wait("chatting")
    server.request_stop()
    woken = reports.wait("woken")
    assert isinstance(woken, Disconnected) and woken.code == 1001, woken
    assert session.receive_piece() is None
    assert session.close_code == 1001
    assert issubclass(reports.wait("send after"), ClientDisconnected)
    session.wait_connection_closed()
    session.close()
    server.stop()

"""The control channel between the supervisor and one worker: JSON messages, one a line, over a socket pair.

Parent → worker: ``hello`` (the pickled config, first), ``ping``, ``metrics``, ``stop`` (replaced: drain, without
``--shutdown-delay``).  Worker → parent: ``ready``, ``pong``, ``metrics``, ``retiring`` (``--max-requests``,
``--workers-max-rss`` or ``--workers-lifetime`` reached: its ``reason``), ``bye`` (final metrics, just before it
exits).
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import socket
from collections.abc import Callable
from typing import Any

from ..config import Config

__all__ = ["Channel", "decode_config", "encode_config", "read_line"]

Message = dict[str, Any]


def encode_config(config: Config) -> Message:
    return {"op": "hello", "config": base64.b64encode(pickle.dumps(config)).decode("ascii")}


def decode_config(message: Message) -> Config:
    config = pickle.loads(base64.b64decode(message["config"]))
    if not isinstance(config, Config):
        raise TypeError("the supervisor sent no configuration")
    return config


def read_line(sock: socket.socket, limit: int = 1 << 20) -> tuple[Message, bytes]:
    """Read the first message, blocking; return it and any bytes read past it."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the supervisor closed the control channel")
        buffer += chunk
        if len(buffer) > limit:
            raise ValueError("control message too long")
    line, _, rest = buffer.partition(b"\n")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("bad control message")
    return message, rest


class Channel:
    """Messages over a connected stream socket, driven by an event loop's reader and writer callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, on_message: Callable[[Message], None],
                 on_close: Callable[[], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        self._in = b""
        self._out = bytearray()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def feed(self, data: bytes) -> None:
        self._in += data
        while not self.closed:
            line, sep, rest = self._in.partition(b"\n")
            if not sep:
                return
            self._in = rest
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.on_message(message)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self.on_close()
            return
        self.feed(data)

    @staticmethod
    def encode(message: Message) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def send(self, message: Message) -> None:
        if self.closed:
            return
        pending = bool(self._out)
        self._out += self.encode(message)
        if not pending:
            self._writable()

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._out.clear()
            self.loop.remove_writer(self.sock.fileno())
            return
        del self._out[:sent]
        if self._out:
            self.loop.add_writer(self.sock.fileno(), self._writable)
        else:
            self.loop.remove_writer(self.sock.fileno())

    def flush_blocking(self, timeout: float = 2.0) -> None:
        """Write what is pending before the process exits."""
        if self.closed or not self._out:
            return
        self.loop.remove_writer(self.sock.fileno())
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(bytes(self._out))
        except OSError:
            pass
        self._out.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()

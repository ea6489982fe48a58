"""The UDP side of HTTP/3: the QUIC listeners, and how a connection's datagrams reach the process that owns it.

Without workers the server binds one UDP socket per QUIC address (``--quic-bind``, else each TCP listener's own
host and port) and serves every connection on it.

With ``--workers N`` the supervisor binds, for each QUIC address, one ``SO_REUSEPORT`` socket per worker *slot*
(a slot is a worker process: one per worker, plus those of a rolling restart while the old ones drain) and never
closes one while it runs, so each socket keeps its index in the kernel's reuseport group.  A classic BPF program
attached to the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5+) picks the socket of each datagram:

- every connection ID a worker issues starts with its slot and a check byte (``slot ^ tag``, the tag random per
  supervisor): a datagram whose destination connection ID carries a live slot goes to that slot's socket, whatever
  address it comes from, so a client that migrates (a new port behind a NAT, Wi-Fi to mobile) stays with its
  connection;
- any other datagram (a client's first Initial, with a connection ID the client chose) goes to one of the workers
  taking new connections, chosen from the first four bytes of that connection ID: every datagram of a handshake's
  first flight, retransmissions included, reaches the same worker.

The supervisor rewrites the program as workers start, become ready, drain and exit.  A slot with no worker is read
by the supervisor, which drops what comes (datagrams for connections that died with their worker).

This module imports no QUIC library: the supervisor binds and steers without ``aioquic`` loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..addresses import parse_address
from ..config import Config, ConfigError

__all__ = ["CID_LENGTH", "QuicListeners", "SteeredGroup", "bind_udp", "connection_id_maker", "quic_addresses",
           "steering_program"]

logger = logging.getLogger("tidegate.error")

#: the length of every connection ID the server issues
CID_LENGTH = 8
#: receive buffer asked for each QUIC socket (bursts of datagrams wait there while the loop is busy)
RECEIVE_BUFFER = 4 * 1024 * 1024
SO_ATTACH_REUSEPORT_CBPF = 51
#: the most worker slots (a slot is one byte of the connection ID)
MAX_SLOTS = 255


@dataclass
class QuicListeners:
    """The UDP sockets a server serves QUIC on, and (under a supervisor) the worker's slot and tag, which the
    connection IDs it issues carry."""

    sockets: list[socket.socket] = field(default_factory=list)
    slot: int | None = None
    tag: int = 0


def quic_addresses(config: Config, sockets: Iterable[socket.socket]) -> list[tuple[str, int]]:
    """Where QUIC listens: ``--quic-bind``, else the host and port of each TCP listener (one UDP socket each)."""
    quic_bind = config.h3.quic_bind
    if quic_bind is not None:
        address = parse_address(quic_bind)
        return [((address.host or "0.0.0.0").strip("[]"), address.port or 0)]
    found: list[tuple[str, int]] = []
    for sock in sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        host, port = sock.getsockname()[:2]
        if (host, port) not in found:
            found.append((host, port))
    if not found:
        raise ConfigError("--http3 needs a TCP listener to share its port, or --quic-bind HOST:PORT")
    return found


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``host``:``port`` (``reuse_port``: in a ``SO_REUSEPORT`` group)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"QUIC address {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"QUIC address {host}:{port} (UDP) is already in use") from None
        raise ConfigError(f"cannot bind the QUIC address {host}:{port} (UDP): {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def connection_id_maker(slot: int | None, tag: int) -> Callable[[], bytes]:
    """The connection IDs a server issues: random, or under a supervisor its slot, ``slot ^ tag`` and six random
    bytes (see the module's docstring)."""
    if slot is None:
        return lambda: os.urandom(CID_LENGTH)
    prefix = bytes((slot, slot ^ tag))
    return lambda: prefix + os.urandom(CID_LENGTH - 2)


# ---------------------------------------------------------------------------------------------- classic BPF

# opcodes (linux/filter.h)
_LDB_ABS = 0x30     # A = packet[k] (byte)
_LDW_IND = 0x40     # A = packet[X + k] (32-bit, big-endian)
_LDX_IMM = 0x01     # X = k
_TAX = 0x07         # X = A
_XOR_K = 0xA4       # A ^= k
_MOD_K = 0x94       # A %= k
_JA = 0x05          # jump k forward
_JEQ_K = 0x15       # A == k ? jt : jf
_JEQ_X = 0x1D       # A == X ? jt : jf
_JSET_K = 0x45      # A & k ? jt : jf
_RET_K = 0x06       # return k


class _Program:
    """A tiny assembler: instructions with symbolic jump targets (conditional jumps go to the next instruction or
    the one after; anything further is an unconditional jump, whose offset has 32 bits)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int | str]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0) -> None:
        self.code.append((code, 0, 0, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def jump(self, name: str) -> None:
        self.code.append((_JA, 0, 0, name))

    def branch(self, code: int, k: int, if_true: str, if_false: str) -> None:
        """``code`` compares A; go to ``if_true`` or ``if_false``."""
        self.code.append((code, 0, 1, k))
        self.jump(if_true)
        self.jump(if_false)

    def assemble(self) -> bytes:
        out = []
        for index, (code, jt, jf, target) in enumerate(self.code):
            k = self.labels[target] - index - 1 if isinstance(target, str) else target
            out.append(struct.pack("HBBI", code, jt, jf, k))
        return b"".join(out)


def steering_program(live: Sequence[int], accepting: Sequence[int], tag: int) -> bytes:
    """The classic BPF program steering a group's datagrams (see the module's docstring): the slot a destination
    connection ID names if it is in ``live``, else one of ``accepting`` by the connection ID's first four bytes.
    The program sees the UDP payload from offset 0."""
    accepting = list(accepting) or list(live) or [0]
    program = _Program()
    program.op(_LDB_ABS, 0)
    program.branch(_JSET_K, 0x80, "long", "short")
    # short header: the destination connection ID from byte 1
    program.label("short")
    program.op(_LDB_ABS, 2)
    program.op(_XOR_K, tag)
    program.op(_TAX)
    program.op(_LDB_ABS, 1)
    program.branch(_JEQ_X, 0, "slot_short", "hash_short")
    # long header: version (4 bytes), the connection ID's length, then the connection ID from byte 6
    program.label("long")
    program.op(_LDB_ABS, 5)
    program.branch(_JEQ_K, CID_LENGTH, "ours_long", "hash_long")
    program.label("ours_long")
    program.op(_LDB_ABS, 7)
    program.op(_XOR_K, tag)
    program.op(_TAX)
    program.op(_LDB_ABS, 6)
    program.branch(_JEQ_X, 0, "slot_long", "hash_long")
    for kind in ("short", "long"):
        program.label(f"slot_{kind}")
        for slot in live:
            program.code.append((_JEQ_K, 0, 1, slot))
            program.op(_RET_K, slot)
        program.label(f"hash_{kind}")
        program.op(_LDX_IMM, 1 if kind == "short" else 6)
        program.jump("hash")
    # a connection ID no live worker issued: spread over the workers taking new connections
    program.label("hash")
    program.op(_LDW_IND, 0)
    program.op(_MOD_K, len(accepting))
    for index, slot in enumerate(accepting):
        program.code.append((_JEQ_K, 0, 1, index))
        program.op(_RET_K, slot)
    program.op(_RET_K, accepting[0])
    return program.assemble()


def attach_program(sock: socket.socket, program: bytes) -> None:
    """Attach (or replace) the reuseport group's steering program through one of its sockets."""
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


class SteeredGroup:
    """One QUIC address under a supervisor: its ``SO_REUSEPORT`` sockets, one per slot, in the order they joined
    the kernel's group (the index the steering program returns)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.sockets: list[socket.socket] = []

    def grow(self, slots: int) -> None:
        """Bind sockets until there is one per slot (the first one fixes the port, if it was 0)."""
        while len(self.sockets) < slots:
            sock = bind_udp(self.host, self.port, reuse_port=True)
            if not self.sockets:
                self.port = sock.getsockname()[1]
            self.sockets.append(sock)

    def steer(self, live: Sequence[int], accepting: Sequence[int], tag: int) -> None:
        attach_program(self.sockets[0], steering_program(live, accepting, tag))

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()


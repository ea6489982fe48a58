"""HTTP/3 under the supervisor: one UDP socket per worker slot, and the steering of each datagram to the worker that
owns its connection (see :mod:`tidegate.runtime.udp` for how).

The supervisor binds the QUIC sockets once, as it binds the TCP listeners, and never closes one while it runs: a
worker is given the sockets of a free slot (every QUIC address has one socket per slot), its connection IDs carry
that slot, and the steering program is rewritten each time a worker starts, is ready, drains or exits.  A worker
that drains (SIGTERM, a rolling restart, ``--max-requests``) gets no new connections but keeps receiving the
datagrams of its own until it exits; a slot with no worker is read by the supervisor, which drops what comes.

The QUIC sockets are passed to a worker after its listening sockets, as ``--quic SLOT TAG FD...`` on its command
line.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Iterable

from ..config import Config, ConfigError
from ..runtime.sockets import describe
from ..runtime.udp import MAX_SLOTS, SteeredGroup, quic_addresses

__all__ = ["QuicWorkers"]

logger = logging.getLogger("tidegate.error")


class QuicWorkers:
    """The supervisor's QUIC sockets and which worker holds which slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, listeners: Iterable[socket.socket]) -> None:
        self.loop = loop
        self.groups = [SteeredGroup(host, port) for host, port in quic_addresses(config, listeners)]
        #: the check byte's key, random per supervisor (see runtime/udp.py)
        self.tag = secrets.randbelow(255) + 1
        #: worker number → its slot
        self.slots: dict[int, int] = {}
        self._reading: set[int] = set()  # the free slots whose sockets the supervisor reads (and drops)
        self._pending: set[int] = set()  # slots given to workers being started
        self._steering: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        try:
            for group in self.groups:
                group.grow(1)
                group.steer([0], [0], self.tag)
        except OSError as exc:
            self.close()
            raise ConfigError(f"--http3 with --workers needs SO_REUSEPORT and a reuseport steering program "
                              f"(SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+): {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise
        for group in self.groups:
            logger.info("supervisor listening for HTTP/3 (QUIC) on %s", describe(group.sockets[0], "https"))

    def allocate(self) -> tuple[int, list[int]]:
        """A free slot for a worker about to start, and the descriptors of its sockets (one per QUIC address)."""
        used = set(self.slots.values()) | set(self._pending)
        slot = next((s for s in range(MAX_SLOTS) if s not in used), None)
        if slot is None:
            raise ConfigError(f"more than {MAX_SLOTS} worker processes at once cannot share HTTP/3")
        for group in self.groups:
            group.grow(slot + 1)
        self._pending.add(slot)
        self._stop_reading(slot)
        return slot, [group.sockets[slot].fileno() for group in self.groups]

    def arguments(self, slot: int, fds: list[int]) -> list[str]:
        """The worker's command line arguments that hand it its QUIC sockets."""
        return ["--quic", str(slot), str(self.tag), *map(str, fds)]

    def started(self, number: int, slot: int) -> None:
        """Worker ``number`` was started with ``slot``."""
        self._pending.discard(slot)
        self.slots[number] = slot

    def exited(self, number: int) -> None:
        """Worker ``number`` exited: its slot is free (its connections died with it)."""
        slot = self.slots.pop(number, None)
        if slot is not None:
            self._start_reading(slot)

    def steer(self, live: Iterable[int], accepting: Iterable[int]) -> None:
        """Rewrite the steering program: ``live`` worker numbers keep their connections' datagrams, ``accepting``
        ones take new connections."""
        live_slots = tuple(sorted(self.slots[n] for n in live if n in self.slots))
        accepting_slots = tuple(sorted(self.slots[n] for n in accepting if n in self.slots))
        if (live_slots, accepting_slots) == self._steering:
            return
        self._steering = (live_slots, accepting_slots)
        for group in self.groups:
            try:
                group.steer(live_slots, accepting_slots, self.tag)
            except OSError as exc:  # pragma: no cover - it was attached once at the start
                logger.error("supervisor: cannot steer QUIC datagrams on %s:%d: %s", group.host, group.port, exc)

    # ------------------------------------------------------------------ free slots

    def _start_reading(self, slot: int) -> None:
        if slot in self._reading:
            return
        self._reading.add(slot)
        for group in self.groups:
            if slot < len(group.sockets):
                self.loop.add_reader(group.sockets[slot], _drop, group.sockets[slot])

    def _stop_reading(self, slot: int) -> None:
        if slot not in self._reading:
            return
        self._reading.discard(slot)
        for group in self.groups:
            if slot < len(group.sockets):
                self.loop.remove_reader(group.sockets[slot])

    def close(self) -> None:
        for slot in list(self._reading):
            self._stop_reading(slot)
        for group in self.groups:
            group.close()


def _drop(sock: socket.socket) -> None:
    """Read what came to a slot with no worker, and drop it."""
    for _ in range(64):
        try:
            sock.recv(65536)
        except OSError:  # nothing more to read (BlockingIOError), or an ICMP error: done for now
            return

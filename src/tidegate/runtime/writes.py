"""The one write path of a connection: :class:`WriteBuffer`, and the one write deadline, :class:`WriteDeadline`.

A driver holds a ``WriteBuffer`` (it does not inherit one).  Bytes a connection produces go to its ``out`` list and
reach the transport in one write: when the driver says so, past ``FLUSH_BYTES``, or at the end of the loop pass.  A
stream of small pieces made in one go leaves in one write, and a piece sent before the app waits for anything is on
the wire before it waits.  The buffers of one server flush at the end of a pass together (:class:`PassFlush`): the
responses its apps made in that pass leave one after the other, and a client finds them waiting rather than being
woken once for each.

Back-pressure: the transport says when its buffer passes its high-water mark (``pause``) and when it is below it
again (``resume``).  While it is above, any number of coroutines may wait in :meth:`WriteBuffer.drain`; every one of
them is woken once the transport takes bytes again or the connection is lost -- none is ever overwritten.

``--timeout-write`` has one meaning everywhere: while bytes wait for a client (the transport is above its high-water
mark, or a connection closes with bytes still queued, or an HTTP/2 stream's data waits for its window), the client
must take some of them in every period of that length; a client that takes none for a whole period is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

from ..asgi.awaiting import awaiting
from ..asgi.errors import ClientDisconnected

__all__ = ["FLUSH_BYTES", "PassFlush", "WaitingStream", "WriteBuffer", "WriteDeadline", "copy_file", "release",
           "wait_to_send"]

logger: Final = logging.getLogger("tidegate.error")

FLUSH_BYTES: Final = 65536
#: the most one sendfile() call is asked to send
_SENDFILE_SLICE: Final = 1 << 24


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Paced(Protocol):
    """A stream that says when its writes wait for the client."""

    @property
    def write_paused(self) -> bool: ...
    def drain(self) -> Awaitable[None]: ...


async def copy_file(fd: int, offset: int, count: int, write: Callable[[bytes, bool], None], stream: _Paced) -> None:
    """Send ``count`` bytes of the file ``fd`` from ``offset`` where ``sendfile`` cannot (TLS, HTTP/2): read in
    pieces of ``FLUSH_BYTES`` and handed to ``write(piece, last)``, waiting while ``stream``'s writes are paused, so
    that no more than a piece or two of the file is in memory whatever the client's pace.  OSError if the file ends
    before ``count`` bytes."""
    while count > 0:
        data = os.pread(fd, min(count, FLUSH_BYTES), offset)
        if not data:
            raise OSError(f"the file ended {count} bytes before the count to send")
        offset += len(data)
        count -= len(data)
        write(data, not count)
        if stream.write_paused:
            await stream.drain()


class WaitingStream(Protocol):
    """A stream of a multiplexed connection (HTTP/2, HTTP/3) as its wait for room to send sees it: the one waiter
    its coroutine sleeps on in ``drain()``, and whether it is gone."""

    _waiter: asyncio.Future[None] | None
    gone: bool

    @property
    def write_paused(self) -> bool: ...
    @write_paused.setter
    def write_paused(self, paused: bool) -> None: ...


def release(stream: WaitingStream) -> None:
    """Wake the stream's coroutine waiting in ``drain()``, if any."""
    waiter, stream._waiter = stream._waiter, None
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def wait_to_send(stream: WaitingStream, loop: asyncio.AbstractEventLoop, waiting: set[Any],
                       can_send: Callable[[], bool], deadline: Callable[[], WriteDeadline]) -> None:
    """Wait until ``can_send()`` (the stream's window and its connection's output have room), each wake-up coming
    through :func:`release`; meanwhile the stream is in its connection's ``waiting`` set and ``deadline()``
    (--timeout-write, made at the first wait) runs.  Raise ClientDisconnected once the stream is gone."""
    watch = None
    try:
        while not stream.gone:
            if can_send():
                stream.write_paused = False
                return
            if watch is None:
                watch = deadline()
                watch.start()
            waiter = loop.create_future()
            stream._waiter = waiter
            waiting.add(stream)
            try:
                await awaiting(waiter)
            finally:
                waiting.discard(stream)
    finally:
        if watch is not None:
            watch.cancel()
    raise ClientDisconnected("the client has disconnected")


def _nothing() -> int:
    return 0


def _ignore(*_: object) -> None:
    pass


class PassFlush:
    """The write buffers with bytes to flush at the end of this loop pass, flushed by one callback for all of them
    (a server's drivers share one): a buffer joins once per pass, however many pieces it is given."""

    __slots__ = ("_buffers", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: the buffers that joined since the last callback; the first to join schedules the next one
        self._buffers: list[WriteBuffer] = []

    def add(self, buffer: WriteBuffer) -> None:
        if not self._buffers:
            self._loop.call_soon(self._run)
        self._buffers.append(buffer)

    def _run(self) -> None:
        buffers = self._buffers
        self._buffers = []
        for buffer in buffers:
            buffer.flush_queued()


class WriteDeadline:
    """Calls ``expired()`` once a whole ``timeout`` passes in which ``queued()`` (bytes waiting for the client) did
    not go down and nothing said the client took some (:meth:`progressed`).  A client that takes some bytes in every
    period -- slow, but reading -- is given another one.  While ``active()`` is false when the period ends (nothing
    waits for the client any more) the watch simply stops: a transport that pauses and resumes often arms one timer
    per period, not one per pause."""

    __slots__ = ("_active", "_expired", "_loop", "_progressed", "_queued", "_seen", "_timer", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, queued: Callable[[], int],
                 expired: Callable[[], None], active: Callable[[], bool] | None = None) -> None:
        self._loop = loop
        self.timeout = timeout
        self._queued = queued
        self._expired = expired
        self._active = active
        self._seen = 0
        self._progressed = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start watching (a no-op while already watching)."""
        if self._timer is None:
            self._seen = self._queued()
            self._progressed = False
            self._timer = self._loop.call_at(self._loop.time() + self.timeout, self._check)

    def progressed(self) -> None:
        """The client took some of what waited for it."""
        self._progressed = True

    def release(self) -> None:
        """Stop for good, and drop the callbacks (bound methods of the owner, which holds this: a reference cycle)."""
        self.cancel()
        self._queued = _nothing
        self._expired = _ignore
        self._active = None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._active is not None and not self._active():
            return  # nothing waits for the client now
        queued = self._queued()
        if queued < self._seen or self._progressed:  # it took some: another period
            self.start()
            return
        self._expired()


if sys.version_info >= (3, 12):
    def _writelines_pauses(transport: asyncio.BaseTransport) -> bool:
        """Whether the transport's writelines() pauses the protocol past the high-water mark, as its write() does.
        uvloop's and asyncio's TLS transports do; asyncio's socket transport does not on Python 3.12 and later (it
        queues the data without checking its buffer), so a client that never reads would make it grow without
        bound: there, several pieces are joined and written with write()."""
        return type(transport).__module__ != "asyncio.selector_events"
else:
    def _writelines_pauses(transport: asyncio.BaseTransport) -> bool:
        return True


class WriteBuffer:
    """Coalesced writes, the transport's pause state, drain waiters and the write deadline of one connection."""

    transport: asyncio.Transport  # set by attach()

    __slots__ = ("_in_pass", "_kind", "_lines", "_loop", "_on_paused", "_pass", "_waiters", "closing", "deadline",
                 "lost", "out", "paused", "pending", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, on_paused: Callable[[bool], None],
                 kind: str = "", flushes: PassFlush | None = None) -> None:
        self._loop = loop
        #: where the buffer joins to be flushed at the end of the pass (its server's, else one of its own)
        self._pass = flushes if flushes is not None else PassFlush(loop)
        #: how the log names the client's protocol ("", "HTTP/2 ", "WebSocket ")
        self._kind = kind
        #: told each time :attr:`paused` changes (a driver keeps a plain ``write_paused`` for its exchanges to read)
        self._on_paused = on_paused
        #: bytes made and not yet handed to the transport; ``out.append`` is the sans-IO connection's write callback
        self.out: list[Any] = []
        #: several pieces leave in one writelines() (see attach)
        self._lines = True
        self.pending = 0
        #: in :attr:`_pass` for the end of this pass
        self._in_pass = False
        self.paused = False
        self.lost = False
        self.closing = False
        self._waiters: list[asyncio.Future[None]] = []
        #: the write deadline: past it, the connection is dropped
        self.deadline = WriteDeadline(loop, timeout, self._queued, self._stuck, self._waiting)

    def attach(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        """The connection's transport is here; returned as the stream transport it is (uvloop's transports are not
        asyncio's classes)."""
        self.transport = cast(asyncio.Transport, transport)
        self._lines = _writelines_pauses(transport)
        return self.transport

    def _queued(self) -> int:
        return self.transport.get_write_buffer_size()

    def _stuck(self) -> None:
        """--timeout-write passed with the client taking none of what waits for it: drop the connection."""
        if not self.lost:
            peer = self.transport.get_extra_info("peername")
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
            logger.info("%sclient %s has not read for %gs: dropping the connection", self._kind, client,
                        self.deadline.timeout)
            self.transport.abort()

    def _waiting(self) -> bool:
        """Whether bytes wait for the client: the transport is over its high-water mark, or closing with bytes."""
        return (self.paused or self.closing) and not self.lost

    # ------------------------------------------------------------------ producing

    def write(self, data: bytes) -> None:
        """Queue ``data``; it leaves past ``FLUSH_BYTES`` or at the end of this loop iteration.  (:meth:`wrote`
        inlined: this is a WebSocket session's write, once per frame.)"""
        self.out.append(data)
        self.pending += len(data)
        if self.pending > FLUSH_BYTES:
            self._flush_checked()
        elif not self._in_pass:
            self._in_pass = True
            self._pass.add(self)

    def wrote(self, size: int) -> None:
        """``size`` bytes were appended to :attr:`out` (by a sans-IO connection): flush now past ``FLUSH_BYTES``,
        else at the end of this loop pass."""
        self.pending += size
        if self.pending > FLUSH_BYTES:
            self._flush_checked()
        elif not self._in_pass and self.out:
            self._in_pass = True
            self._pass.add(self)

    def flush_queued(self) -> None:
        """The end of the pass (:class:`PassFlush`): what is queued leaves (nothing, if it left earlier or the
        connection was lost since)."""
        self._in_pass = False
        self._flush_checked()

    def _flush_checked(self) -> None:
        """Flush, and once the transport has failed make send() wait for the loss: a failed transport no longer
        pauses its writer, and an app streaming into it would never yield."""
        if self.flush() and self.transport.is_closing() and not self.paused:
            self._set_paused(True)

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._on_paused(paused)

    def flush(self) -> bool:
        """Write what is queued; True if anything was handed to the transport."""
        out = self.out
        self.pending = 0
        if not out:
            return False
        if self.lost:
            out.clear()
            return False
        transport = self.transport
        if len(out) == 1:
            transport.write(out[0])
        elif self._lines:
            transport.writelines(out)
        else:
            transport.write(b"".join(out))
        out.clear()
        return True

    # ------------------------------------------------------------------ back-pressure (from the transport)

    def pause(self) -> None:
        """The transport's buffer passed its high-water mark: the client must take some of it every period."""
        self._set_paused(True)
        if not self.lost:
            self.deadline.start()

    def resume(self) -> None:
        """The transport's buffer is below its low-water mark again: every waiter goes on."""
        self._set_paused(False)
        self.deadline.progressed()
        self._wake()

    async def drain(self) -> None:
        """Wait while the transport is above its high-water mark; raise ClientDisconnected once the connection is
        lost."""
        if self.paused and not self.lost:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            self.deadline.start()
            try:
                await awaiting(waiter)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if self.lost:
            raise ClientDisconnected("the client has disconnected")

    # ------------------------------------------------------------------ files (zero copy)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` from ``offset`` with ``os.sendfile``: the kernel copies them to the
        socket, never through Python.  What is queued goes first (the transport's buffer is emptied before); while
        the socket takes no more, this waits for it under ``--timeout-write`` as any write does.  Raises
        ClientDisconnected once the connection is lost (or dropped for that deadline), OSError if the file ends
        before ``count`` bytes (the connection is then cut: the body cannot be completed)."""
        self.flush()
        transport = self.transport
        if transport.get_write_buffer_size() and not self.lost:
            # the file's bytes go after the transport's: with a high-water mark of 0, the transport says "resume"
            # once its buffer is empty
            high, low = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=0)
            try:
                await self.drain()
            finally:
                if not self.lost:
                    transport.set_write_buffer_limits(high, low)
        if self.lost:
            raise ClientDisconnected("the client has disconnected")
        sock = transport.get_extra_info("socket")
        # a descriptor of our own for the socket: watched for writability without touching the transport's
        out = os.dup(sock.fileno())
        try:
            while count > 0:
                try:
                    sent = os.sendfile(out, fd, offset, min(count, _SENDFILE_SLICE))
                except BlockingIOError:
                    await self._writable(out)
                    continue
                except (BrokenPipeError, ConnectionError):
                    transport.abort()
                    raise ClientDisconnected("the client has disconnected") from None
                if not sent:
                    transport.abort()
                    raise OSError(f"the file ended {count} bytes before the count to send")
                offset += sent
                count -= sent
                self.deadline.progressed()
        finally:
            os.close(out)

    async def _writable(self, fd: int) -> None:
        """Wait until the socket (our descriptor ``fd`` of it) takes bytes again; meanwhile writes are paused and the
        write deadline runs."""
        loop = self._loop
        waiter = loop.create_future()
        self._waiters.append(waiter)
        loop.add_writer(fd, _resolve, waiter)
        self._set_paused(True)
        self.deadline.start()
        try:
            await awaiting(waiter)
        finally:
            loop.remove_writer(fd)
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if self.paused and not self.lost:
                self._set_paused(False)
        if self.lost:
            raise ClientDisconnected("the client has disconnected")

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """Close the transport once what is queued is written; a client that takes none of it for a whole
        ``--timeout-write`` is dropped."""
        self.flush()
        transport = self.transport
        transport.close()
        if not self.lost and transport.get_write_buffer_size():
            self.closing = True
            self.deadline.start()

    def connection_lost(self) -> None:
        """The transport is gone: queued bytes are dropped and every waiter wakes (to hear ClientDisconnected)."""
        self.lost = True
        self.out.clear()
        self.pending = 0
        self.deadline.release()
        self._on_paused = _ignore  # it and the deadline's callbacks held the owner: no cycle left to collect
        self._wake()

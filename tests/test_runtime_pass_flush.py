"""The write buffers of one server flush together at the end of a loop pass, from one callback (PassFlush)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tidegate.runtime.writes import FLUSH_BYTES, PassFlush, WriteBuffer


class Loop:
    """The loop as a write buffer and its pass see it: callbacks made ready wait until the test ends the pass."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []
        self.scheduled = 0

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.scheduled += 1
        self.ready.append(callback)

    def end_pass(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, items: list[bytes]) -> None:
        self.written.append(b"".join(items))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def buffers(count: int) -> tuple[Loop, list[WriteBuffer], list[Transport]]:
    loop = Loop()
    flushes = PassFlush(loop)  # type: ignore[arg-type]
    made: list[WriteBuffer] = []
    transports: list[Transport] = []
    for _ in range(count):
        buffer = WriteBuffer(loop, 30.0, _ignore, flushes=flushes)  # type: ignore[arg-type]
        transport = Transport()
        buffer.attach(transport)  # type: ignore[arg-type]
        made.append(buffer)
        transports.append(transport)
    return loop, made, transports


def _ignore(*_: Any) -> None:
    pass


def test_the_responses_of_one_pass_leave_together_from_one_callback() -> None:
    loop, made, transports = buffers(3)
    for i, buffer in enumerate(made):
        buffer.write(b"response %d" % i)
        buffer.out.append(b", its last piece")  # as a sans-IO connection writes
        buffer.wrote(16)
    assert loop.scheduled == 1  # one callback for the pass, whatever the number of buffers and pieces
    assert not any(transport.written for transport in transports)  # nothing leaves before the pass ends
    loop.end_pass()
    assert [transport.written for transport in transports] == [
        [b"response %d, its last piece" % i] for i in range(3)]  # each buffer in one write
    # the next pass has a callback of its own
    made[1].write(b"!")
    assert loop.scheduled == 2
    loop.end_pass()
    assert transports[1].data.endswith(b"!") and transports[0].written == [b"response 0, its last piece"]


def test_a_buffer_past_flush_bytes_does_not_wait_for_the_end_of_the_pass() -> None:
    loop, made, transports = buffers(2)
    made[0].write(b"a")
    made[1].write(b"x" * (FLUSH_BYTES + 1))
    assert transports[1].data == b"x" * (FLUSH_BYTES + 1) and not transports[0].written
    loop.end_pass()
    assert transports[0].data == b"a"


def test_a_buffer_flushed_or_lost_before_the_end_of_the_pass_writes_nothing_more() -> None:
    loop, made, transports = buffers(3)
    for buffer in made:
        buffer.write(b"bytes")
    made[0].flush()  # the driver flushed it itself (an error response, a close)
    made[1].connection_lost()  # the client went away: its queued bytes are dropped
    loop.end_pass()
    assert transports[0].written == [b"bytes"]
    assert transports[1].written == []
    assert transports[2].written == [b"bytes"]
    assert loop.scheduled == 1

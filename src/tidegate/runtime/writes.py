"""Write coalescing, shared by the drivers.

Bytes a driver produces go to its ``_out`` list and reach the transport in one write: when the driver says so (the
end of a response), past ``FLUSH_BYTES``, or at the end of the loop iteration (``_flush_soon``, scheduled by the
driver).  A stream of small pieces made in one go leaves in one write, and a piece sent before the app waits for
anything is on the wire before it waits.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FLUSH_BYTES", "CoalescedWrites"]

FLUSH_BYTES = 65536


class CoalescedWrites:
    """Mixin for a driver with ``transport``, ``_out``, ``_out_bytes``, ``_flush_handle`` and ``_lost``."""

    __slots__ = ()

    transport: asyncio.Transport
    _out: list[Any]
    _out_bytes: int
    _flush_handle: asyncio.Handle | None
    _lost: bool

    def _flush_soon(self) -> None:
        self._flush_handle = None  # type: ignore[misc]  # the slot is the driver's
        self._flush()

    def _flush(self) -> bool:
        """Write what is pending; True if anything was handed to the transport."""
        out = self._out
        wrote = False
        if out:
            if not self._lost:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)
                wrote = True
            out.clear()
        self._out_bytes = 0  # type: ignore[misc]  # the slot is the driver's
        return wrote

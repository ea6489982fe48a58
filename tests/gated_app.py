"""The operations app behind a gate: the first process to import this module waits, inside the import, until the
test writes a byte to the FIFO named by ``$GATED_APP_FIFO`` (later imports go straight through)."""

from __future__ import annotations

import os
from pathlib import Path

from .ops_apps import app

__all__ = ["app"]

_gate = os.environ.get("GATED_APP_FIFO")
if _gate is not None and not Path(_gate + ".passed").exists():
    Path(_gate + ".passed").touch()
    with open(_gate, "rb") as fifo:  # opened once the test opens it for writing
        fifo.read(1)

"""What changed between two configurations, and which of the changes a rolling restart of the workers applies.

Workers are started afresh by a rolling restart, so every setting they read applies that way.  What the supervisor
set up once, at its start, does not: the listening sockets (``bind``, ``host``, ``port``, ``uds``, ``fd``,
``backlog``, ``uds_permissions``), the QUIC sockets (``http3``, ``quic_bind``), the metrics endpoint
(``metrics_bind``) and the file watcher of ``--reload``.  A
change to one of those needs the server restarted; until then it keeps its running value.  ``workers`` applies: it
is the number of workers the supervisor keeps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import GROUPS, BindSettings, Config, ReloadSettings

__all__ = ["NEEDS_RESTART", "Change", "applicable", "changes"]


def _flat_names(kind: type[Any]) -> frozenset[str]:
    return frozenset(kind.PREFIX + f.name for f in dataclasses.fields(kind))


#: settings a rolling restart of the workers does not apply: the server must be restarted
NEEDS_RESTART = _flat_names(BindSettings) | _flat_names(ReloadSettings) | {"metrics_bind", "http3", "quic_bind"}
#: settings whose values are not written to the log
_SECRET = frozenset({"ssl_keyfile_password"})


def _show(value: Any) -> str:
    """A value as a config file would spell it (TOML); an unset one as ``(not set)``."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(value)


@dataclass(frozen=True)
class Change:
    """One setting whose value differs."""

    setting: str
    old: Any
    new: Any
    needs_restart: bool

    def describe(self) -> str:
        if self.setting in _SECRET:
            text = f"{self.setting} changed"
        else:
            text = f"{self.setting} {_show(self.old)} -> {_show(self.new)}"
        if self.needs_restart:
            kept = "its running value" if self.setting in _SECRET else _show(self.old)
            text += f" needs a restart to apply; keeping {kept}"
        return text


def changes(old: Config, new: Config) -> list[Change]:
    """The settings whose values differ, in the order they are declared."""
    found = []
    for group, kind in GROUPS:
        before, after = getattr(old, group), getattr(new, group)
        if before == after:
            continue
        for f in dataclasses.fields(kind):
            was, now = getattr(before, f.name), getattr(after, f.name)
            if was != now:
                flat = kind.PREFIX + f.name
                found.append(Change(flat, was, now, flat in NEEDS_RESTART))
    return found


def applicable(old: Config, new: Config) -> Config:
    """``new`` with the settings that need a restart kept at their values in ``old``: what the workers of a rolling
    restart run with."""
    kept = {change.setting: change.old for change in changes(old, new) if change.needs_restart}
    return new.replace(**kept) if kept else new

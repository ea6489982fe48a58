"""Settings, declared once.

Every setting is a field of a frozen dataclass, grouped by concern.  A field carries its default and its help
text; the command line flags are generated from these declarations (see :mod:`tidegate.cli`), and each component
receives only its own group.  Config is plain data: it imports no application, binds no socket, configures no
logging and pickles, so worker processes can receive it.

Units: every duration is a float of seconds, every size an int of bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AppSettings",
    "BindSettings",
    "Config",
    "ConfigError",
    "HTTPSettings",
    "LimitSettings",
    "LoggingSettings",
    "TimeoutSettings",
    "setting",
]


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message names the setting."""


def setting(default: Any, help: str, *, metavar: str | None = None, choices: tuple[str, ...] = (),
            flag: str | None = None, repeat: bool = False) -> Any:
    """Declare one setting: its default and its help text (and how the CLI spells it, if not by its name)."""
    meta = {"help": help, "metavar": metavar, "choices": choices, "flag": flag, "repeat": repeat}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default")
    return field(default=default, metadata=meta)


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, not {value!r}")


@dataclass(frozen=True)
class AppSettings:
    """What to serve."""

    PREFIX = ""
    app: str = setting("", "The application, as 'module:attribute' (attribute may be dotted).", metavar="APP")
    factory: bool = setting(False, "Treat APP as a factory: call it with no arguments to get the application.")
    app_dir: str = setting(".", "Directory put first on sys.path before importing APP.", metavar="DIR")
    root_path: str = setting("", "The ASGI root_path: the prefix the app is mounted at behind a proxy.",
                             metavar="PATH")
    lifespan: Literal["auto", "on", "off"] = setting(
        "auto", "Run the ASGI lifespan protocol: 'auto' skips it for apps that do not support it, "
        "'on' makes any failure fatal, 'off' never runs it.", choices=("auto", "on", "off"))
    loop: Literal["auto", "asyncio", "uvloop"] = setting(
        "auto", "Event loop: 'auto' uses uvloop where it is installed.", choices=("auto", "asyncio", "uvloop"))

    def validate(self) -> None:
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError(f"root_path must start with '/' and not end with one, not {self.root_path!r}")


@dataclass(frozen=True)
class BindSettings:
    """Where to listen."""

    PREFIX = ""
    host: str = setting("127.0.0.1", "Address to bind (IPv4 or IPv6).", metavar="HOST")
    port: int = setting(8000, "TCP port to bind; 0 picks a free one.", metavar="PORT")
    uds: str | None = setting(None, "Bind a UNIX domain socket at this path instead of host:port.", metavar="PATH")
    fd: int | None = setting(None, "Serve on an already bound listening socket with this file descriptor.",
                             metavar="N")
    backlog: int = setting(2048, "Listen backlog: connections the kernel queues before we accept them.",
                           metavar="N")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")
        _positive("backlog", self.backlog)
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"fd must be >= 0, not {self.fd}")


@dataclass(frozen=True)
class HTTPSettings:
    """How responses look."""

    PREFIX = ""
    server_header: bool = setting(True, "Add 'server: tidegate' to responses that do not set one.")
    date_header: bool = setting(True, "Add a 'date' header to responses that do not set one.")
    headers: tuple[str, ...] = setting(
        (), "Extra default response header 'NAME:VALUE' (repeat for more).", metavar="NAME:VALUE",
        flag="header", repeat=True)

    def validate(self) -> None:
        for item in self.headers:
            name, sep, _ = item.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"header must look like NAME:VALUE, not {item!r}")
            if any(c in item for c in "\r\n\0"):
                raise ConfigError(f"header must not contain CR, LF or NUL: {item!r}")

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        pairs = []
        for item in self.headers:
            name, _, value = item.partition(":")
            pairs.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
        return pairs


@dataclass(frozen=True)
class TimeoutSettings:
    """Deadlines, in seconds."""

    PREFIX = "timeout_"
    keep_alive: float = setting(5.0, "Close a keep-alive connection idle for this long between requests.",
                                metavar="SECONDS")
    graceful_shutdown: float = setting(
        30.0, "On shutdown, wait this long for in-flight requests before cancelling them.", metavar="SECONDS")

    def validate(self) -> None:
        _positive("timeout_keep_alive", self.keep_alive)
        _positive("timeout_graceful_shutdown", self.graceful_shutdown, zero_ok=True)


@dataclass(frozen=True)
class LimitSettings:
    """Sizes, in bytes, and counts."""

    PREFIX = "limit_"
    request_buffer: int = setting(
        65536, "Pause reading from a client while this many request body bytes wait for the app.",
        metavar="BYTES")
    pipeline_depth: int = setting(
        16, "Pipelined requests queued per connection before reading from it pauses.", metavar="N")

    def validate(self) -> None:
        _positive("limit_request_buffer", self.request_buffer)
        _positive("limit_pipeline_depth", self.pipeline_depth)


@dataclass(frozen=True)
class LoggingSettings:
    """What is logged."""

    PREFIX = ""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = setting(
        "info", "Log level.", choices=("critical", "error", "warning", "info", "debug", "trace"))
    access_log: bool = setting(True, "Log one line per request.")


GROUPS: tuple[tuple[str, type[Any]], ...] = (
    ("app", AppSettings),
    ("bind", BindSettings),
    ("http", HTTPSettings),
    ("timeouts", TimeoutSettings),
    ("limits", LimitSettings),
    ("logging", LoggingSettings),
)


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen group per concern."""

    app: AppSettings = field(default_factory=AppSettings)
    bind: BindSettings = field(default_factory=BindSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self) -> None:
        for name, _ in GROUPS:
            group = getattr(self, name)
            check = getattr(group, "validate", None)
            if check is not None:
                check()

    @classmethod
    def from_flat(cls, **settings: Any) -> Config:
        """Build a Config from flat keys as the CLI spells them (``port=0``, ``timeout_keep_alive=2.0``)."""
        grouped: dict[str, dict[str, Any]] = {name: {} for name, _ in GROUPS}
        index = flat_index()
        for key, value in settings.items():
            if key not in index:
                raise ConfigError(f"unknown setting {key!r}")
            group, fname = index[key]
            grouped[group][fname] = value
        return cls(**{name: kind(**grouped[name]) for name, kind in GROUPS})

    def replace(self, **settings: Any) -> Config:
        """A copy with some flat settings changed."""
        index = flat_index()
        changes: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            if key not in index:
                raise ConfigError(f"unknown setting {key!r}")
            group, fname = index[key]
            changes.setdefault(group, {})[fname] = value
        groups = {g: dataclasses.replace(getattr(self, g), **c) for g, c in changes.items()}
        return dataclasses.replace(self, **groups)


def flat_index() -> dict[str, tuple[str, str]]:
    """Map each flat setting name (``timeout_keep_alive``) to (group attribute, field name)."""
    index = {}
    for group, kind in GROUPS:
        for f in dataclasses.fields(kind):
            index[kind.PREFIX + f.name] = (group, f.name)
    return index

"""Settings, declared once.

Every setting is a field of a frozen dataclass, grouped by concern.  A field carries its default and its help
text; the command line flags are generated from these declarations (see :mod:`tidegate.cli`), and each component
receives only its own group.  Config is plain data: it imports no application, binds no socket, configures no
logging and pickles, so worker processes can receive it.

Units: every duration is a float of seconds, every size an int of bytes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "AppSettings",
    "BindSettings",
    "Config",
    "ConfigError",
    "HTTP2Settings",
    "HTTP3Settings",
    "HTTPSettings",
    "HealthSettings",
    "LimitSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ProtocolSettings",
    "ProxySettings",
    "ReloadSettings",
    "SyncSettings",
    "TLSSettings",
    "TimeoutSettings",
    "WebSocketSettings",
    "WorkerSettings",
    "setting",
]


class ConfigError(ValueError):
    """A setting is unknown or has a value it cannot take; the message names the setting.

    Settings read from the environment or a config file also say where they were set
    (``environment variable TIDEGATE_PORT: port must be an integer, not 'abc'``).  The command line reports it as
    a usage error, exit code 2.  A ``ValueError``."""


def setting(default: Any, help: str, *, metavar: str | None = None, choices: tuple[str, ...] = (),
            flag: str | None = None, repeat: bool = False, bound: str = "") -> Any:
    """Declare one setting: its default and its help text (and how the CLI spells it, if not by its name);
    ``bound`` ``">0"`` or ``">=0"`` for a number that must be positive (None, where allowed, is not checked)."""
    meta = {"help": help, "metavar": metavar, "choices": choices, "flag": flag, "repeat": repeat, "bound": bound}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default")
    return field(default=default, metadata=meta)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, not {value!r}")


def _check_bounds(group: Any) -> None:
    """Each setting of a group declared with a ``bound`` is a number > 0 (or >= 0), or None; an error names the
    setting as the CLI spells it."""
    for item in fields(group):
        bound = item.metadata.get("bound")
        if bound:
            value = getattr(group, item.name)
            if value is not None:
                _positive(group.PREFIX + item.name, value, zero_ok=bound == ">=0")


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
    gc_threshold: int = setting(
        10000, "First-generation threshold of Python's cyclic garbage collector in each serving process, set "
        "before the app is imported (an app that sets its own keeps it); 0 leaves Python's own (700, or 2000 "
        "from 3.13).", metavar="N", bound=">=0")

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
    bind: tuple[str, ...] = setting(
        (), "Listen on ADDRESS: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N (repeat for more); with it (or --uds, "
        "--fd, systemd socket activation) --host/--port are not used.", metavar="ADDRESS", repeat=True)
    uds_permissions: str | None = setting(None, "File mode of UNIX sockets, in octal (e.g. 660).", metavar="MODE")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")
        _positive("backlog", self.backlog)
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"fd must be >= 0, not {self.fd}")
        from .addresses import parse_address

        for item in self.bind:
            try:
                parse_address(item)
            except ValueError as exc:
                raise ConfigError(f"bind: {exc}") from None
        if self.uds_permissions is not None:
            try:
                mode = int(self.uds_permissions, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o777:
                raise ConfigError(f"uds_permissions must be an octal file mode like 660, not {self.uds_permissions!r}")


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
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"header must look like NAME:VALUE, not {item!r}")
            if any(c in item for c in "\r\n\0"):
                raise ConfigError(f"header must not contain CR, LF or NUL: {item!r}")
            if not _TOKEN.fullmatch(name.strip()):
                raise ConfigError(f"header name must be a token (letters, digits and !#$%&'*+-.^_`|~), not "
                                  f"{name.strip()!r}")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ConfigError(f"header value must be Latin-1 text: {item!r}") from None

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
                                metavar="SECONDS", bound=">0")
    graceful_shutdown: float = setting(
        30.0, "On shutdown, wait this long for in-flight requests before cancelling them.", metavar="SECONDS",
        bound=">=0")
    worker_healthcheck: float = setting(
        10.0, "Replace a worker process whose event loop has not answered the supervisor for this long.",
        metavar="SECONDS", bound=">0")
    request_header: float = setting(
        30.0, "A request head must be complete this long after its first byte (not pushed back by further "
        "bytes); else 408 and the connection closes.", metavar="SECONDS", bound=">0")
    request_body: float = setting(
        60.0, "Longest wait for the next piece of a request body the app is reading; past it the app gets "
        "http.disconnect and the client 408 (if no response started).", metavar="SECONDS", bound=">0")
    write: float = setting(
        60.0, "Drop a connection whose client has not taken the response bytes we queued for this long.",
        metavar="SECONDS", bound=">0")
    tls_handshake: float = setting(10.0, "Drop a connection whose TLS handshake has not completed in this long.",
                                   metavar="SECONDS", bound=">0")
    ws_handshake: float = setting(
        10.0, "The app must accept or refuse a WebSocket within this long of its request; else 503 and the app "
        "gets websocket.disconnect.", metavar="SECONDS", bound=">0")


@dataclass(frozen=True)
class LimitSettings:
    """Sizes, in bytes, and counts."""

    PREFIX = "limit_"
    request_buffer: int = setting(
        65536, "Pause reading from a client while this many request body bytes wait for the app.",
        metavar="BYTES", bound=">0")
    pipeline_depth: int = setting(
        16, "Pipelined requests queued per connection before reading from it pauses.", metavar="N", bound=">0")
    request_line: int = setting(8192, "Longest request target; a longer one is answered 414.", metavar="BYTES",
        bound=">0")
    request_headers: int = setting(
        65536, "Largest request header section (names, values and their separators); larger is answered 431.",
        metavar="BYTES", bound=">0")
    request_header_count: int = setting(100, "Most request header fields; more are answered 431.", metavar="N",
        bound=">0")
    request_field_size: int = setting(
        0, "Largest request header field (name and value); a larger one is answered 431. 0: only the section's "
        "limit applies.", metavar="BYTES", bound=">=0")
    request_body: int = setting(
        1024 ** 3, "Largest request body; a larger Content-Length is answered 413 before the body is read, a "
        "longer chunked body ends the request (413 if no response started). 0: no limit.", metavar="BYTES", bound=">=0")
    concurrency: int | None = setting(
        None, "Requests handled at once by each process; more are answered 503 with Retry-After "
        "[default: no limit].", metavar="N", bound=">0")
    connections: int | None = setting(
        None, "Open connections per process; at the limit it stops accepting and the kernel's listen backlog "
        "holds new ones [default: no limit].", metavar="N", bound=">0")


@dataclass(frozen=True)
class LoggingSettings:
    """What is logged."""

    PREFIX = ""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = setting(
        "info", "Log level.", choices=("critical", "error", "warning", "info", "debug", "trace"))
    access_log: bool = setting(True, "Log one line per request.")
    log_config: str | None = setting(
        None, "Logging configuration file (dictConfig as .json or .yaml/.yml, or a fileConfig .ini), applied "
        "after tidegate's own set-up.", metavar="PATH")
    access_log_format: str | None = setting(
        None, "Access log line template of named atoms: {client} {client_addr} {method} {path} {query} {target} "
        "{http_version} {scheme} {status} {bytes} {duration_ms} {pid} {time} {header:NAME}.", metavar="TEMPLATE")
    access_log_json: bool = setting(False, "Write the access log as one JSON object a line.")
    access_logfile: str | None = setting(
        None, "Write the access log to this file (appended; '-': stderr) instead of stderr.", metavar="PATH")
    error_logfile: str | None = setting(
        None, "Write the server's log to this file (appended; '-': stderr) instead of stderr.", metavar="PATH")
    use_colors: bool | None = setting(
        None, "Colour the level names [default: on when the log goes to a terminal and NO_COLOR is not set].")

    def validate(self) -> None:
        if self.access_log_format is not None:
            from .accesslog import AccessFormat

            try:
                AccessFormat(self.access_log_format)
            except ValueError as exc:
                raise ConfigError(f"access_log_format: {exc}") from None


@dataclass(frozen=True)
class ProxySettings:
    """Running behind a reverse proxy."""

    PREFIX = ""
    proxy_headers: bool = setting(
        False, "Take the client address, scheme and host from X-Forwarded-For/-Proto/-Host/-Port and Forwarded "
        "headers sent by a trusted proxy.")
    forwarded_allow_ips: str = setting(
        "127.0.0.1", "Comma-separated proxies trusted with --proxy-headers: IP addresses, networks (CIDR), "
        "'unix' for UNIX socket peers, '*' for any.", metavar="IPS")
    proxy_protocol: bool = setting(
        False, "Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy sends it, before TLS): "
        "the client address is taken from it; a connection from a peer not in --forwarded-allow-ips, or with a "
        "missing or malformed header, is closed.")

    def validate(self) -> None:
        from .middleware.proxy_headers import TrustedHosts

        try:
            TrustedHosts(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ConfigError(f"forwarded_allow_ips: {exc}") from None


@dataclass(frozen=True)
class WorkerSettings:
    """Worker processes."""

    PREFIX = ""
    workers: int | None = setting(
        None, "Run N worker processes under a supervisor that binds the listeners once and replaces workers "
        "that die [default: one process, no supervisor].", metavar="N", bound=">0")
    max_requests: int = setting(
        0, "A worker retires gracefully (and is replaced) after this many requests; 0 never.", metavar="N", bound=">=0")
    max_requests_jitter: int = setting(
        0, "Add a random 0..N to each worker's --max-requests, so they do not all retire at once.", metavar="N",
        bound=">=0")
    workers_max_rss: int | None = setting(
        None, "A worker whose resident memory (RSS) passes this many MiB (read every second) retires "
        "gracefully and is replaced [default: no limit].", metavar="MIB", bound=">0")
    workers_lifetime: float | None = setting(
        None, "A worker retires gracefully (and is replaced) once it has served this long, plus up to a tenth more "
        "at random so they do not all retire at once [default: no limit].", metavar="SECONDS", bound=">0")


@dataclass(frozen=True)
class HealthSettings:
    """Behind a load balancer."""

    PREFIX = ""
    health_path: str | None = setting(
        None, "Answer this path (GET or HEAD, any query) from the server itself, never the app: 200 while serving, "
        "503 once shutting down (from the start of --shutdown-delay) [default: off].", metavar="PATH")
    health_log: bool = setting(
        False, "Record the health path's answers as app traffic (access lines, metrics); by default they are not.")
    shutdown_delay: float = setting(
        0.0, "On SIGTERM, go on serving this long, the health path answering 503, so a load balancer stops sending "
        "new requests, before the listeners close and the graceful shutdown begins.", metavar="SECONDS", bound=">=0")

    def validate(self) -> None:
        path = self.health_path
        if path is not None and (not path.startswith("/") or not path.isascii() or any(
                c in path for c in "?# ") or not path.isprintable()):
            raise ConfigError(f"health_path must be a path starting with '/' (ASCII, no query), not {path!r}")


@dataclass(frozen=True)
class ReloadSettings:
    """Development reload."""

    PREFIX = ""
    reload: bool = setting(False, "Restart the server when a watched file changes (development).")
    reload_dirs: tuple[str, ...] = setting(
        (), "Directory to watch (repeat for more) [default: the current directory].", metavar="DIR",
        flag="reload-dir", repeat=True)
    reload_includes: tuple[str, ...] = setting(
        (), "Glob of files whose change restarts (repeat for more), besides *.py.", metavar="GLOB",
        flag="reload-include", repeat=True)
    reload_excludes: tuple[str, ...] = setting(
        (), "Glob of files and directories never watched (repeat for more), besides .*, __pycache__, *.pyc, *~, "
        ".venv, venv, node_modules.", metavar="GLOB", flag="reload-exclude", repeat=True)
    reload_delay: float = setting(
        0.25, "Wait this long for changes to settle before restarting (without watchfiles: how often to poll).",
        metavar="SECONDS", bound=">0")


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics."""

    PREFIX = "metrics_"
    bind: str | None = setting(
        None, "Serve Prometheus metrics at http://HOST:PORT/metrics (from the supervisor, summed over workers).",
        metavar="HOST:PORT")

    def validate(self) -> None:
        if self.bind is not None:
            from .addresses import parse_address

            try:
                address = parse_address(self.bind)
            except ValueError as exc:
                raise ConfigError(f"metrics_bind: {exc}") from None
            if address.kind != "tcp":
                raise ConfigError(f"metrics_bind must be HOST:PORT, not {self.bind!r}")


@dataclass(frozen=True)
class SyncSettings:
    """Sync code: WSGI apps and the blocked-loop detector."""

    PREFIX = ""
    interface: Literal["auto", "asgi", "asgi2", "wsgi"] = setting(
        "auto", "Application interface: 'auto' serves an app taking (environ, start_response) as WSGI and "
        "one taking (scope) alone as ASGI 2, anything else as ASGI 3.", choices=("auto", "asgi", "asgi2", "wsgi"))
    threads: int | None = setting(
        None, "Threads running a WSGI app's requests [default: 10 per CPU core, at most 64].", metavar="N", bound=">0")
    warn_blocking: float | None = setting(
        None, "Log the request and the application stack when the event loop is blocked longer than this "
        "[default: off].", metavar="SECONDS", bound=">0")


@dataclass(frozen=True)
class WebSocketSettings:
    """WebSocket (RFC 6455, RFC 7692)."""

    PREFIX = "ws_"
    max_size: int = setting(16 * 1024 * 1024, "Largest WebSocket message accepted, in bytes after decompression; "
                            "a bigger one closes the connection with 1009.", metavar="BYTES", bound=">0")
    ping_interval: float = setting(20.0, "Ping each WebSocket client this often; 0 disables keepalive pings.",
                                   metavar="SECONDS", bound=">=0")
    ping_timeout: float = setting(20.0, "Close a WebSocket whose client has not answered a ping for this long; "
                                  "0 waits forever.", metavar="SECONDS", bound=">=0")
    max_queue: int = setting(16, "Messages that may wait for an app that is not receiving before reading from "
                             "its client pauses (or --limit-request-buffer bytes of them).", metavar="N", bound=">0")
    close_timeout: float = setting(10.0, "After sending a close frame, wait this long for the client's before "
                                   "dropping the connection.", metavar="SECONDS", bound=">0")
    per_message_deflate: bool = setting(True, "Compress WebSocket messages (permessage-deflate) when the client "
                                        "offers it.")
    implementation: str = setting(
        "auto", "WebSocket: 'auto' speaks it over HTTP/1.1 and HTTP/2 (tidegate's own), 'none' turns it off (an "
        "upgrade is then answered as a plain request).",
        flag="ws", choices=("auto", "none"))


@dataclass(frozen=True)
class ProtocolSettings:
    """Which HTTP versions to speak."""

    PREFIX = ""
    http: Literal["auto", "1", "2"] = setting(
        "auto", "HTTP versions: 'auto' speaks HTTP/1.1 and HTTP/2 (chosen by TLS ALPN; on cleartext by the HTTP/2 "
        "preface or 'Upgrade: h2c'), '1' only HTTP/1.1, '2' only HTTP/2.", choices=("auto", "1", "2"))


@dataclass(frozen=True)
class HTTP2Settings:
    """HTTP/2."""

    PREFIX = "h2_"
    max_concurrent_streams: int = setting(
        100, "Streams one HTTP/2 connection may have open at once (also bounds the apps still running for "
        "streams the client reset).", metavar="N", bound=">0")
    max_header_list_size: int = setting(
        65536, "Largest HTTP/2 request header list (RFC 9113 size: names + values + 32 per field); larger is "
        "answered 431, twice as large ends the connection.", metavar="BYTES", bound=">0")


@dataclass(frozen=True)
class HTTP3Settings:
    """HTTP/3 over QUIC (pip install 'tidegate[http3]')."""

    PREFIX = ""
    http3: bool = setting(
        False, "Serve HTTP/3 over QUIC too (needs --ssl-certfile): a UDP listener on each TLS listener's host and "
        "port (or --quic-bind), advertised to HTTP/1.1 and HTTP/2 clients with Alt-Svc.")
    quic_bind: str | None = setting(
        None, "Listen for QUIC on HOST:PORT instead of each TLS listener's own address (Alt-Svc names its port).",
        metavar="HOST:PORT")
    quic_retry: Literal["auto", "always", "never"] = setting(
        "auto", "QUIC address validation with a Retry packet before a connection is made (one more round trip): "
        "'auto' when many handshakes are in progress (a flood of Initial packets), 'always', or 'never'.",
        choices=("auto", "always", "never"))
    h3_max_concurrent_streams: int = setting(
        100, "Request streams one HTTP/3 connection may have open at once (also bounds the apps still running for "
        "streams the client reset).", metavar="N", bound=">0")
    h3_max_header_list_size: int = setting(
        65536, "Largest HTTP/3 request header section (names + values + 32 per field); larger is answered 431.",
        metavar="BYTES", bound=">0")

    def validate(self) -> None:
        if self.quic_bind is not None:
            from .addresses import parse_address

            try:
                address = parse_address(self.quic_bind)
            except ValueError as exc:
                raise ConfigError(f"quic_bind: {exc}") from None
            if address.kind != "tcp":
                raise ConfigError(f"quic_bind must be HOST:PORT, not {self.quic_bind!r}")


@dataclass(frozen=True)
class TLSSettings:
    """TLS."""

    PREFIX = "ssl_"
    certfile: str | None = setting(None, "Serve HTTPS with this certificate chain (PEM; may include the key).",
                                   metavar="PATH")
    keyfile: str | None = setting(None, "The private key of --ssl-certfile (PEM).", metavar="PATH")
    keyfile_password: str | None = setting(None, "Password of an encrypted --ssl-keyfile.", metavar="PASSWORD")
    ca_certs: str | None = setting(None, "CA certificates (PEM) that client certificates are checked against.",
                                   metavar="PATH")
    cert_reqs: Literal["none", "optional", "required"] = setting(
        "none", "Ask clients for a certificate: 'optional' checks one if given, 'required' refuses clients "
        "without one (needs --ssl-ca-certs).", choices=("none", "optional", "required"))
    ciphers: str | None = setting(None, "OpenSSL cipher list for TLS 1.2 [default: Python's].", metavar="CIPHERS")
    min_version: Literal["1.2", "1.3"] = setting("1.2", "Oldest TLS version accepted.", choices=("1.2", "1.3"))

    def problem(self) -> str | None:
        """Why these settings cannot make a TLS context (checked when serving: each may be set on its own)."""
        if self.certfile is None:
            for name in ("keyfile", "keyfile_password", "ca_certs", "ciphers"):
                if getattr(self, name) is not None:
                    return f"ssl_{name} needs ssl_certfile"
            if self.cert_reqs != "none":
                return "ssl_cert_reqs needs ssl_certfile"
        if self.cert_reqs != "none" and self.ca_certs is None:
            return f"ssl_cert_reqs {self.cert_reqs!r} needs ssl_ca_certs"
        return None


GROUPS: tuple[tuple[str, type[Any]], ...] = (
    ("app", AppSettings),
    ("bind", BindSettings),
    ("http", HTTPSettings),
    ("timeouts", TimeoutSettings),
    ("limits", LimitSettings),
    ("logging", LoggingSettings),
    ("proxy", ProxySettings),
    ("workers", WorkerSettings),
    ("health", HealthSettings),
    ("reload", ReloadSettings),
    ("metrics", MetricsSettings),
    ("sync", SyncSettings),
    ("websocket", WebSocketSettings),
    ("protocols", ProtocolSettings),
    ("h2", HTTP2Settings),
    ("h3", HTTP3Settings),
    ("tls", TLSSettings),
)


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen group of settings per concern.

    Every setting is declared once, in its group; its command line flag, its ``TIDEGATE_*`` environment variable
    and its config file key come from that declaration.  The flat name of a setting is its group's prefix and its
    field's name: ``config.timeouts.keep_alive`` is ``timeout_keep_alive``, the flag ``--timeout-keep-alive``;
    ``config.websocket.max_size`` is ``ws_max_size``; ``config.bind.port`` is ``port``.  Build one from flat names
    with ``Config.from_flat``; a Config is plain, frozen data that pickles (worker processes receive it), and it
    is checked whole when built: a bad value raises ``ConfigError``.

    Attributes:
        app: What to serve: ``app``, ``factory``, ``app_dir``, ``root_path``, ``lifespan``, ``loop``,
            ``gc_threshold``.
        bind: Where to listen: ``host``, ``port``, ``uds``, ``fd``, ``backlog``, ``bind``, ``uds_permissions``.
        http: How responses look: ``server_header``, ``date_header``, ``headers`` (the ``--header`` flag).
        timeouts: Deadlines in seconds, prefix ``timeout_``: ``keep_alive``, ``graceful_shutdown``,
            ``worker_healthcheck``, ``request_header``, ``request_body``, ``write``, ``tls_handshake``,
            ``ws_handshake``.
        limits: Sizes in bytes and counts, prefix ``limit_``: ``request_buffer``, ``pipeline_depth``,
            ``request_line``, ``request_headers``, ``request_header_count``, ``request_field_size``,
            ``request_body``, ``concurrency``, ``connections``.
        logging: What is logged: ``log_level``, ``access_log``, ``log_config``, ``access_log_format``,
            ``access_log_json``, ``access_logfile``, ``error_logfile``, ``use_colors``.
        proxy: Behind a reverse proxy: ``proxy_headers``, ``forwarded_allow_ips``, ``proxy_protocol``.
        workers: Worker processes: ``workers``, ``max_requests``, ``max_requests_jitter``, ``workers_max_rss``
            (in MiB, as granian's), ``workers_lifetime``.
        health: Behind a load balancer: ``health_path``, ``health_log``, ``shutdown_delay``.
        reload: Development reload: ``reload``, ``reload_dirs``, ``reload_includes``, ``reload_excludes``,
            ``reload_delay`` (the flags ``--reload-dir``, ``--reload-include``, ``--reload-exclude``).
        metrics: Prometheus metrics, prefix ``metrics_``: ``bind``.
        sync: WSGI apps and the blocked-loop detector: ``interface``, ``threads``, ``warn_blocking``.
        websocket: WebSocket, prefix ``ws_``: ``max_size``, ``ping_interval``, ``ping_timeout``, ``max_queue``,
            ``close_timeout``, ``per_message_deflate``, ``implementation`` (the ``--ws`` flag).
        protocols: Which HTTP versions to speak: ``http``.
        h2: HTTP/2, prefix ``h2_``: ``max_concurrent_streams``, ``max_header_list_size``.
        h3: HTTP/3 over QUIC: ``http3``, ``quic_bind``, ``quic_retry``, ``h3_max_concurrent_streams``,
            ``h3_max_header_list_size``.
        tls: TLS, prefix ``ssl_``: ``certfile``, ``keyfile``, ``keyfile_password``, ``ca_certs``, ``cert_reqs``,
            ``ciphers``, ``min_version``.
    """

    app: AppSettings = field(default_factory=AppSettings)
    bind: BindSettings = field(default_factory=BindSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    protocols: ProtocolSettings = field(default_factory=ProtocolSettings)
    h2: HTTP2Settings = field(default_factory=HTTP2Settings)
    h3: HTTP3Settings = field(default_factory=HTTP3Settings)
    tls: TLSSettings = field(default_factory=TLSSettings)

    def __post_init__(self) -> None:
        for name, _ in GROUPS:
            group = getattr(self, name)
            _check_bounds(group)
            check = getattr(group, "validate", None)
            if check is not None:
                check()

    @classmethod
    def from_flat(cls, **settings: Any) -> Config:
        """Build a Config from flat setting names, as the command line spells them with ``_`` for ``-``.

        Settings not given keep their defaults.  An int serves for a float, a list of strings for a tuple.

        Args:
            **settings: Flat settings: ``port=0``, ``timeout_keep_alive=2.0``, ``bind=["unix:/run/app.sock"]``.

        Returns:
            The configuration, checked whole.

        Raises:
            ConfigError: A setting is unknown, or has a value of the wrong type or out of its bounds; the message
                names it.

        Example:
            ```python
            config = Config.from_flat(app="myproject.asgi:application", port=8080, workers=4)
            assert config.workers.workers == 4
            ```
        """
        grouped = _grouped(settings)
        return cls(**{name: kind(**grouped.get(name, {})) for name, kind in GROUPS})

    def replace(self, **settings: Any) -> Config:
        """A copy with some settings changed; the Config itself is frozen.

        Args:
            **settings: Flat settings, as ``from_flat`` takes them.

        Returns:
            The new configuration, checked whole.

        Raises:
            ConfigError: A setting is unknown or has a value it cannot take.
        """
        groups = {g: dataclasses.replace(getattr(self, g), **c) for g, c in _grouped(settings).items()}
        return dataclasses.replace(self, **groups)

    @classmethod
    def for_run(cls, app: object, config: Config | None, settings: dict[str, Any]) -> Config:
        """The settings ``tidegate.run(app, config=..., **settings)`` serves with.

        Args:
            app: What ``run`` was given to serve: an import string becomes the ``app`` setting (unless ``config``
                is given); a callable is served as it is and leaves the setting alone.
            config: The configuration to start from, if any.
            settings: Flat settings to change.

        Returns:
            ``config`` with ``settings`` changed or, without one, a Config from ``settings`` and ``app``.

        Raises:
            ConfigError: A setting is unknown or has a value it cannot take.
        """
        if config is not None:
            return config.replace(**settings) if settings else config
        if isinstance(app, str):
            settings = {**settings, "app": app}
        return cls.from_flat(**settings)


def _grouped(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat settings → ``{group: {field: value}}``, each value checked (see :func:`_typed`)."""
    index = flat_index()
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        if key not in index:
            raise ConfigError(f"unknown setting {key!r}")
        group, fname = index[key]
        grouped.setdefault(group, {})[fname] = _typed(key, group, fname, value)
    return grouped


def _typed(flat: str, group: str, fname: str, value: Any) -> Any:
    """``value`` checked against the declared type of setting ``flat`` (and its choices)."""
    declared = next(f for f in dataclasses.fields(dict(GROUPS)[group]) if f.name == fname)
    annotation = str(declared.type)
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None and "None" in kinds:
        return None
    if annotation.startswith("tuple"):
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        expected = "a list of strings"
    elif "bool" in kinds:
        if isinstance(value, bool):
            return value
        expected = "True or False"
    elif "int" in kinds:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an int"
    elif "float" in kinds:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    else:
        choices = declared.metadata.get("choices") or ()
        if isinstance(value, str) and (not choices or value in choices):
            return value
        expected = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
    raise ConfigError(f"{flat} must be {expected}, not {value!r}")


def flat_index() -> dict[str, tuple[str, str]]:
    """Map each flat setting name (``timeout_keep_alive``) to (group attribute, field name)."""
    index = {}
    for group, kind in GROUPS:
        for f in dataclasses.fields(kind):
            index[kind.PREFIX + f.name] = (group, f.name)
    return index

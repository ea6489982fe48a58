"""The command line.  Every flag is generated from a setting declared in :mod:`tidegate.config`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

from . import BUILD, __version__, startup
from .config import GROUPS, Config, ConfigError
from .sources import render, resolve

__all__ = ["build_parser", "main", "parse_args"]


#: the spellings uvicorn and gunicorn users type, for the setting they mean (shown in --help beside its own flag)
ALIASES: dict[str, tuple[str, ...]] = {
    "workers": ("-w",),
    "bind": ("-b",),
    "max_requests": ("--limit-max-requests",),
    "max_requests_jitter": ("--limit-max-requests-jitter",),
    "timeout_graceful_shutdown": ("--graceful-timeout",),
    "timeout_keep_alive": ("--keep-alive",),
    "limit_request_header_count": ("--limit-request-fields",),
    "limit_request_field_size": ("--limit-request-field_size",),
    "limit_request_headers": ("--h11-max-incomplete-event-size",),
    "ssl_min_version": ("--ssl-version",),
}
#: values other servers take for a setting's choices, and ours they mean
VALUE_ALIASES: dict[str, dict[str, str]] = {
    "ssl_cert_reqs": {"0": "none", "1": "optional", "2": "required"},  # uvicorn's ssl.CERT_* numbers
    "interface": {"asgi3": "asgi"},
    "http": {"h11": "auto", "httptools": "auto"},  # uvicorn's HTTP/1.1 implementations
    # uvicorn's WebSocket implementations
    "ws_implementation": {"websockets": "auto", "websockets-sansio": "auto", "wsproto": "auto"},
    # uvicorn's and gunicorn's --ssl-version: an ssl.PROTOCOL_* number or name (TLS, TLS_SERVER: negotiate the
    # best; TLSv1_2, TLSv1_3: that one at least)
    "ssl_min_version": {"2": "1.2", "17": "1.2", "tls": "1.2", "tls_server": "1.2", "5": "1.2", "tlsv1_2": "1.2",
                        "tlsv1_3": "1.3"},
}
#: why such a value is taken as ours (a note on stderr when it is used)
VALUE_NOTES = {
    "http": "tidegate parses HTTP/1.1 itself (httptools, strict): --http {value} is taken as --http auto "
            "(HTTP/1.1 and HTTP/2)",
    "ws_implementation": "tidegate speaks WebSocket itself: --ws {value} is taken as --ws auto",
    "ssl_min_version": "--ssl-version {value} is taken as the oldest TLS version accepted (--ssl-min-version); "
                       "TLS 1.0 and 1.1 are never accepted",
}
#: booleans that uvicorn takes with a value (--ws-per-message-deflate false)
_VALUED_BOOLEANS = ("--ws-per-message-deflate",)
_BOOLEAN_TEXT = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
                 "off": False}


def _choice(flat: str, notes: list[str]) -> Any:
    aliases = VALUE_ALIASES.get(flat, {})

    def convert(text: str) -> str:
        ours = aliases.get(text.lower())
        if ours is None:
            return text
        if flat in VALUE_NOTES:
            notes.append(VALUE_NOTES[flat].format(value=text))
        return ours

    return convert


def _valued_booleans(argv: Sequence[str]) -> list[str]:
    """``--ws-per-message-deflate false`` (uvicorn's spelling) as ``--no-ws-per-message-deflate``."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, text = arg.partition("=")
        if name in _VALUED_BOOLEANS:
            if not eq and i + 1 < len(args) and args[i + 1].lower() in _BOOLEAN_TEXT:
                text, eq = args[i + 1], "="
                i += 1
            if eq:
                value = _BOOLEAN_TEXT.get(text.lower())
                if value is None:
                    raise SystemExit(f"tidegate: error: {name} takes true or false, not {text!r}")
                arg = name if value else "--no-" + name[2:]
        out.append(arg)
        i += 1
    return out


def _value_type(annotation: str) -> Any:
    names = {part.strip() for part in annotation.split("|")}
    if "float" in names:
        return float
    if "int" in names:
        return int
    return str


def build_parser(notes: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; ``notes`` collects what is said about values taken from other servers' spellings."""
    notes = [] if notes is None else notes
    parser = argparse.ArgumentParser(
        prog="tidegate", description="Serve an ASGI (or WSGI) application over HTTP/1.1, HTTP/2 and WebSocket.",
        epilog="Example: tidegate tidegate.demo:app --port 8000")
    parser.add_argument("--version", action="version", version=f"tidegate {__version__}, {BUILD}")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="Read settings from this TOML file (a pyproject.toml is read from [tool.tidegate]) "
                        "[default: ./tidegate.toml, else [tool.tidegate] in ./pyproject.toml].")
    parser.add_argument("--print-config", action="store_true",
                        help="Print the effective settings and where each came from, then exit.")
    parser.add_argument("--env-file", metavar="PATH", default=None,
                        help="Load environment variables from this file (KEY=VALUE lines, as uvicorn's --env-file) "
                        "before anything else; variables already set win. TIDEGATE_* variables in it are settings.")
    parser.add_argument("--chdir", metavar="DIR", default=None,
                        help="Change to this directory first (as gunicorn's --chdir): the config file, --app-dir "
                        "and relative paths are found from there.")
    parser.add_argument("--pid", metavar="PATH", default=None,
                        help="Write the process id (the supervisor's, with workers) to this file; it is removed at "
                        "exit.")
    for _, kind in GROUPS:
        group = parser.add_argument_group((kind.__doc__ or "").strip().rstrip(".").lower() or None)
        for field in dataclasses.fields(kind):
            meta = field.metadata
            flat = kind.PREFIX + field.name
            if flat == "app":
                group.add_argument("app", metavar="APP", nargs="?", default=argparse.SUPPRESS, help=meta["help"])
                continue
            flags = ["--" + (meta["flag"] or flat).replace("_", "-"), *ALIASES.get(flat, ())]
            shown = field.default if field.default not in ((), None, "") else None
            help_text = meta["help"] + (f" [default: {shown}]" if shown is not None else "")
            common: dict[str, Any] = {"dest": flat, "default": argparse.SUPPRESS, "help": help_text}
            if isinstance(field.default, bool) or "bool" in str(field.type):
                group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
            elif meta["repeat"]:
                group.add_argument(*flags, action="append", metavar=meta["metavar"], **common)
            elif meta["choices"]:
                if flat in VALUE_ALIASES:
                    shown_choices = "{" + ",".join(meta["choices"]) + "}"
                    common["help"] += " (also: " + ", ".join(
                        f"{k}={v}" for k, v in VALUE_ALIASES[flat].items()) + ")"
                    group.add_argument(*flags, choices=meta["choices"], type=_choice(flat, notes),
                                       metavar=shown_choices, **common)
                else:
                    group.add_argument(*flags, choices=meta["choices"], **common)
            else:
                group.add_argument(*flags, type=_value_type(str(field.type)), metavar=meta["metavar"], **common)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Command line → Config.  Raises ``SystemExit`` (code 2) on a usage error, as argparse does."""
    notes: list[str] = []
    parser = build_parser(notes)
    namespace = parser.parse_args(_valued_booleans(sys.argv[1:] if argv is None else argv))
    settings = vars(namespace)
    if "headers" in settings:
        settings["headers"] = tuple(settings["headers"])
    config_file, print_config = settings.pop("config"), settings.pop("print_config")
    env_file, chdir, pid_file = settings.pop("env_file"), settings.pop("chdir"), settings.pop("pid")
    startup.remember_start()  # for a binary upgrade (SIGUSR2) to start the same command again
    try:
        if chdir is not None:
            try:
                os.chdir(chdir)
            except OSError as exc:
                raise ConfigError(f"--chdir {chdir}: {exc.strerror}") from None
        if env_file is not None:
            load_env_file(env_file)
        resolved = resolve(settings, config_file=config_file)
    except ConfigError as exc:
        parser.error(str(exc))
    for note in notes:
        sys.stderr.write(f"tidegate: note: {note}\n")
    for note in resolved.notes:
        sys.stderr.write(f"tidegate: warning: {note}\n")
    if print_config:
        sys.stdout.write(render(resolved))
        sys.exit(0)
    if not resolved.config.app.app:
        parser.error("the APP argument is required (for example: tidegate tidegate.demo:app)")
    if pid_file is not None:
        write_pid_file(pid_file)
    return resolved.config


def load_env_file(path: str, environ: MutableMapping[str, str] | None = None) -> None:
    """``KEY=VALUE`` lines (``export`` before a key, ``#`` comments, single or double quotes around a value) into
    ``environ``; a variable already set is left as it is."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[7:].lstrip()
        key, eq, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ConfigError(f"--env-file {path}, line {number}: not KEY=VALUE: {line!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':  # escapes only between double quotes, as in a shell
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        environ.setdefault(key, value)


def write_pid_file(path: str) -> None:
    """Write this process's id to ``path``, removed when this process exits (not when a worker does, nor once the
    next generation of a binary upgrade has written its own)."""
    try:
        startup.write_pid_file(path)
    except OSError as exc:
        raise SystemExit(f"tidegate: error: --pid {path}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> None:
    from .launch import run_config

    config = parse_args(argv)
    sys.exit(run_config(config))

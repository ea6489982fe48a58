"""The command line.  Every flag is generated from a setting declared in :mod:`tidegate.config`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import GROUPS, Config, ConfigError
from .sources import render, resolve

__all__ = ["build_parser", "main", "parse_args"]


def _value_type(annotation: str) -> Any:
    names = {part.strip() for part in annotation.split("|")}
    if "float" in names:
        return float
    if "int" in names:
        return int
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidegate", description="Serve an ASGI application over HTTP/1.1.",
        epilog="Example: tidegate tidegate.demo:app --port 8000")
    parser.add_argument("--version", action="version", version=f"tidegate {__version__}")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="Read settings from this TOML file (a pyproject.toml is read from [tool.tidegate]) "
                        "[default: ./tidegate.toml, else [tool.tidegate] in ./pyproject.toml].")
    parser.add_argument("--print-config", action="store_true",
                        help="Print the effective settings and where each came from, then exit.")
    for _, kind in GROUPS:
        group = parser.add_argument_group((kind.__doc__ or "").strip().rstrip(".").lower() or None)
        for field in dataclasses.fields(kind):
            meta = field.metadata
            flat = kind.PREFIX + field.name
            if flat == "app":
                group.add_argument("app", metavar="APP", nargs="?", default=argparse.SUPPRESS, help=meta["help"])
                continue
            flag = "--" + (meta["flag"] or flat).replace("_", "-")
            shown = field.default if field.default not in ((), None, "") else None
            help_text = meta["help"] + (f" [default: {shown}]" if shown is not None else "")
            common: dict[str, Any] = {"dest": flat, "default": argparse.SUPPRESS, "help": help_text}
            if isinstance(field.default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            elif meta["repeat"]:
                group.add_argument(flag, action="append", metavar=meta["metavar"], **common)
            elif meta["choices"]:
                group.add_argument(flag, choices=meta["choices"], **common)
            else:
                group.add_argument(flag, type=_value_type(str(field.type)), metavar=meta["metavar"], **common)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Command line → Config.  Raises ``SystemExit`` (code 2) on a usage error, as argparse does."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    settings = vars(namespace)
    if "headers" in settings:
        settings["headers"] = tuple(settings["headers"])
    config_file, print_config = settings.pop("config"), settings.pop("print_config")
    try:
        resolved = resolve(settings, config_file=config_file)
    except ConfigError as exc:
        parser.error(str(exc))
    for note in resolved.notes:
        sys.stderr.write(f"tidegate: warning: {note}\n")
    if print_config:
        sys.stdout.write(render(resolved))
        sys.exit(0)
    if not resolved.config.app.app:
        parser.error("the APP argument is required (for example: tidegate tidegate.demo:app)")
    return resolved.config


def main(argv: Sequence[str] | None = None) -> None:
    from .launch import run_config

    config = parse_args(argv)
    sys.exit(run_config(config))

"""Where settings come from: the command line, ``TIDEGATE_*`` environment variables, a config file, defaults.

Every setting is declared once in :mod:`tidegate.config`.  From its flat name (``timeout_keep_alive``) come the
command line flag (``--timeout-keep-alive``, see :mod:`tidegate.cli`), the environment variable
(``TIDEGATE_TIMEOUT_KEEP_ALIVE``) and the config file key (``timeout_keep_alive``; ``timeout-keep-alive`` is
accepted too).  Precedence: command line > environment > config file > the field's own variables
(``WEB_CONCURRENCY`` for ``workers``, ``FORWARDED_ALLOW_IPS`` for ``forwarded_allow_ips``, as uvicorn and gunicorn
read them) > defaults.

A ``TIDEGATE_*`` variable that is no setting, or whose value is a Kubernetes service link (``tcp://…``: Kubernetes
sets ``TIDEGATE_PORT``, ``TIDEGATE_SERVICE_HOST`` … for a Service named ``tidegate``), is ignored with a warning.

The config file is ``--config PATH`` (or ``TIDEGATE_CONFIG``); without one, ``tidegate.toml`` in the current
directory, else the ``[tool.tidegate]`` table of ``pyproject.toml`` there.  An unknown key or a value of the wrong
type is a :class:`~tidegate.config.ConfigError` that names the key and where it was set.

A configuration read from a config file can be assembled again from the file as it is now (the supervisor does
on SIGHUP): :func:`reassembly_for` gives the same command line settings, the environment as it was and the same
file, as :class:`Reassembly`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._build import NO_EXTENSIONS
from .config import GROUPS, Config, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "Reassembly", "Resolved", "env_name", "find_config_file", "read_config_file", "reassembly_for",
           "render", "resolve"]

ENV_PREFIX = "TIDEGATE_"
#: environment variables that are not settings
# the config file, the binary upgrade's inherited sockets, and the choice of the pure Python build (see _build)
_ENV_META = {"TIDEGATE_CONFIG", "TIDEGATE_INHERIT_FDS", "TIDEGATE_INHERIT_PID", NO_EXTENSIONS}
#: the variables other servers read, for the setting they stand for (below every tidegate source)
_FIELD_ENV = {"WEB_CONCURRENCY": "workers", "FORWARDED_ALLOW_IPS": "forwarded_allow_ips"}
#: how a Kubernetes service link variable's value begins
_SERVICE_LINK = ("tcp://", "udp://", "sctp://")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Declared:
    """One setting as declared: its flat name, type, default and CLI flag."""

    flat: str
    annotation: str
    default: Any
    choices: tuple[str, ...]
    flag: str
    repeat: bool


def declarations() -> dict[str, Declared]:
    found = {}
    for _, kind in GROUPS:
        for f in dataclasses.fields(kind):
            flat = kind.PREFIX + f.name
            meta = f.metadata
            flag = "APP" if flat == "app" else "--" + (meta.get("flag") or flat).replace("_", "-")
            found[flat] = Declared(flat, str(f.type), f.default, tuple(meta.get("choices") or ()), flag,
                                   bool(meta.get("repeat")))
    return found


def key_names(decls: Mapping[str, Declared]) -> dict[str, str]:
    """The config file keys that are a flag's name where it differs from the setting's (``header`` for
    ``headers``, ``reload_dir`` for ``reload_dirs``, ``ws`` for ``ws_implementation``), for the setting."""
    keys = {}
    for flat, decl in decls.items():
        if decl.flag.startswith("--"):
            key = decl.flag[2:].replace("-", "_")
            if key != flat:
                keys[key] = flat
    return keys


def env_name(flat: str) -> str:
    return ENV_PREFIX + flat.upper()


def _kinds(annotation: str) -> set[str]:
    return {part.strip() for part in annotation.split("|")}


# numbers a setting may be: (its kind, the conversion, the Python types taken as they are, what the error expects)
_NUMBERS: tuple[tuple[str, Callable[[Any], Any], tuple[type, ...], str], ...] = (
    ("int", int, (int,), "an integer"),
    ("float", float, (int, float), "a number"),
)


def coerce(decl: Declared, value: Any, where: str, *, from_text: bool) -> Any:
    """``value`` as the setting's type; ``from_text`` for environment strings.  ConfigError names ``where``."""
    kinds = _kinds(decl.annotation)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {decl.flat} must be {expected}, not {value!r}")

    if decl.annotation.startswith("tuple"):
        if from_text:
            assert isinstance(value, str)
            separator = "\n" if "\n" in value else ","
            return tuple(part.strip() for part in value.split(separator) if part.strip())
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise bad("a list of strings")
    if "None" in kinds and (value is None or (from_text and value.strip() == "")):
        return None
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        if from_text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    for kind, convert, accepted, expected in _NUMBERS:
        if kind in kinds:
            if from_text:
                try:
                    return convert(value.strip())
                except ValueError:
                    raise bad(expected) from None
            if isinstance(value, accepted) and not isinstance(value, bool):
                return convert(value)
            raise bad(expected)
    if not isinstance(value, str):
        raise bad("a string")
    if decl.choices and value not in decl.choices:
        raise bad("one of " + ", ".join(repr(c) for c in decl.choices))
    return value


def find_config_file(directory: Path) -> Path | None:
    """``tidegate.toml`` in ``directory``, else its ``pyproject.toml`` if that has a ``[tool.tidegate]`` table."""
    candidate = directory / "tidegate.toml"
    if candidate.is_file():
        return candidate
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
        if isinstance(data.get("tool"), dict) and "tidegate" in data["tool"]:
            return pyproject
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings table of a config file: the whole of ``tidegate.toml``, ``[tool.tidegate]`` of a pyproject."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("tidegate")
        if not isinstance(table, dict):
            raise ConfigError(f"{path} has no [tool.tidegate] table")
        return dict(table)
    return dict(data)


@dataclass
class Resolved:
    """The effective configuration and, for each flat setting, where its value came from."""

    config: Config
    origins: dict[str, str]
    file: Path | None
    #: what was ignored, and why (for a warning)
    notes: list[str] = dataclasses.field(default_factory=list)


def resolve(cli: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
            cwd: Path | None = None, config_file: str | None = None) -> Resolved:
    """Merge the sources into one :class:`Config`.  ``cli`` holds the flat settings given on the command line."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    decls = declarations()
    values: dict[str, Any] = {}
    origins: dict[str, str] = dict.fromkeys(decls, "default")
    notes: list[str] = []

    for name, flat in _FIELD_ENV.items():
        text = environ.get(name, "").strip()
        if text:
            values[flat] = coerce(decls[flat], text, f"environment variable {name}", from_text=True)
            origins[flat] = f"env {name}"

    path_text = config_file or environ.get("TIDEGATE_CONFIG") or None
    path = (cwd / path_text) if path_text else find_config_file(cwd)
    if path is not None:
        shown = path_text or path.name
        table = read_config_file(path)
        prefix = "[tool.tidegate] in " if path.name == "pyproject.toml" else ""
        by_flag = key_names(decls)
        for key, value in table.items():
            flat = key.replace("-", "_")
            flat = by_flag.get(flat, flat)
            where = f"{prefix}{shown}: key {key!r}"
            if flat not in decls:
                raise ConfigError(f"{prefix}{shown}: unknown key {key!r}")
            values[flat] = coerce(decls[flat], value, where, from_text=False)
            origins[flat] = f"file {shown}"

    ignored: list[str] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_META:
            continue
        flat = name[len(ENV_PREFIX):].lower()
        if flat not in decls or value.startswith(_SERVICE_LINK):
            ignored.append(name)
            continue
        values[flat] = coerce(decls[flat], value, f"environment variable {name}", from_text=True)
        origins[flat] = f"env {name}"
    if ignored:
        notes.append(f"ignored environment variables that are no tidegate settings: {', '.join(sorted(ignored))} "
                     "(Kubernetes sets such variables, tcp:// links among them, for a Service named tidegate; a "
                     "setting's variable is TIDEGATE_ and its flag's name, e.g. TIDEGATE_TIMEOUT_KEEP_ALIVE)")

    for flat, value in (cli or {}).items():
        if flat not in decls:
            raise ConfigError(f"unknown setting {flat!r}")
        values[flat] = tuple(value) if decls[flat].repeat and isinstance(value, list) else value
        origins[flat] = "command line " + decls[flat].flag

    try:
        config = Config.from_flat(**values)
    except ConfigError as exc:
        raise ConfigError(_with_origin(str(exc), origins)) from None
    global _last
    _last = (config, Reassembly(path, dict(cli or {}), dict(environ), cwd)) if path is not None else None
    return Resolved(config, origins, path, notes)


@dataclass(frozen=True)
class Reassembly:
    """How a configuration was assembled from a config file, to assemble it again from the file as it is now: the
    same command line settings (they still win over the file), the environment as it was then, the same file (the
    one found then, even if another would be found now)."""

    file: Path
    cli: dict[str, Any]
    environ: dict[str, str]
    cwd: Path

    def resolve(self) -> Resolved:
        """The settings as the file says now; a :class:`~tidegate.config.ConfigError` if it cannot be read or has a
        bad key or value."""
        return resolve(self.cli, environ=self.environ, cwd=self.cwd, config_file=str(self.file))


#: the configuration :func:`resolve` assembled last from a config file, and how to assemble it again
_last: tuple[Config, Reassembly] | None = None


def reassembly_for(config: Config) -> Reassembly | None:
    """How ``config`` can be assembled again, if it is what :func:`resolve` made last and a config file was read for
    it; None for a configuration built another way (``tidegate.run(...)``, ``Config(...)``) or without a file."""
    if _last is None or _last[0] != config:
        return None
    return _last[1]


def _with_origin(message: str, origins: Mapping[str, str]) -> str:
    """Add where the setting a validation message names was set, when not from the command line or a default."""
    named = [word for word in message.replace(":", " ").split() if word in origins]
    if not named:
        return message
    origin = origins[named[0]]
    if origin == "default" or origin.startswith("command line"):
        return message
    return f"{message} (set by {origin})"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def render(resolved: Resolved) -> str:
    """The effective settings as TOML a config file could hold, each with where it came from."""
    rows = []
    config = resolved.config
    also = {flat: key for key, flat in key_names(declarations()).items()}
    for group, kind in GROUPS:
        settings = getattr(config, group)
        for f in dataclasses.fields(kind):
            flat = kind.PREFIX + f.name
            value = getattr(settings, f.name)
            text = f"# {flat} (not set)" if value is None else f"{flat} = {_toml_value(value)}"
            origin = resolved.origins.get(flat, "default")
            if flat in also:
                origin += f" (key also: {also[flat]})"
            rows.append((text, origin))
    width = min(max(len(text) for text, _ in rows), 60)
    lines = [f"# effective tidegate settings; config file: {resolved.file or 'none'}"]
    lines.extend(f"{text.ljust(width)}  # {origin}" for text, origin in rows)
    return "\n".join(lines) + "\n"

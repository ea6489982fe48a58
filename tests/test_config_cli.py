"""Settings and the command line: every flag of the issue maps to its setting, bad values name it, Config is data."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tidegate
from tidegate.cli import build_parser, parse_args
from tidegate.config import GROUPS, Config, ConfigError, flat_index

APP = "tidegate.demo:app"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TIDEGATE_* settings and no config file in the working directory: only the command line counts (the choice
    of build, TIDEGATE_NO_EXTENSIONS, is no setting and stays)."""
    for name in list(os.environ):
        if name.startswith("TIDEGATE_") and name != "TIDEGATE_NO_EXTENSIONS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def value(config: Config, flat: str) -> Any:
    group, name = flat_index()[flat]
    return getattr(getattr(config, group), name)


def parse(*argv: str) -> Config:
    return parse_args([APP, *argv])


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The message of a command line refused with exit code 2."""
    with pytest.raises(SystemExit) as info:
        parse_args(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- flags


FLAGS = [
    # (arguments, flat setting, value)
    (["--host", "::1"], "host", "::1"),
    (["--host", "0.0.0.0"], "host", "0.0.0.0"),
    (["--port", "9000"], "port", 9000),
    (["--port", "0"], "port", 0),
    (["--uds", "/tmp/tidegate.sock"], "uds", "/tmp/tidegate.sock"),
    (["--fd", "3"], "fd", 3),
    (["--app-dir", "src"], "app_dir", "src"),
    (["--factory"], "factory", True),
    (["--root-path", "/api"], "root_path", "/api"),
    (["--loop", "auto"], "loop", "auto"),
    (["--loop", "asyncio"], "loop", "asyncio"),
    (["--loop", "uvloop"], "loop", "uvloop"),
    (["--lifespan", "auto"], "lifespan", "auto"),
    (["--lifespan", "on"], "lifespan", "on"),
    (["--lifespan", "off"], "lifespan", "off"),
    (["--timeout-keep-alive", "2.5"], "timeout_keep_alive", 2.5),
    (["--timeout-keep-alive", "10"], "timeout_keep_alive", 10.0),
    (["--timeout-graceful-shutdown", "0"], "timeout_graceful_shutdown", 0.0),
    (["--timeout-graceful-shutdown", "45"], "timeout_graceful_shutdown", 45.0),
    (["--log-level", "critical"], "log_level", "critical"),
    (["--log-level", "error"], "log_level", "error"),
    (["--log-level", "warning"], "log_level", "warning"),
    (["--log-level", "info"], "log_level", "info"),
    (["--log-level", "debug"], "log_level", "debug"),
    (["--log-level", "trace"], "log_level", "trace"),
    (["--access-log"], "access_log", True),
    (["--no-access-log"], "access_log", False),
    (["--server-header"], "server_header", True),
    (["--no-server-header"], "server_header", False),
    (["--date-header"], "date_header", True),
    (["--no-date-header"], "date_header", False),
    (["--header", "X-Frame-Options:DENY"], "headers", ("X-Frame-Options:DENY",)),
    (["--header", "X-A: 1", "--header", "x-b:two words"], "headers", ("X-A: 1", "x-b:two words")),
    (["--port=8080"], "port", 8080),
]


@pytest.mark.parametrize(("argv", "flat", "expected"), FLAGS, ids=[" ".join(f[0]) for f in FLAGS])
def test_each_flag_sets_its_setting(argv: list[str], flat: str, expected: Any) -> None:
    config = parse(*argv)
    assert value(config, flat) == expected
    assert type(value(config, flat)) is type(expected)


ALIASES = [
    # (the spelling another server takes, the flat setting, the value): uvicorn's, then gunicorn's
    (["--limit-max-requests", "100"], "max_requests", 100),
    (["--limit-max-requests-jitter", "10"], "max_requests_jitter", 10),
    (["--ssl-cert-reqs", "0"], "ssl_cert_reqs", "none"),
    (["--ssl-cert-reqs", "1"], "ssl_cert_reqs", "optional"),
    (["--ssl-cert-reqs", "2"], "ssl_cert_reqs", "required"),
    (["--ws-per-message-deflate", "false"], "ws_per_message_deflate", False),
    (["--ws-per-message-deflate=False"], "ws_per_message_deflate", False),
    (["--ws-per-message-deflate", "true"], "ws_per_message_deflate", True),
    (["--interface", "asgi3"], "interface", "asgi"),
    (["--http", "h11"], "http", "auto"),
    (["--http", "httptools"], "http", "auto"),
    (["--ws", "none"], "ws_implementation", "none"),
    (["--ws", "websockets"], "ws_implementation", "auto"),
    (["--ws", "wsproto"], "ws_implementation", "auto"),
    (["--ws", "websockets-sansio"], "ws_implementation", "auto"),  # uvicorn's sans-I/O websockets
    (["--h11-max-incomplete-event-size", "16384"], "limit_request_headers", 16384),
    (["-w", "3"], "workers", 3),
    (["-b", "127.0.0.1:9000", "-b", "unix:/tmp/t.sock"], "bind", ("127.0.0.1:9000", "unix:/tmp/t.sock")),
    (["--graceful-timeout", "12"], "timeout_graceful_shutdown", 12.0),
    (["--keep-alive", "2"], "timeout_keep_alive", 2.0),
    (["--limit-request-fields", "50"], "limit_request_header_count", 50),
    (["--ws-max-queue", "32"], "ws_max_queue", 32),
    (["--limit-request-field_size", "8190"], "limit_request_field_size", 8190),
    (["--reload-delay", "0.5"], "reload_delay", 0.5),
    (["--ssl-version", "17"], "ssl_min_version", "1.2"),  # uvicorn's default, ssl.PROTOCOL_TLS_SERVER
    (["--ssl-version", "TLSv1_3"], "ssl_min_version", "1.3"),  # gunicorn's names
    (["--ssl-version", "1.3"], "ssl_min_version", "1.3"),
]


@pytest.mark.parametrize(("argv", "flat", "expected"), ALIASES, ids=[" ".join(f[0]) for f in ALIASES])
def test_other_servers_spellings_set_the_setting_they_mean(argv: list[str], flat: str, expected: Any) -> None:
    assert value(parse(*argv), flat) == expected


def test_aliases_are_shown_beside_the_flag_not_as_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    if sys.version_info >= (3, 13):  # argparse names the metavar once, after the last spelling
        assert "--max-requests, --limit-max-requests N" in text and "--workers, -w N" in text
    else:
        assert "--max-requests N, --limit-max-requests N" in text and "--workers N, -w N" in text
    assert "0=none, 1=optional, 2=required" in text
    meta = {"help", "version", "config", "print_config", "env_file", "chdir", "pid"}
    assert set(flat_index()) == {a.dest for a in build_parser()._actions} - meta


def test_a_parser_choice_of_another_server_is_taken_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    parse("--http", "httptools", "--ws", "wsproto")
    err = capsys.readouterr().err
    assert "tidegate: note: tidegate parses HTTP/1.1 itself" in err and "--ws wsproto is taken as --ws auto" in err


def test_an_ssl_version_older_than_tls_1_2_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--ssl-version", "TLSv1")  # ssl.PROTOCOL_TLSv1: not accepted, whatever the spelling
    assert "--ssl-min-version" in capsys.readouterr().err
    parse("--ssl-version", "2")
    assert "is taken as the oldest TLS version accepted" in capsys.readouterr().err


def test_a_valued_boolean_with_another_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("--ws-per-message-deflate=maybe")
    assert "takes true or false" in str(info.value.code)
    assert parse("--ws-per-message-deflate").websocket.per_message_deflate is True  # the flag alone, as before
    assert parse_args(["--no-ws-per-message-deflate", APP]).websocket.per_message_deflate is False


def test_the_app_argument() -> None:
    assert parse_args(["main:api.app"]).app.app == "main:api.app"


def test_defaults() -> None:
    config = parse()
    expected = {
        "app": APP, "host": "127.0.0.1", "port": 8000, "uds": None, "fd": None, "app_dir": ".", "factory": False,
        "root_path": "", "loop": "auto", "lifespan": "auto", "timeout_keep_alive": 5.0,
        "timeout_graceful_shutdown": 30.0, "log_level": "info", "access_log": True, "server_header": True,
        "date_header": True, "headers": (),
    }
    assert {flat: value(config, flat) for flat in expected} == expected
    assert config == Config.from_flat(app=APP)


def test_header_pairs_for_the_response() -> None:
    config = parse("--header", "X-A: 1", "--header", "Cache-Control:no-store, private ")
    assert config.http.header_pairs() == [(b"x-a", b"1"), (b"cache-control", b"no-store, private")]


def test_every_setting_has_one_flag_and_the_help_lists_the_issues_flags(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    dests = {action.dest for action in parser._actions}
    assert set(flat_index()) <= dests
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--host", "--port", "--uds", "--fd", "--app-dir", "--factory", "--root-path", "--loop",
                 "--lifespan", "--timeout-keep-alive", "--timeout-graceful-shutdown", "--log-level",
                 "--access-log", "--no-access-log", "--server-header", "--no-server-header", "--date-header",
                 "--no-date-header", "--header", "--version", "--help"):
        assert flag in text, flag


def test_flat_names_are_unique_across_groups() -> None:
    names = [kind.PREFIX + f.name for _, kind in GROUPS for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tidegate {tidegate.__version__}, {tidegate.BUILD}"


@pytest.mark.parametrize("command", [[sys.executable, "-m", "tidegate"]], ids=["python -m tidegate"])
def test_the_module_runs_the_cli(command: list[str], tmp_path: Path) -> None:
    # no tidegate setting from the environment; the choice of build (TIDEGATE_NO_EXTENSIONS) is kept
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_") or k == "TIDEGATE_NO_EXTENSIONS"}
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env=env, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, f"tidegate {tidegate.__version__}, {tidegate.BUILD}")
    done = subprocess.run([*command, "--port", "nope", APP], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path, env=env, check=False)
    assert done.returncode == 2
    assert "--port" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------- bad values


BAD_ARGS = [
    # (arguments, what the message must name)
    ([APP, "--port", "http"], "--port"),
    ([APP, "--port", "70000"], "port"),
    ([APP, "--port", "-1"], "port"),
    ([APP, "--fd", "three"], "--fd"),
    ([APP, "--fd", "-1"], "fd"),
    ([APP, "--timeout-keep-alive", "soon"], "--timeout-keep-alive"),
    ([APP, "--timeout-keep-alive", "0"], "timeout_keep_alive"),
    ([APP, "--timeout-keep-alive", "-5"], "timeout_keep_alive"),
    ([APP, "--timeout-graceful-shutdown", "-1"], "timeout_graceful_shutdown"),
    ([APP, "--loop", "tokio"], "--loop"),
    ([APP, "--lifespan", "sometimes"], "--lifespan"),
    ([APP, "--log-level", "verbose"], "--log-level"),
    ([APP, "--root-path", "api"], "root_path"),
    ([APP, "--root-path", "/api/"], "root_path"),
    ([APP, "--header", "no-colon"], "header"),
    ([APP, "--header", ":value"], "header"),
    ([APP, "--header", "Bad Name:1"], "header"),
    ([APP, "--header", "X-A:a\r\nInjected: 1"], "header"),
    ([APP, "--header", "X-A:\u65e5\u672c"], "header"),
    ([APP, "--no-such-flag"], "--no-such-flag"),
    ([APP, "--access-log=yes"], "--access-log"),
    ([], "APP"),
]


@pytest.mark.parametrize(("argv", "named"), BAD_ARGS, ids=[" ".join(a[1:]) or "no APP" for a, _ in BAD_ARGS])
def test_bad_values_are_usage_errors_naming_the_setting(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                        named: str) -> None:
    message = usage_error(capsys, *argv)
    assert named in message
    assert "Traceback" not in message


BAD_FLAT = [
    ({"port": "80"}, "port"),
    ({"port": True}, "port"),
    ({"port": 8000.0}, "port"),
    ({"fd": "3"}, "fd"),
    ({"timeout_keep_alive": "5"}, "timeout_keep_alive"),
    ({"timeout_keep_alive": False}, "timeout_keep_alive"),
    ({"access_log": "yes"}, "access_log"),
    ({"access_log": 1}, "access_log"),
    ({"lifespan": "sometimes"}, "lifespan"),
    ({"loop": "tokio"}, "loop"),
    ({"log_level": "verbose"}, "log_level"),
    ({"log_level": "INFO"}, "log_level"),
    ({"host": None}, "host"),
    ({"uds": 5}, "uds"),
    ({"headers": "X-A:1"}, "headers"),
    ({"headers": [b"X-A:1"]}, "headers"),
    ({"headers": ("Bad Name:1",)}, "header"),
    ({"root_path": "api"}, "root_path"),
]


@pytest.mark.parametrize(("settings", "named"), BAD_FLAT, ids=[repr(s) for s, _ in BAD_FLAT])
def test_bad_values_from_python_name_the_setting(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Config.from_flat(**settings)
    with pytest.raises(ConfigError, match=named):
        Config().replace(**settings)


def test_from_python_an_int_serves_for_a_float_and_a_list_for_a_tuple() -> None:
    config = Config.from_flat(timeout_keep_alive=10, headers=["X-A:1"])
    assert value(config, "timeout_keep_alive") == 10.0 and type(value(config, "timeout_keep_alive")) is float
    assert value(config, "headers") == ("X-A:1",)
    hash(config)


@pytest.mark.parametrize("key", ["nope", "keep_alive", "timeout-keep-alive", "bind_host", "Port"])
def test_unknown_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown setting '{key}'"):
        Config.from_flat(**{key: 1})
    with pytest.raises(ConfigError, match=f"unknown setting '{key}'"):
        Config().replace(**{key: 1})


# ---------------------------------------------------------------------------------------------------- Config is data


def test_config_pickles() -> None:
    config = Config.from_flat(app="m:app", port=0, host="::1", timeout_keep_alive=2.0, lifespan="on",
                              headers=("X-A:1",), access_log=False, root_path="/api")
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.http.header_pairs() == [(b"x-a", b"1")]


def test_config_is_frozen_and_replace_makes_a_copy() -> None:
    config = Config.from_flat(port=1234)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bind.port = 1  # type: ignore[misc]
    changed = config.replace(port=0, timeout_keep_alive=1.5, access_log=False)
    assert (changed.bind.port, changed.timeouts.keep_alive, changed.logging.access_log) == (0, 1.5, False)
    assert (config.bind.port, config.timeouts.keep_alive, config.logging.access_log) == (1234, 5.0, True)
    assert changed.bind.host == config.bind.host
    with pytest.raises(ConfigError, match="port"):
        config.replace(port=-1)


"""--access-log-format, --access-log-json and --log-config."""

from __future__ import annotations

import json
import logging
import os

import httpx
import pytest

from tidegate.accesslog import AccessFormat, json_line
from tidegate.config import Config, ConfigError

from .ops_apps import app as ops_app
from .ops_helpers import Proc, get, serving_url, wait_until

SCOPE = {"type": "http", "method": "GET", "path": "/a b", "query_string": b"x=1", "http_version": "1.1",
         "scheme": "http", "client": ("10.0.0.1", 5555), "headers": [(b"user-agent", b"curl/8"), (b"x-id", b"1"),
                                                                     (b"x-id", b"2")]}


def test_atoms():
    template = ("{client} {client_addr} {method} {path} {query} {target} {http_version} {scheme} {status} {bytes} "
                "{duration_ms} {pid} {header:user-agent} {header:X-Id} {header:missing} {{literal}}")
    line = AccessFormat(template).render(SCOPE, 201, 42, 1.23456)
    assert line == (f"10.0.0.1:5555 10.0.0.1 GET /a b x=1 /a b?x=1 1.1 http 201 42 1.23 {os.getpid()} curl/8 1, 2 - "
                    "{literal}")
    assert AccessFormat("{time}").render(SCOPE, 200, 0, 0.0).endswith("Z")


def test_request_data_is_escaped():
    scope = {**SCOPE, "path": "/x\n127.0.0.1 - forged", "headers": [(b"user-agent", b"a\x1bb")]}
    line = AccessFormat("{path} {header:user-agent}").render(scope, 200, 0, 0.0)
    assert "\n" not in line and "\x1b" not in line
    assert line == "/x\\n127.0.0.1 - forged a\\x1bb"


@pytest.mark.parametrize(("template", "message"), [
    ("{nope}", "unknown access log atom {nope}"),
    ("{client", "unmatched '{'"),
    ("client}", "unmatched '}'"),
    ("{header:}", "names no header"),
])
def test_bad_templates(template, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        AccessFormat(template)
    with pytest.raises(ConfigError, match="access_log_format"):
        Config.from_flat(access_log_format=template)


def test_json_line():
    record = json.loads(json_line(SCOPE, 404, 7, 2.5))
    assert record["client"] == "10.0.0.1:5555" and record["status"] == 404 and record["bytes"] == 7
    assert record["path"] == "/a b" and record["query"] == "x=1" and record["duration_ms"] == 2.5
    assert record["user_agent"] == "curl/8" and record["pid"] == os.getpid()
    scope = {**SCOPE, "path": "/\n"}
    assert "\n" not in json_line(scope, 200, 0, 0.0)


def test_format_through_a_server(run_server, caplog):
    caplog.set_level(logging.INFO, logger="tidegate.access")
    server = run_server(ops_app, access_log=True,
                        access_log_format="{client_addr} {method} {target} {status} {header:x-trace} pid={pid}")
    httpx.get(server.url + "/status/418?q=1", headers={"x-trace": "abc"}, timeout=5)
    # the line is written once the response is, in the server's thread
    lines = wait_until(lambda: [r.getMessage() for r in caplog.records if r.name == "tidegate.access"])
    assert lines == [f"127.0.0.1 GET /status/418?q=1 418 abc pid={os.getpid()}"]


def test_default_line_is_unchanged(run_server, caplog):
    caplog.set_level(logging.INFO, logger="tidegate.access")
    server = run_server(ops_app, access_log=True)
    httpx.get(server.url + "/status/204", timeout=5)
    (line,) = wait_until(lambda: [r.getMessage() for r in caplog.records if r.name == "tidegate.access"])
    assert '"GET /status/204 HTTP/1.1" 204' in line


def test_json_access_log_in_a_process():
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--access-log-json"])
    try:
        url = serving_url(proc)
        get(url + "/status/201?x=y", headers={"user-agent": "probe/1"})
        line = proc.wait_for(r'^\{"time"').string
    finally:
        assert proc.stop() == 0
    record = json.loads(line)
    assert record["status"] == 201 and record["path"] == "/status/201" and record["query"] == "x=y"
    assert record["user_agent"] == "probe/1" and record["method"] == "GET"


def test_log_config_json(tmp_path):
    target = tmp_path / "access.log"
    (tmp_path / "log.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "ACCESS %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(target), "formatter": "plain"}},
        "loggers": {"tidegate.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }))
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-config", str(tmp_path / "log.json"),
                 "--access-log-format", "{method} {path} {status}"])
    try:
        url = serving_url(proc)
        get(url + "/status/202")
    finally:
        assert proc.stop() == 0
    assert target.read_text() == "ACCESS GET /status/202 202\n"


def test_log_config_ini(tmp_path):
    target = tmp_path / "errors.log"
    (tmp_path / "log.ini").write_text(
        "[loggers]\nkeys=root,tidegate\n\n[handlers]\nkeys=file\n\n[formatters]\nkeys=plain\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=\n\n"
        "[logger_tidegate]\nlevel=INFO\nhandlers=file\nqualname=tidegate\npropagate=0\n\n"
        f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(target)!r},)\n\n"
        "[formatter_plain]\nformat=INI %(message)s\n")
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-config", str(tmp_path / "log.ini"),
                 "--no-access-log"])
    try:
        proc.wait_for("ops-app startup")
        # the serving line goes to the file now, not to stderr
        text = wait_until(lambda: target.exists() and "serving on" in target.read_text() and target.read_text())
        url = text.split("serving on ")[1].split()[0]
        assert get(url + "/").status_code == 200
    finally:
        assert proc.stop() == 0
    assert "INI tidegate serving on" in target.read_text()


def test_log_config_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    target = tmp_path / "y.log"
    (tmp_path / "log.yaml").write_text(yaml.safe_dump({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(target)}},
        "loggers": {"tidegate.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }))
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-config", str(tmp_path / "log.yaml")])
    try:
        get(serving_url(proc) + "/")
    finally:
        assert proc.stop() == 0
    assert '"GET / HTTP/1.1" 200' in target.read_text()


@pytest.mark.parametrize("name", ["missing.json", "bad.json", "bad.ini"])
def test_bad_log_config_is_a_usage_error(tmp_path, name):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.ini").write_text("[loggers]\nkeys=nothing\n")
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--log-config", str(tmp_path / name)])
    assert proc.wait() == 2
    assert "log_config: " in proc.output and name in proc.output


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_access_and_error_log_files(tmp_path, workers):
    # gunicorn's --access-logfile / --error-logfile: each kind of line in its own file, appended by every process
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    access.write_text("earlier line\n")
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--access-logfile", str(access), "--error-logfile",
                 str(errors), "--access-log-format", "{method} {path} {status}", *workers])
    try:
        wait_until(lambda: errors.exists() and "serving on http://" in errors.read_text())
        url = errors.read_text().split("serving on ")[1].split()[0]
        get(url + "/status/203")
        wait_until(lambda: "GET /status/203 203" in access.read_text())
    finally:
        assert proc.stop() == 0
    lines = access.read_text().splitlines()
    assert lines[0] == "earlier line" and lines[1].endswith("INFO    GET /status/203 203")
    assert "GET /status/203" not in errors.read_text() and "GET /status/203" not in proc.output
    assert "shutting down" in errors.read_text()


def test_log_files_follow_logrotate(tmp_path):
    # logrotate moves the file away: the next line goes to a new file of that name, not to the moved one
    access = tmp_path / "access.log"
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--access-logfile", str(access),
                 "--access-log-format", "{method} {path} {status}"])
    try:
        url = serving_url(proc)
        get(url + "/status/201")
        wait_until(lambda: "GET /status/201 201" in access.read_text())
        access.rename(tmp_path / "access.log.1")
        get(url + "/status/202")
        wait_until(lambda: access.exists() and "GET /status/202 202" in access.read_text())
    finally:
        assert proc.stop() == 0
    assert "/status/202" not in (tmp_path / "access.log.1").read_text()


def test_a_log_file_dash_is_stderr_and_a_bad_one_is_a_usage_error(tmp_path):
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--access-logfile", "-", "--error-logfile", "-",
                 "--access-log-format", "{method} {path} {status}"])
    try:
        get(serving_url(proc) + "/status/204")
        proc.wait_for("GET /status/204 204")
    finally:
        assert proc.stop() == 0
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--error-logfile", str(tmp_path / "no" / "such" / "dir.log")])
    assert proc.wait() != 0
    assert "cannot open the log file" in proc.output


def test_coloured_level_names(capsys):
    from tidegate.log import setup_logging

    setup_logging("info", True, use_colors=True)
    try:
        logging.getLogger("tidegate.error").warning("look")
        err = capsys.readouterr().err
        assert "\x1b[33mWARNING\x1b[0m look" in err
        setup_logging("info", True, use_colors=None)  # auto: not a terminal here, so none
        logging.getLogger("tidegate.error").warning("plain")
        assert "WARNING plain" in capsys.readouterr().err
    finally:
        setup_logging("info", True)


def test_worker_lines_name_their_worker_and_access_lines_keep_their_format():
    proc = Proc(["tests.ops_apps:app", "--port", "0", "--workers", "2", "--access-log-format",
                 "{method} {path} {status}"])
    try:
        url = serving_url(proc)
        proc.wait_for(r"INFO    \[worker 1\] ")
        proc.wait_for(r"INFO    \[worker 2\] ")
        get(url + "/status/201")
        line = proc.wait_for("GET /status/201 201").string
        assert line.endswith("INFO    GET /status/201 201")  # no worker prefix in a line the user formatted
        assert any("supervisor:" in text and "[worker" not in text for text in proc.lines)
    finally:
        assert proc.stop() == 0


def raw_exchange(port, data, timeout=5.0):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_responses_the_server_answers_itself_get_an_access_line(run_server, caplog):
    # a malformed request, a target or head over its limit, a body over its limit, a head that never ends: the app
    # never answers them, the access log still shows each, with the bytes sent
    caplog.set_level(logging.INFO, logger="tidegate.access")
    server = run_server(ops_app, access_log=True, limit_request_line=100, limit_request_headers=200,
                        limit_request_body=10, timeout_request_header=0.3)
    sent = {
        400: raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"),
        414: raw_exchange(server.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
        431: raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"b" * 300 + b"\r\n\r\n"),
        413: raw_exchange(server.port, b"POST /status/200 HTTP/1.1\r\nHost: t\r\nContent-Length: 99\r\n\r\n"),
        408: raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n"),
    }
    lines = wait_until(lambda: len([r for r in caplog.records if r.name == "tidegate.access"]) >= 5 and
                       [r.getMessage() for r in caplog.records if r.name == "tidegate.access"])
    for status, response in sent.items():
        assert response.startswith(b"HTTP/1.1 %d " % status)
        body = response.partition(b"\r\n\r\n")[2]  # the bytes logged are the body's, as for the app's responses
        assert body
        assert any(f'"-" {status} {len(body)} -' in line or f" {status} {len(body)} -" in line
                   for line in lines), f"{status} {lines}"


def test_a_503_under_limit_concurrency_gets_an_access_line_in_the_users_format(run_server, caplog):
    import asyncio
    import threading

    caplog.set_level(logging.INFO, logger="tidegate.access")
    started, release = threading.Event(), threading.Event()

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = run_server(slow, access_log=True, limit_concurrency=1, access_log_format="{method} {path} {status}")
    first = threading.Thread(target=lambda: httpx.get(server.url + "/first", timeout=10))
    first.start()
    try:
        assert started.wait(10)
        assert httpx.get(server.url + "/second", timeout=10).status_code == 503
    finally:
        release.set()
        first.join(10)
    lines = wait_until(lambda: [r.getMessage() for r in caplog.records if r.name == "tidegate.access"
                                and "second" in r.getMessage()])
    assert lines == ["GET /second 503"]


def test_a_log_file_configured_away_is_closed(tmp_path):
    # the supervisor re-configures its logging on SIGHUP: the file it leaves must not stay open
    from tidegate.config import LoggingSettings
    from tidegate.log import configure_logging, setup_logging

    first, second = tmp_path / "first.log", tmp_path / "second.log"
    try:
        configure_logging(LoggingSettings(error_logfile=str(first)))
        [old] = logging.getLogger("tidegate").handlers
        configure_logging(LoggingSettings(error_logfile=str(second)))
        assert old.stream is None or old.stream.closed  # a FileHandler's close() drops its stream
        [new] = logging.getLogger("tidegate").handlers
        assert new is not old and new.baseFilename == str(second)
    finally:
        setup_logging("info", False)

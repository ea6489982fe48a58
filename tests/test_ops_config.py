"""Settings from the command line, TIDEGATE_* variables and config files, with provenance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tidegate.cli import build_parser, parse_args
from tidegate.config import Config, ConfigError
from tidegate.sources import declarations, env_name, find_config_file, render, resolve

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if (not k.startswith("TIDEGATE_") or k == "TIDEGATE_NO_EXTENSIONS")
             and k not in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")}


def sample(decl):
    """A value for a setting other than its default, as (python value, env text, CLI args)."""
    kinds = {p.strip() for p in decl.annotation.split("|")}
    if decl.repeat:
        value = ("unix:/tmp/a.sock",) if decl.flat == "bind" else ("x-a:1",) if decl.flat == "headers" else ("a",)
        return value, value[0], [decl.flag, value[0]]
    if decl.choices:
        value = next(c for c in decl.choices if c != decl.default)
        return value, value, [decl.flag, value]
    if "bool" in kinds:
        value = not decl.default
        return value, "true" if value else "false", [decl.flag if value else "--no-" + decl.flag[2:]]
    if "int" in kinds:
        value = {"port": 8123, "fd": 7}.get(decl.flat, 3)
        return value, str(value), [decl.flag, str(value)]
    if "float" in kinds:
        return 2.5, "2.5", [decl.flag, "2.5"]
    value = {"app": "pkg.mod:app", "root_path": "/api", "uds_permissions": "660", "metrics_bind": "127.0.0.1:9",
             "quic_bind": "127.0.0.1:4433",
             "health_path": "/healthz",
             "forwarded_allow_ips": "10.0.0.0/8", "access_log_format": "{client} {status}",
             "host": "::1"}.get(decl.flat, "somewhere")
    if decl.flat == "app":
        return value, value, [value]
    return value, value, [decl.flag, value]


def get(config: Config, flat: str):
    from tidegate.config import flat_index

    group, name = flat_index()[flat]
    return getattr(getattr(config, group), name)


def base_for(flat):
    """Other settings this one needs to be valid on its own (flat name → value)."""
    base = {} if flat == "app" else {"app": "a:b"}
    if flat.startswith("ssl_") and flat not in ("ssl_certfile", "ssl_min_version"):
        base["ssl_certfile"] = "cert.pem"
    if flat == "ssl_cert_reqs":
        base["ssl_ca_certs"] = "ca.pem"
    return base


def as_args(settings):
    decls = declarations()
    args = []
    for flat, value in settings.items():
        args += [value] if flat == "app" else [decls[flat].flag, value]
    return args


@pytest.mark.parametrize("flat", sorted(declarations()))
def test_every_setting_has_a_flag_an_env_var_and_a_file_key(flat, tmp_path):
    decl = declarations()[flat]
    value, text, args = sample(decl)
    # the command line
    assert get(parse_args(args + as_args(base_for(flat))), flat) == value
    # the environment
    resolved = resolve(base_for(flat), environ={env_name(flat): text}, cwd=tmp_path)
    assert get(resolved.config, flat) == value
    assert resolved.origins[flat] == f"env {env_name(flat)}"
    # the config file, under its flat name and the dashed one
    for key in {flat, flat.replace("_", "-")}:
        (tmp_path / "tidegate.toml").write_text(f"{key} = {toml(value)}\n")
        resolved = resolve(base_for(flat), environ={}, cwd=tmp_path)
        assert get(resolved.config, flat) == value
        assert resolved.origins[flat] == "file tidegate.toml"


def toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def test_precedence_cli_over_env_over_file_over_default(tmp_path):
    (tmp_path / "tidegate.toml").write_text('port = 1111\ntimeout_keep_alive = 7\nbacklog = 10\napp = "f:app"\n')
    env = {"TIDEGATE_PORT": "2222", "TIDEGATE_TIMEOUT_KEEP_ALIVE": "8"}
    resolved = resolve({"port": 3333}, environ=env, cwd=tmp_path)
    config = resolved.config
    assert config.bind.port == 3333 and resolved.origins["port"] == "command line --port"
    assert config.timeouts.keep_alive == 8.0
    assert resolved.origins["timeout_keep_alive"] == "env TIDEGATE_TIMEOUT_KEEP_ALIVE"
    assert config.bind.backlog == 10 and resolved.origins["backlog"] == "file tidegate.toml"
    assert config.app.app == "f:app"
    assert config.limits.pipeline_depth == 16 and resolved.origins["limit_pipeline_depth"] == "default"


def test_pyproject_table_and_explicit_config_path(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.tidegate]\nworkers = 3\n')
    assert find_config_file(tmp_path) == tmp_path / "pyproject.toml"
    resolved = resolve({"app": "a:b"}, environ={}, cwd=tmp_path)
    assert resolved.config.workers.workers == 3
    # tidegate.toml wins over pyproject.toml
    (tmp_path / "tidegate.toml").write_text("workers = 5\n")
    assert resolve({"app": "a:b"}, environ={}, cwd=tmp_path).config.workers.workers == 5
    # --config names another file; TIDEGATE_CONFIG too
    (tmp_path / "prod.toml").write_text("workers = 7\n")
    assert resolve({"app": "a:b"}, environ={}, cwd=tmp_path, config_file="prod.toml").config.workers.workers == 7
    env = {"TIDEGATE_CONFIG": str(tmp_path / "prod.toml")}
    assert resolve({"app": "a:b"}, environ=env, cwd=tmp_path).config.workers.workers == 7


def test_pyproject_without_table_is_not_a_config_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config_file(tmp_path) is None
    with pytest.raises(ConfigError, match=r"no \[tool.tidegate\] table"):
        resolve({}, environ={}, cwd=tmp_path, config_file="pyproject.toml")


@pytest.mark.parametrize(("content", "message"), [
    ("prot = 80\n", "tidegate.toml: unknown key 'prot'"),
    ('port = "eighty"\n', "key 'port': port must be an integer, not 'eighty'"),
    ("access_log = 1\n", "key 'access_log': access_log must be true or false"),
    ("headers = [1]\n", "key 'headers': headers must be a list of strings"),
    ('lifespan = "maybe"\n', "key 'lifespan': lifespan must be one of 'auto', 'on', 'off'"),
    ("port = 99999\n", "port must be between 0 and 65535, not 99999 (set by file tidegate.toml)"),
    ("port = \n", "invalid TOML"),
])
def test_bad_file_values_name_the_key(tmp_path, content, message):
    (tmp_path / "tidegate.toml").write_text(content)
    with pytest.raises(ConfigError) as info:
        resolve({"app": "a:b"}, environ={}, cwd=tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize(("env", "message"), [
    ({"TIDEGATE_PORT": "x"}, "environment variable TIDEGATE_PORT: port must be an integer, not 'x'"),
    ({"TIDEGATE_ACCESS_LOG": "perhaps"}, "TIDEGATE_ACCESS_LOG: access_log must be true or false"),
    ({"TIDEGATE_TIMEOUT_KEEP_ALIVE": "-1"}, "(set by env TIDEGATE_TIMEOUT_KEEP_ALIVE)"),
    ({"TIDEGATE_BIND": "nowhere"}, "(set by env TIDEGATE_BIND)"),
])
def test_bad_env_values_name_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError) as info:
        resolve({"app": "a:b"}, environ=env, cwd=tmp_path)
    assert message in str(info.value)


def test_an_unknown_tidegate_variable_is_a_warning_not_an_exit(tmp_path):
    resolved = resolve({"app": "a:b"}, environ={"TIDEGATE_PORTT": "1"}, cwd=tmp_path)
    assert resolved.config.bind.port == 8000
    [note] = resolved.notes
    assert "TIDEGATE_PORTT" in note and "ignored" in note


def test_the_variable_that_chooses_the_pure_build_is_no_setting_and_no_warning(tmp_path):
    resolved = resolve({"app": "a:b"}, environ={"TIDEGATE_NO_EXTENSIONS": "1"}, cwd=tmp_path)
    assert resolved.notes == []


KUBERNETES_SERVICE_ENV = {  # what Kubernetes sets in every pod of a namespace with a Service named tidegate
    "TIDEGATE_SERVICE_HOST": "10.96.0.12", "TIDEGATE_SERVICE_PORT": "80", "TIDEGATE_SERVICE_PORT_HTTP": "80",
    "TIDEGATE_PORT": "tcp://10.96.0.12:80", "TIDEGATE_PORT_80_TCP": "tcp://10.96.0.12:80",
    "TIDEGATE_PORT_80_TCP_PROTO": "tcp", "TIDEGATE_PORT_80_TCP_PORT": "80", "TIDEGATE_PORT_80_TCP_ADDR": "10.96.0.12",
}


def test_kubernetes_service_variables_are_ignored_with_one_line(tmp_path):
    resolved = resolve({"app": "a:b"}, environ=KUBERNETES_SERVICE_ENV, cwd=tmp_path)
    assert resolved.config.bind.port == 8000  # TIDEGATE_PORT=tcp://... is a service link, not a port
    [note] = resolved.notes
    assert all(name in note for name in KUBERNETES_SERVICE_ENV) and "Kubernetes" in note


def test_a_pod_with_a_service_named_tidegate_starts(tmp_path):
    from .ops_helpers import Proc, get, serving_url

    proc = Proc(["tidegate.demo:app", "--port", "0"], cwd=tmp_path, env=KUBERNETES_SERVICE_ENV)
    try:
        assert get(serving_url(proc) + "/").status_code == 200
        assert sum("ignored environment variables" in line for line in proc.lines) == 1
    finally:
        proc.stop()


@pytest.mark.parametrize(("env", "flat", "expected"), [
    ({"WEB_CONCURRENCY": "3"}, "workers", 3),
    ({"WEB_CONCURRENCY": "3", "TIDEGATE_WORKERS": "2"}, "workers", 2),
    ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, "forwarded_allow_ips", "10.0.0.0/8"),
    ({"FORWARDED_ALLOW_IPS": "*", "TIDEGATE_FORWARDED_ALLOW_IPS": "10.1.1.1"}, "forwarded_allow_ips", "10.1.1.1"),
])
def test_the_variables_other_servers_read_are_honoured_below_tidegates_own(tmp_path, env, flat, expected):
    resolved = resolve({"app": "a:b"}, environ=env, cwd=tmp_path)
    group = "workers" if flat == "workers" else "proxy"
    assert getattr(getattr(resolved.config, group), flat) == expected
    (tmp_path / "tidegate.toml").write_text(f"{flat} = {expected!r}\n".replace("'", '"'))
    from_file = resolve({"app": "a:b"}, environ={k: v for k, v in env.items() if not k.startswith("TIDEGATE_")},
                        cwd=tmp_path)
    assert from_file.origins[flat] == "file tidegate.toml"  # a config file says more than the platform's hint
    assert resolve({"app": "a:b", flat: expected}, environ=env, cwd=tmp_path).origins[flat].startswith("command")


def test_web_concurrency_that_is_no_number_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        resolve({"app": "a:b"}, environ={"WEB_CONCURRENCY": "many"}, cwd=tmp_path)


def test_env_lists_and_optionals(tmp_path):
    env = {"TIDEGATE_BIND": "127.0.0.1:1, unix:/tmp/x.sock", "TIDEGATE_HEADERS": "x-a: 1, 2\nx-b: 3",
           "TIDEGATE_WORKERS": "", "TIDEGATE_ACCESS_LOG": "OFF"}
    config = resolve({"app": "a:b"}, environ=env, cwd=tmp_path).config
    assert config.bind.bind == ("127.0.0.1:1", "unix:/tmp/x.sock")
    assert config.http.headers == ("x-a: 1, 2", "x-b: 3")  # newline-separated when a value holds commas
    assert config.workers.workers is None
    assert config.logging.access_log is False


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve({}, environ={}, cwd=tmp_path, config_file="nope.toml")


def test_render_shows_value_and_origin(tmp_path):
    (tmp_path / "tidegate.toml").write_text('headers = ["x-a:1"]\n')
    resolved = resolve({"app": "a:b", "port": 1}, environ={"TIDEGATE_BACKLOG": "5"}, cwd=tmp_path)
    text = render(resolved)
    lines = {line.split("#")[0].strip(): line.split("#", 1)[1].strip() for line in text.splitlines()[1:]
             if not line.startswith("# ")}
    assert lines['port = 1'] == "command line --port"
    assert lines['backlog = 5'] == "env TIDEGATE_BACKLOG"
    assert lines['headers = ["x-a:1"]'] == "file tidegate.toml (key also: header)"
    assert lines["timeout_keep_alive = 5.0"] == "default"
    assert "# uds (not set)" in text


def run_cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "tidegate", *args], check=False, cwd=cwd,
                          env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True, timeout=30)


def test_print_config_command(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.tidegate]\napp = "tidegate.demo:app"\nworkers = 2\n')
    result = run_cli(["--print-config", "--port", "9001"], tmp_path, {"TIDEGATE_LOG_LEVEL": "debug"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "config file: " + str(tmp_path / "pyproject.toml") in out
    assert any(line.startswith('app = "tidegate.demo:app"') and "file pyproject.toml" in line
               for line in out.splitlines())
    assert any(line.startswith("port = 9001") and "command line --port" in line for line in out.splitlines())
    assert any(line.startswith('log_level = "debug"') and "env TIDEGATE_LOG_LEVEL" in line
               for line in out.splitlines())
    # the printed settings are a valid config file giving the same configuration
    (tmp_path / "printed.toml").write_text(out)
    again = resolve({}, environ={}, cwd=tmp_path, config_file="printed.toml").config
    assert again == resolve({"port": 9001}, environ={"TIDEGATE_LOG_LEVEL": "debug"}, cwd=tmp_path).config


def test_cli_error_names_the_key(tmp_path):
    (tmp_path / "tidegate.toml").write_text("workers = 0\n")
    result = run_cli(["tidegate.demo:app"], tmp_path)
    assert result.returncode == 2
    assert "workers must be > 0, not 0 (set by file tidegate.toml)" in result.stderr
    (tmp_path / "tidegate.toml").unlink()
    result = run_cli(["tidegate.demo:app", "--print-config"], tmp_path, {"TIDEGATE_NOPE": "1"})
    assert result.returncode == 0 and "tidegate: warning: ignored environment variables" in result.stderr
    assert "TIDEGATE_NOPE" in result.stderr


def test_app_may_come_from_the_environment(tmp_path):
    assert "--print-config" in build_parser().format_help()
    result = run_cli(["--print-config"], tmp_path, {"TIDEGATE_APP": "x:y"})
    assert result.returncode == 0 and 'app = "x:y"' in result.stdout
    result = run_cli([], tmp_path)
    assert result.returncode == 2 and "APP argument is required" in result.stderr


# ------------------------------------------------------------------------------------- --env-file, --chdir, --pid


def test_an_env_file_is_read_as_uvicorn_reads_it(tmp_path):
    from tidegate.cli import load_env_file

    (tmp_path / ".env").write_text(
        "# settings\n\nexport TIDEGATE_PORT=9123\nDATABASE_URL = 'postgres://u:p@h/db'\n"
        'GREETING="hello\\nworld"\nPLAIN=value # a comment\nALREADY=from-file\nEMPTY=\n')
    environ = {"ALREADY": "set"}
    load_env_file(str(tmp_path / ".env"), environ)
    assert environ == {"TIDEGATE_PORT": "9123", "DATABASE_URL": "postgres://u:p@h/db", "GREETING": "hello\nworld",
                       "PLAIN": "value", "ALREADY": "set", "EMPTY": ""}


@pytest.mark.parametrize(("content", "message"), [("JUST A LINE\n", "line 1: not KEY=VALUE"),
                                                  ("OK=1\n1BAD=2\n", "line 2")])
def test_a_bad_env_file_line_is_named(tmp_path, content, message):
    from tidegate.cli import load_env_file

    (tmp_path / ".env").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_env_file(str(tmp_path / ".env"), {})


def test_env_file_and_chdir_on_the_command_line(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tidegate.toml").write_text('app = "tidegate.demo:app"\n')
    (tmp_path / "prod.env").write_text("TIDEGATE_PORT=9124\nWEB_CONCURRENCY=3\n")
    result = run_cli(["--print-config", "--chdir", str(project), "--env-file", str(tmp_path / "prod.env")], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'app = "tidegate.demo:app"' in out  # the config file of the directory changed to
    assert any(line.startswith("port = 9124") and "env TIDEGATE_PORT" in line for line in out.splitlines())
    assert any(line.startswith("workers = 3") and "env WEB_CONCURRENCY" in line for line in out.splitlines())
    result = run_cli(["--print-config", "--env-file", str(tmp_path / "missing.env")], tmp_path)
    assert result.returncode == 2 and "missing.env" in result.stderr
    result = run_cli(["--print-config", "--chdir", str(tmp_path / "nowhere")], tmp_path)
    assert result.returncode == 2 and "--chdir" in result.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "supervisor"])
def test_a_pid_file_holds_the_main_process_and_goes_at_exit(tmp_path, workers):
    from .ops_helpers import Proc, get, serving_url

    pid_file = tmp_path / "tidegate.pid"
    proc = Proc(["tidegate.demo:app", "--port", "0", "--pid", str(pid_file), *workers], cwd=tmp_path)
    try:
        assert get(serving_url(proc) + "/").status_code == 200
        assert pid_file.read_text() == f"{proc.pid}\n"
    finally:
        assert proc.stop() == 0
    assert not pid_file.exists()


def test_config_file_keys_may_be_the_flag_names(tmp_path):
    (tmp_path / "tidegate.toml").write_text('header = ["x-a: 1"]\nreload_dir = ["src"]\nreload-include = ["*.html"]\n'
                                            'ws = "none"\n')
    config = resolve({"app": "a:b"}, environ={}, cwd=tmp_path).config
    assert config.http.headers == ("x-a: 1",) and config.reload.reload_dirs == ("src",)
    assert config.reload.reload_includes == ("*.html",) and config.websocket.implementation == "none"
    (tmp_path / "tidegate.toml").write_text('headers = ["x-b: 2"]\n')  # the plural, the setting's own name
    assert resolve({"app": "a:b"}, environ={}, cwd=tmp_path).config.http.headers == ("x-b: 2",)


def test_http3_on_a_python_older_than_its_aioquic_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The aioquic releases HTTP/3 is tested with need Python 3.11: on 3.10 (where pip finds an older aioquic, or
    none) --http3 says so instead of serving with a QUIC stack it was not tested with."""
    from tidegate.runtime import negotiate

    monkeypatch.setattr(negotiate, "HTTP3_PYTHON", False)
    with pytest.raises(ConfigError, match=r"--http3 needs Python 3\.11 or later"):
        negotiate.quic_server(None)  # refused before the context is read

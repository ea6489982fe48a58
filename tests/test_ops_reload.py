"""--reload: restart on a change to a watched file; a broken app leaves the reloader waiting for the next change."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.supervisor.reload import FileFilter

from .ops_helpers import Proc, get, serving_url

pytest.importorskip("watchfiles")

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{version}"}})
"""


def test_file_filter():
    root = "/srv/project"
    default = FileFilter((), (), [root])
    assert default(None, "/srv/project/app/main.py")
    assert not default(None, "/srv/project/app/main.pyc")
    assert not default(None, "/srv/project/app/__pycache__/main.py")
    assert not default(None, "/srv/project/.venv/lib/x.py")
    assert not default(None, "/srv/project/notes.txt")
    # the watched directory may itself sit in a hidden one
    assert FileFilter((), (), ["/home/me/.cache/proj"])(None, "/home/me/.cache/proj/app.py")
    custom = FileFilter(("*.html",), ("build",), [root])  # given globs add to the defaults
    assert custom(None, "/srv/project/templates/index.html")
    assert custom(None, "/srv/project/app/main.py")
    assert not custom(None, "/srv/project/build/gen.py")
    assert not custom(None, "/srv/project/.venv/lib/x.py")


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc(["reload_app:app", "--reload", "--reload-dir", str(tmp_path), "--app-dir", str(tmp_path),
                 "--port", "0", *args], env=env)


def test_reload_on_change_and_survive_a_syntax_error(tmp_path):
    module = tmp_path / "reload_app.py"
    module.write_text(APP.format(version="v1"))
    proc = start(tmp_path)
    try:
        url = serving_url(proc)
        proc.wait_for("worker 1 .* ready")
        assert get(url + "/").text == "v1"

        mark = proc.mark()
        module.write_text(APP.format(version="v2"))
        proc.wait_for("change detected in .*reload_app.py", start=mark)
        proc.wait_for("rolling restart done", start=mark)
        assert get(url + "/").text == "v2"

        mark = proc.mark()
        module.write_text("def app(:\n")
        proc.wait_for("change detected", start=mark)
        proc.wait_for("SyntaxError", start=mark)  # the error is shown...
        proc.wait_for("keeping the running ones", start=mark)
        assert get(url + "/").text == "v2"  # ...and the last good version keeps serving

        mark = proc.mark()
        module.write_text(APP.format(version="v3"))
        proc.wait_for("rolling restart done", start=mark)
        assert get(url + "/").text == "v3"
    finally:
        assert proc.stop() == 0


def test_broken_at_start_waits_for_a_fix(tmp_path):
    module = tmp_path / "reload_app.py"
    module.write_text("raise RuntimeError('not yet')\n")
    proc = start(tmp_path)
    try:
        url = serving_url(proc)
        proc.wait_for("RuntimeError: not yet")
        proc.wait_for("waiting for a file change")
        mark = proc.mark()
        module.write_text(APP.format(version="fixed"))
        proc.wait_for("ready", start=mark)
        assert get(url + "/").text == "fixed"
    finally:
        assert proc.stop() == 0


def test_include_and_exclude(tmp_path):
    module = tmp_path / "reload_app.py"
    module.write_text(APP.format(version="v1"))
    (tmp_path / "skip").mkdir()
    proc = start(tmp_path, "--reload-include", "*.txt", "--reload-exclude", "skip")
    try:
        serving_url(proc)
        proc.wait_for("worker 1 .* ready")
        mark = proc.mark()
        (tmp_path / "skip" / "ignored.txt").write_text("x")
        (tmp_path / "notes.md").write_text("x")  # neither *.py nor *.txt
        (tmp_path / "notes.txt").write_text("x")
        line = proc.wait_for("change detected in (.*); restarting", start=mark).group(1)
        assert line == "notes.txt" or line.endswith("/notes.txt")
        proc.wait_for("rolling restart done", start=mark)
        mark = proc.mark()
        (tmp_path / "other.py").write_text("x = 1\n")  # *.py is still watched: --reload-include adds to it
        line = proc.wait_for("change detected in (.*); restarting", start=mark).group(1)
        assert line.endswith("other.py")
    finally:
        assert proc.stop() == 0


def test_without_watchfiles_reload_polls(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "watchfiles").mkdir(parents=True)
    (hidden / "watchfiles" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    module = tmp_path / "reload_app.py"
    module.write_text(APP.format(version="v1"))
    proc = start(tmp_path, "--reload-exclude", "hide", "--reload-delay", "0.1", env={"PYTHONPATH": str(hidden)})
    try:
        url = serving_url(proc)
        proc.wait_for("watchfiles is not installed: watching for changes by polling every 0.10s")
        proc.wait_for("worker 1 .* ready")
        mark = proc.mark()
        module.write_text(APP.format(version="v2 (a different size)"))
        proc.wait_for("change detected in .*reload_app.py", start=mark)
        proc.wait_for("rolling restart done", start=mark)
        assert get(url + "/").text == "v2 (a different size)"
    finally:
        assert proc.stop() == 0

"""The compiled build and the pure Python build agree: the same events and the same bytes out for the same client
input (the corpus of tests/agreement.py), and both build's modules are the ones they say they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

import tidegate
from tidegate import _build

from .ops_helpers import ROOT


def outcome(pure: bool) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != _build.NO_EXTENSIONS}
    if pure:
        env[_build.NO_EXTENSIONS] = "1"
    done = subprocess.run([sys.executable, "-m", "tests.agreement"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_compiled_and_the_pure_modules_agree_on_the_corpus() -> None:
    compiled = outcome(pure=False)
    if compiled["build"] != "compiled with mypyc":
        pytest.skip(f"no compiled build to compare: {compiled['build']}")
    pure = outcome(pure=True)
    assert pure["build"] == f"pure Python ({_build.NO_EXTENSIONS} is set)"
    assert len(compiled["cases"]) > 500
    differing = [name for name, out in compiled["cases"].items() if pure["cases"].get(name) != out]
    assert not differing, differing
    assert compiled["cases"].keys() == pure["cases"].keys()


def test_the_modules_loaded_are_the_build_it_says() -> None:
    for path in _build.COMPILED:
        module = sys.modules.get(_build._module_name(path)) or __import__(_build._module_name(path), fromlist=["_"])
        compiled = not (module.__file__ or "").endswith(".py")
        assert compiled == _build.COMPILED_BUILD, (module.__file__, tidegate.BUILD)


def test_every_compiled_module_exists() -> None:
    for path in _build.COMPILED:
        assert (ROOT / "src" / "tidegate" / path).is_file(), path

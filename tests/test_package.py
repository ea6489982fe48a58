"""The package as users get it: an sdist and wheels that twine accepts, and each wheel installed into a fresh
virtual environment serving the demo (not the editable install the other tests use).  The sdist builds a wheel
with the hot path compiled where a C compiler works, and a pure Python one where none does; ``--version`` says
which."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import tidegate

from .ops_helpers import ROOT, Proc, get, serving_url

pytestmark = pytest.mark.timeout(600)


# the environment of a user who chose no build (the suite's pure run sets TIDEGATE_NO_EXTENSIONS)
CLEAN_ENV_ANY_BUILD = {key: value for key, value in os.environ.items() if key != "TIDEGATE_NO_EXTENSIONS"}
PURE_WHEEL = f"tidegate-{tidegate.__version__}-py3-none-any.whl"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, the wheel built from it here, and the wheel built from it where no C compiler works."""
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source") / "tidegate"
    # build from a copy of the tracked tree, so that nothing is written into the checkout
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, target)
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], check=True,
                   capture_output=True, timeout=500, env=CLEAN_ENV_ANY_BUILD)
    sdist, = out.glob("*.tar.gz")
    pure = tmp_path_factory.mktemp("pure")
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(pure), str(sdist)],
                           capture_output=True, text=True, timeout=300, check=True,
                           env={**CLEAN_ENV_ANY_BUILD, "CC": "/nonexistent/cc"})
    assert "no working C compiler" in built.stdout + built.stderr
    (pure / PURE_WHEEL).rename(out / PURE_WHEEL)
    return out


def compiled_wheel(dist: Path) -> Path:
    wheel, = (path for path in dist.glob("*.whl") if path.name != PURE_WHEEL)
    return wheel


def test_the_sdist_and_the_wheels_pass_twine_check_and_carry_the_license(dist: Path) -> None:
    wheel = compiled_wheel(dist)
    sdist, = dist.glob("*.tar.gz")
    assert wheel.name.startswith(f"tidegate-{tidegate.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}-")
    assert sdist.name == f"tidegate-{tidegate.__version__}.tar.gz"
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(dist / PURE_WHEEL),
                             str(sdist)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for built in (wheel, dist / PURE_WHEEL):
        with zipfile.ZipFile(built) as archive:
            names = archive.namelist()
            metadata = archive.read(f"tidegate-{tidegate.__version__}.dist-info/METADATA").decode()
        assert any(name.endswith("licenses/LICENSE") for name in names)
        assert "tidegate/py.typed" in names
        # the Python source of every compiled module is in both: the reference, and the fallback
        assert "tidegate/runtime/h1.py" in names and "tidegate/protocol/http1.py" in names
        assert any(name.startswith("tidegate/runtime/h1.") and name.endswith(".so") for name in names) == (
            built == wheel)
        assert "License-Expression: BSD-3-Clause" in metadata and "Requires-Python: >=3.10" in metadata
        assert "Provides-Extra: yaml" in metadata and "Provides-Extra: reload" in metadata


@pytest.mark.parametrize("build", ["compiled", "pure"])
def test_the_wheel_in_a_fresh_environment_serves_the_demo(dist: Path, tmp_path: Path, build: str) -> None:
    wheel = compiled_wheel(dist) if build == "compiled" else dist / PURE_WHEEL
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True,
                             text=True, timeout=400, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    version = subprocess.run([str(env / "bin" / "tidegate"), "--version"], capture_output=True, text=True,
                             timeout=60, check=True, env=CLEAN_ENV_ANY_BUILD)
    said = "compiled with mypyc" if build == "compiled" else "pure Python (not compiled"
    assert version.stdout.startswith(f"tidegate {tidegate.__version__}, {said}"), version.stdout
    proc = Proc(["tidegate.demo:app", "--port", "0"], argv0=[str(env / "bin" / "tidegate")], cwd=tmp_path)
    try:
        url = serving_url(proc)
        response = get(url + "/json")
        assert response.status_code == 200 and response.json()
        where = subprocess.run([str(python), "-c", "import tidegate; print(tidegate.__file__)"],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True).stdout
        assert str(env) in where  # the installed wheel, not the checkout
    finally:
        assert proc.stop() == 0

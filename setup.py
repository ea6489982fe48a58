"""Compiles tidegate's hot path with mypyc where it can; installs pure Python where it cannot.

Everything else about the package is in pyproject.toml.  The modules compiled are listed in
src/tidegate/_build.py, which also decides at run time which build runs.  Set TIDEGATE_NO_EXTENSIONS=1 to install
pure Python on purpose.
"""

from __future__ import annotations

import ast
import os
import platform
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _build_module() -> dict[str, Any]:
    """The constants of src/tidegate/_build.py (read, not imported: the package needs its dependencies)."""
    tree = ast.parse((ROOT / "src" / "tidegate" / "_build.py").read_text())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("COMPILED", "NO_EXTENSIONS")}


def _say(message: str) -> None:
    print(f"tidegate: {message}", file=sys.stderr)


def _compiler_works() -> bool:
    """Whether a C extension can be built here: a compiler that finds Python.h."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch, "probe.c")
        probe.write_text("#include <Python.h>\nint tidegate_probe(void) { return 0; }\n")
        try:
            compiler.compile([str(probe)], output_dir=scratch,
                             include_dirs=[sysconfig.get_paths()["include"]])
        except Exception as exc:  # any failure means: no compiler
            _say(f"no working C compiler ({exc.__class__.__name__}: {exc})")
            return False
    return True


# setup.py commands that compile; the others (egg_info, sdist, dist_info) only describe the package
_BUILDING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop", "bdist"}


def _ext_modules() -> list[Any]:
    if not _BUILDING.intersection(sys.argv[1:]):
        return []
    build = _build_module()
    if os.environ.get(build["NO_EXTENSIONS"], "") not in ("", "0"):
        _say(f"{build['NO_EXTENSIONS']} is set: installing pure Python")
        return []
    if platform.python_implementation() != "CPython":
        _say(f"{platform.python_implementation()}: installing pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not available: installing pure Python")
        return []
    if not _compiler_works():
        _say("installing pure Python")
        return []
    _say("compiling the hot path with mypyc")
    paths = [f"src/tidegate/{path}" for path in build["COMPILED"]]
    # The compiled modules are type-checked for the running Python; the modules they import are read for their
    # types only (follow_imports silent): optional dependencies (aioquic, watchfiles) need not be installed to build.
    # The whole tree is checked by mypy --strict in the test script.
    options = ["--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}", "--follow-imports", "silent"]
    return mypycify([*options, *paths], opt_level="3", group_name="tidegate", verbose=False)


setup(ext_modules=_ext_modules())

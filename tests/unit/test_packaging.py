"""The wheel holds every module of ezgraph: setuptools' ``find:`` finds only folders with an
``__init__.py``, so a folder of modules without one installs nothing (``ezgraph.web`` once did,
and the installed CLI failed on import)."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

import ezgraph

ROOT = Path(ezgraph.__file__).parent


def test_every_folder_of_python_modules_is_a_package_the_wheel_ships() -> None:
    shipped = set(find_packages(str(ROOT.parent), include=["ezgraph", "ezgraph.*"]))
    folders = {
        ".".join(path.parent.relative_to(ROOT.parent).parts)
        for path in ROOT.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders - shipped == set()

"""What ships agrees with the code: the wheel holds every module of ezgraph (setuptools'
``find:`` finds only folders with an ``__init__.py``: ``ezgraph.web`` once had none, and the
installed CLI failed on import), and the least-privilege ACL names every command ezgraph's
scripts send."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages

import ezgraph
from ezgraph.connection import REDIS_COMMANDS

ROOT = Path(ezgraph.__file__).parent


def test_every_folder_of_python_modules_is_a_package_the_wheel_ships() -> None:
    shipped = set(find_packages(str(ROOT.parent), include=["ezgraph", "ezgraph.*"]))
    folders = {
        ".".join(path.parent.relative_to(ROOT.parent).parts)
        for path in ROOT.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders - shipped == set()


def test_the_acl_list_names_every_command_ezgraphs_scripts_send() -> None:
    """A command a script sends that the list lacks is refused to the least-privilege user."""
    sent = {
        match.group(1).lower()
        for script in (ROOT / "state" / "lua").rglob("*.lua")
        for match in re.finditer(r"redis\.p?call\('([A-Za-z]+)'", script.read_text())
    }
    assert sent - set(REDIS_COMMANDS) == set()

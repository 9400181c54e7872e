"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping

import pytest

from ezgraph.cli import main
from ezgraph.state.sql import dispose_engines

EzgraphHere = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def ezgraph_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> EzgraphHere:
    """Run the ``ezgraph`` command in this process, with the ezgraph variables of ``env`` only
    (no interpreter to start: for tests that run it many times). Not for commands that serve
    until stopped: ``worker`` without ``--burst``, ``persist --follow``..."""

    def run(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        for name in list(os.environ):
            if name.startswith(("REDIS_", "RQ_", "EZGRAPH_", "DATABASE_")):
                monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith(("REDIS_", "RQ_", "EZGRAPH_", "DATABASE_")):
                monkeypatch.setenv(name, value)
        code: int | str | None = 0
        try:
            main(list(args))
        except SystemExit as exited:
            code = exited.code
        finally:
            dispose_engines()
        printed = capsys.readouterr()
        return subprocess.CompletedProcess(args, int(code or 0), printed.out, printed.err)

    return run

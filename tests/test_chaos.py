"""A small `ezgraph chaos`: kill busy workers while runs flow; nothing is lost or doubled."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ezgraph.runtime import Runtime

from .conftest import ezgraph_cli, subprocess_env


@pytest.mark.slow
def test_chaos_audit_loses_and_doubles_nothing(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime("ezgraph.chaos_graph")
    done = ezgraph_cli(
        "chaos",
        "--runs",
        "60",
        "--every",
        "1.5",
        "--jitter",
        "0.5",
        "--workers",
        "2",
        env=subprocess_env(runtime.settings),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = dict(line.split(":", 1) for line in done.stdout.strip().splitlines())
    report = {key.strip(): value.strip() for key, value in report.items()}
    assert report["runs"].startswith("60 (60 finished, 0 failed)")
    assert int(report["workers killed"]) >= 1
    assert report["lost runs"] == "0"
    assert report["runs in SQL"] == "60"
    assert report["duplicated SQL rows"] == "0"
    assert report["duplicate side effects"] == "0"
    assert report["missing side effects"] == "0"
    assert report["side effects"] == "300"
    assert "recoveries" in report["kill to re-run"]

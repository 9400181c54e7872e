"""A small `ezgraph chaos`: kill busy workers while runs flow; nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.context import Context

from .conftest import ezgraph_cli, ezgraph_process, subprocess_env, wait_for


@pytest.mark.slow
def test_chaos_audit_loses_and_doubles_nothing(make_context: Callable[..., Context]) -> None:
    context = make_context("ezgraph.chaos.graph")
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
        env=subprocess_env(context.settings),
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


def test_a_stopped_chaos_audit_stops_its_workers(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """SIGTERM (a supervisor, a CI timeout) ends the audit as Ctrl-C does: its workers stop."""
    context = make_context("ezgraph.chaos.graph")
    audit = ezgraph_process(
        "chaos", "-n", "100000", "--every", "600", env=subprocess_env(context.settings)
    )
    try:
        wait_for(lambda: len(redis_conn.keys("ezgraph:alive:*")) == 2, 60, "its two workers")
        pids = [int(redis_conn.get(key) or 0) for key in redis_conn.keys("ezgraph:alive:*")]
        audit.send_signal(signal.SIGTERM)
        _, errors = audit.communicate(timeout=60)
    finally:
        if audit.poll() is None:
            audit.kill()
    assert audit.returncode == 130 and errors.endswith("interrupted\n"), errors

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert all(gone(pid) for pid in pids)

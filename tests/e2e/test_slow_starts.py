"""A step is protected from the watchdog from the moment a work-horse takes it: a module whose
import takes 4.5 s, on forking stock rq workers, runs once."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ROOT, ezgraph_process, subprocess_env, wait_for


@pytest.mark.slow
def test_a_step_whose_module_imports_slowly_in_a_work_horse_runs_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.slow_import")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:slow-import"
    env = subprocess_env(context.settings)
    run_ids = [
        orchestrator.submit("heavy", ledger_url=redis_url, ledger_key=ledger) for _ in range(2)
    ]
    watchdog = ezgraph_process("reap", "--loop", env=env, stdout=subprocess.PIPE)
    stock = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "heavy", "--url", redis_url, "--burst"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: all(orchestrator.status(r)["status"] == "finished" for r in run_ids),
            60,
            "the runs to finish",
        )
    finally:
        stock.wait(60)
        watchdog.send_signal(signal.SIGINT)
        reaped, errors = watchdog.communicate(timeout=30)
    executions = [e.decode() for e in redis_conn.lrange(ledger, 0, -1)]
    assert sorted(executions) == sorted(f"{r}:heavy" for r in run_ids), (reaped, errors)
    assert "requeued" not in reaped + errors

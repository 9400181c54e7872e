"""A run past its deadline while an ``ezgraph worker`` runs its step: the worker's watchdog
pass fails it with DeadlineExceeded, its running step creates no successor, and the run is
stored failed once that step ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ezgraph_cli, ezgraph_process, subprocess_env, wait_for


@pytest.mark.slow
def test_a_worker_fails_a_run_past_its_deadline_while_its_step_runs(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.slowchain")  # PostgreSQL: tests/integration
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    worker = ezgraph_process("worker", "a", "b", "c", env=subprocess_env(context.settings))
    try:
        run_id = orchestrator.submit(
            "a", ledger_url=redis_url, ledger_key=ledger, sleep=2, deadline=0.5
        )
        submitted = time.monotonic()
        wait_for(lambda: orchestrator.status(run_id)["status"] == "failed", 30, "the deadline")
        print(f"failed {time.monotonic() - submitted:.2f} s after submission (deadline 0.5 s)")
        status = orchestrator.status(run_id)
        assert status["error"].startswith("DeadlineExceeded: ")
        wait_for(lambda: context.store.load_run(run_id) is not None, 30, "the run in SQL")
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error.startswith("DeadlineExceeded: ")
    # ezgraph's worker cannot stop a running step: it finished, and created no successor.
    assert [(s.step, s.status) for s in stored.steps] == [("a", "finished")]
    assert [e.decode() for e in redis_conn.lrange(ledger, 0, -1)] == [f"{run_id}:a"]


def test_reap_fails_a_run_past_its_deadline_where_only_stock_workers_run(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", deadline=0.1)
    deadline_at = datetime.fromisoformat(orchestrator.status(run_id)["deadline_at"])
    wait_for(lambda: datetime.now(UTC) > deadline_at, 10, "the deadline to pass")
    done = ezgraph_cli("reap", env=subprocess_env(context.settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "requeued 0 steps, failed 0 lost steps, failed 1 runs past their deadline"
    )
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "failed"
    assert [(s.step, s.status) for s in stored.steps] == [("a", "canceled")]

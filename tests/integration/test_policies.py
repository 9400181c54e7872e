"""Per-node retries (immediate and delayed) and timeouts, declared beside the graph."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.workers.fast import serve as run_worker

from ..conftest import drain


def test_a_step_retried_at_once_succeeds_on_its_second_attempt(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.policies")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("quick_retry", succeed_on=2)
    drain(context)
    status = orchestrator.status(run_id)
    assert status["status"] == "finished"
    assert status["result"]["succeeded_on"] == 2
    assert status["steps"][0]["attempts"] == 2


def test_a_delayed_retry_runs_after_its_interval_under_ezgraph_worker(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.policies")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("flaky", succeed_on=3)
    started = time.monotonic()
    drain(context)  # no scheduler: attempt 1 fails and its retry waits in RQ's scheduled registry
    assert redis_conn.zcard("rq:scheduled:flaky") == 1
    assert redis_conn.hget(f"rq:job:{run_id}-flaky", "status") == b"scheduled"
    while orchestrator.status(run_id)["status"] != "finished":
        assert time.monotonic() - started < 20, "the scheduled retries never ran"
        # A burst worker with its scheduler moves due retries back to the queue, then runs them.
        run_worker(context, burst=True, log_level="WARNING")
        time.sleep(0.2)
    status = orchestrator.status(run_id)
    assert status["result"]["succeeded_on"] == 3
    assert status["steps"][0]["attempts"] == 3
    assert redis_conn.zcard("rq:scheduled:flaky") == 0


def test_a_step_past_its_timeout_fails_the_run(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.policies")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("hangs")
    started = time.monotonic()
    drain(context)
    status = orchestrator.status(run_id)
    assert time.monotonic() - started < 10
    assert status["status"] == "failed"
    assert status["error"].startswith("hangs: JobTimeoutException:")

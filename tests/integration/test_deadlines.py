"""Deadlines and step budgets: a run past its deadline fails with DeadlineExceeded through the
cancel path (its queued steps canceled), a run within it finishes; a run that would start more
steps than its max_steps fails naming the budget. On real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph import recovery
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import GraphError, UsageError
from ezgraph.handover import RunWriter
from ezgraph.model.graph import build_graph

from ..conftest import drain, wait_for


def fail_due(context: Context) -> list[str]:
    """One deadline pass, as the watchdog makes it; the runs it failed."""
    writer = RunWriter(context, "test")
    report = recovery.fail_past_deadline(context, lambda r: writer.write_runs([r]) and None)
    return report.past_deadline


def test_a_run_past_its_deadline_fails_its_queued_steps_canceled_and_is_stored_failed(
    make_context: Callable[..., Context], redis_conn: Redis, database_url: str
) -> None:
    context = make_context("tests.graphs.chain", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"x": 1}, deadline=0.2)
    assert orchestrator.status(run_id)["deadline_at"] is not None
    assert fail_due(context) == []  # not yet: no worker ran it, but its deadline is ahead
    wait_for(lambda: fail_due(context) == [run_id], 10, "the deadline pass to fail the run")
    status = orchestrator.status(run_id)
    assert status["status"] == "failed" and status["nodes"] == {"a": "canceled"}
    assert status["error"] == (
        "DeadlineExceeded: the run was still going 0.2 s after it was submitted"
    )
    assert redis_conn.hget(f"rq:job:{run_id}-a", "status") == b"canceled"
    assert orchestrator.list_queues() == {"a": 0, "b": 0}
    assert redis_conn.zcard(context.keys.deadlines) == 0
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error.startswith("DeadlineExceeded: ")
    assert fail_due(context) == []  # once only
    drain(context)  # nothing is left to run
    assert orchestrator.status(run_id)["nodes"] == {"a": "canceled"}


def test_a_run_within_its_deadline_finishes_and_leaves_the_deadlines(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", deadline=60)
    assert redis_conn.zscore(context.keys.deadlines, run_id) is not None
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"
    assert redis_conn.zcard(context.keys.deadlines) == 0
    assert fail_due(context) == []


def test_a_map_over_max_steps_fails_naming_the_budget(
    make_context: Callable[..., Context], database_url: str
) -> None:
    context = make_context("tests.graphs.mapped", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    runaway = orchestrator.submit("m", items=list(range(10)), max_steps=5)
    fits = orchestrator.submit("m", items=[1, 2, 3], max_steps=5)  # m, 3 squares, collect
    drain(context)
    status = orchestrator.status(runaway)
    assert status["status"] == "failed"
    assert status["error"] == (
        "StepBudgetExceeded: m would start more than the run's max_steps of 5 steps"
    )
    assert status["nodes"] == {"m": "finished"}  # no instance of the map was created
    stored = context.store.load_run(runaway)
    assert stored is not None and stored.status == "failed"
    assert orchestrator.status(fits)["result"]["total"] == 14


def test_the_graph_declares_the_default_deadline_and_budget(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.budgeted")  # DEADLINE = 30, MAX_STEPS = 1
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    wider = orchestrator.submit("a", max_steps=2)
    assert orchestrator.status(run_id)["deadline_at"] is not None
    drain(context)
    status = orchestrator.status(run_id)
    assert status["status"] == "failed" and status["nodes"] == {"a": "finished"}
    assert status["error"].startswith("StepBudgetExceeded: a would start more than")
    assert orchestrator.status(wider)["status"] == "finished"
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.error == status["error"]
    with pytest.raises(GraphError, match="DEADLINE must be seconds above 0"):
        build_graph({"a": []}, {"a": "tests.steps:mark"}, deadline=0)
    with pytest.raises(GraphError, match="MAX_STEPS must be a whole number from 1"):
        build_graph({"a": []}, {"a": "tests.steps:mark"}, max_steps=1.5)


def test_deadline_and_max_steps_are_options_never_payload_fields(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"deadline": 5, "max_steps": 0})  # fields, in data
    assert orchestrator.get_run(run_id).input == {"deadline": 5, "max_steps": 0}
    assert orchestrator.status(run_id)["deadline_at"] is None
    assert redis_conn.zcard(context.keys.deadlines) == 0
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(UsageError, match="deadline must be a number of seconds above 0"):
            orchestrator.submit("a", deadline=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(UsageError, match="max_steps must be a whole number from 1"):
            orchestrator.submit_many("a", [{}], max_steps=bad)
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"

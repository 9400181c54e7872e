"""Cancel a run (queued steps canceled in RQ, running ones stopped where RQ can) and retry a
failed one (its failed and canceled steps run again, finished ones do not)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from redis import Redis
from rq.job import Job

from ezgraph import current_step
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import InvalidRunOperation, RunNotFound
from ezgraph.rq_compat import RQ_MAJOR
from ezgraph.workers.fast import serve as run_worker
from ezgraph.workers.fast import serve as serve_fast

from ..conftest import ROOT, drain, ezgraph_cli, ezgraph_process, subprocess_env, wait_for

LEDGER = "ledger:cancel-retry"


def serve(context: Context, *nodes: str) -> None:
    """Run the queued steps of ``nodes`` only, in this process."""
    run_worker(context, list(nodes), burst=True, with_scheduler=False, log_level="WARNING")


def ledger_fields(context: Context) -> dict[str, Any]:
    """The payload fields that make each step count its executions in the ledger."""
    return {"ledger_url": context.settings.redis_url, "ledger_key": LEDGER}


def executions(redis_conn: Redis, run_id: str) -> list[str]:
    """The steps of ``run_id`` in the order they executed (every attempt counted)."""
    entries = [e.decode() for e in redis_conn.lrange(LEDGER, 0, -1)]
    return [e.split(":", 1)[1] for e in entries if e.startswith(f"{run_id}:")]


def stored_runs(context: Context, run_id: str) -> list[tuple[str, int]]:
    """The ezgraph_runs rows of ``run_id`` as (status, number of its ezgraph_steps rows)."""
    with context.store.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text("select status from ezgraph_runs where run_id = :r"), {"r": run_id}
        ).all()
        steps = connection.execute(
            sqlalchemy.text("select count(*) from ezgraph_steps where run_id = :r"), {"r": run_id}
        ).scalar_one()
    return [(row[0], steps) for row in rows]


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_of_a_queued_run_cancels_its_steps_in_rq_and_persists_it(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    done = ezgraph_cli("cancel", run_id, env=subprocess_env(context.settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"run {run_id}: canceled"
    status = orchestrator.status(run_id)
    assert status["status"] == "canceled" and status["nodes"] == {"a": "canceled"}
    assert status["error"] == "run canceled"
    assert orchestrator.list_queues() == {"a": 0, "b": 0}
    assert redis_conn.hget(f"rq:job:{run_id}-a", "status") == b"canceled"
    assert redis_conn.zscore("rq:canceled:a", f"{run_id}-a") is not None
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "canceled"
    assert [(s.step, s.status) for s in stored.steps] == [("a", "canceled")]
    drain(context)  # nothing is left to run
    assert orchestrator.status(run_id)["nodes"] == {"a": "canceled"}


def test_cancel_mid_run_cancels_the_queued_branches_and_the_join_never_runs(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.diamond")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    serve(context, "a")
    status = orchestrator.cancel(run_id)
    assert status["status"] == "canceled"
    assert status["nodes"] == {"a": "finished", "b": "canceled", "c": "canceled"}
    assert all(redis_conn.llen(f"rq:queue:{n}") == 0 for n in "abcd")
    assert {redis_conn.hget(f"rq:job:{run_id}-{n}", "status") for n in "bc"} == {b"canceled"}
    drain(context)
    assert not redis_conn.exists(f"rq:job:{run_id}-d")
    assert stored_runs(context, run_id) == [("canceled", 3)]


def test_a_step_running_on_a_simple_worker_finishes_and_creates_no_successor(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    seen: list[dict[str, Any]] = []

    def cancel_own_run(data: dict[str, Any]) -> dict[str, Any]:
        # ezgraph's worker does not take RQ's stop command: this step goes on.
        seen.append(orchestrator.cancel(current_step().run_id))
        return {"a": True}

    context.override("a", cancel_own_run)
    run_id = orchestrator.submit("a")
    drain(context)
    assert seen[0]["status"] == "canceled" and seen[0]["nodes"] == {"a": "running"}
    status = orchestrator.status(run_id)
    assert status["status"] == "canceled" and status["nodes"] == {"a": "finished"}
    assert not redis_conn.exists(f"rq:job:{run_id}-b")
    assert stored_runs(context, run_id) == [("canceled", 1)]


def test_cancel_stops_a_step_running_on_a_forking_rq_worker(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """With the installed RQ's stop command: RQ 3's stop-execution (that execution of the
    job), RQ 2's stop-job."""
    context = make_context("tests.graphs.flaky.slow")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", sleep=60)
    worker = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "a", "b", "--url", context.settings.redis_url],
        env=subprocess_env(context.settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while redis_conn.hget(f"rq:job:{run_id}-a", "status") != b"started":
            assert time.monotonic() < deadline, "the rq worker never started the step"
            time.sleep(0.05)
        (execution,) = Job.fetch(f"{run_id}-a", connection=redis_conn).get_executions()
        commands = redis_conn.pubsub()
        commands.subscribe(f"rq:pubsub:{execution.worker_name}")
        status = orchestrator.cancel(run_id, stop_wait=10)
        sent = [m for m in iter(lambda: commands.get_message(timeout=1), None)]
        commands.close()
    finally:
        worker.terminate()
        worker.wait(10)
    (command,) = [json.loads(m["data"]) for m in sent if m["type"] == "message"]
    if RQ_MAJOR >= 3:
        assert command == {
            "command": "stop-execution",
            "job_id": f"{run_id}-a",
            "execution_id": execution.id,
        }
    else:
        assert command == {"command": "stop-job", "job_id": f"{run_id}-a"}
    assert status["status"] == "canceled" and status["nodes"] == {"a": "canceled"}
    assert redis_conn.hget(f"rq:job:{run_id}-a", "status") == b"stopped"
    assert not redis_conn.exists(f"rq:job:{run_id}-b")
    assert stored_runs(context, run_id) == [("canceled", 1)]


def test_cancel_of_a_step_waiting_for_a_delayed_retry_cancels_its_rq_job(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky.delayed")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", ledger_fields(context))
    drain(context)  # no scheduler: the retry of a waits in RQ's scheduled registry
    assert redis_conn.hget(f"rq:job:{run_id}-a", "status") == b"scheduled"
    status = orchestrator.cancel(run_id)
    assert status["status"] == "canceled" and status["nodes"] == {"a": "canceled"}
    assert redis_conn.zcard("rq:scheduled:a") == 0
    assert redis_conn.hget(f"rq:job:{run_id}-a", "status") == b"canceled"
    assert stored_runs(context, run_id) == [("canceled", 1)]


def test_cancel_of_an_ended_or_unknown_run_exits_1_with_one_line(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    drain(context)
    env = subprocess_env(context.settings)
    done = ezgraph_cli("cancel", run_id, env=env)
    assert done.returncode == 1
    assert done.stderr == f"error: run {run_id} is already finished: nothing to cancel\n"
    unknown = ezgraph_cli("cancel", "nope", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr == "error: no run with id 'nope'\n"
    canceled = orchestrator.submit("a")
    orchestrator.cancel(canceled)
    with pytest.raises(InvalidRunOperation, match="is already canceled: nothing to cancel"):
        orchestrator.cancel(canceled)


# -- retry ----------------------------------------------------------------------------------


def test_retry_resumes_a_failed_run_from_its_failed_step(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("s", ledger_fields(context))
    drain(context)
    failed = orchestrator.status(run_id)
    assert failed["status"] == "failed"
    assert failed["nodes"] == {"s": "finished", "steady": "finished", "flaky": "failed"}
    assert failed["error"] == f"flaky: RuntimeError: flaky fails until flaky:{run_id} exists"
    assert stored_runs(context, run_id) == [("failed", 3)]

    redis_conn.set(f"flaky:{run_id}", 1)
    done = ezgraph_cli("retry", run_id, env=subprocess_env(context.settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"run {run_id}: running (steps to run again: flaky)"
    drain(context)

    status = orchestrator.status(run_id)
    assert status["status"] == "finished" and status["error"] is None
    assert status["nodes"] == {n: "finished" for n in ("s", "steady", "flaky", "j")}
    assert status["result"]["steady"] == status["result"]["flaky"] == status["result"]["j"]
    assert executions(redis_conn, run_id) == ["s", "steady", "flaky", "flaky", "j"]
    assert stored_runs(context, run_id) == [("finished", 4)]
    flaky_job = Job.fetch(f"{run_id}-flaky", connection=redis_conn)
    assert flaky_job.get_status() == "finished"
    assert [r.type.name for r in flaky_job.results()] == ["SUCCESSFUL", "FAILED"]


def test_retry_runs_again_the_steps_the_failure_canceled(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("s", ledger_fields(context))
    serve(context, "s", "flaky")  # flaky fails while steady still waits in its queue
    assert orchestrator.status(run_id)["nodes"]["steady"] == "canceled"
    redis_conn.set(f"flaky:{run_id}", 1)
    status = orchestrator.retry(run_id)
    assert status["status"] == "running"
    assert {n: status["nodes"][n] for n in ("steady", "flaky")} == {
        "steady": "queued",
        "flaky": "queued",
    }
    assert redis_conn.zscore("rq:canceled:steady", f"{run_id}-steady") is None
    assert redis_conn.zscore("rq:failed:flaky", f"{run_id}-flaky") is None
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"
    assert executions(redis_conn, run_id) == ["s", "flaky", "steady", "flaky", "j"]
    assert stored_runs(context, run_id) == [("finished", 4)]


def test_a_step_that_finished_after_the_failure_runs_again_so_the_join_runs_once(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("s", ledger_fields(context))
    serve(context, "s")
    # A worker takes steady (as RQ does: out of the queue, started), then flaky fails.
    job_id = f"{run_id}-steady"
    redis_conn.lrem("rq:queue:steady", 0, job_id)
    redis_conn.hset(f"rq:job:{job_id}", "status", "started")
    serve(context, "flaky")
    assert orchestrator.status(run_id)["status"] == "failed"
    with pytest.raises(InvalidRunOperation, match="still has steps running"):
        orchestrator.retry(run_id)
    # steady finishes now: the failed run creates no successor for it.
    redis_conn.hset(f"rq:job:{job_id}", "status", "queued")
    redis_conn.rpush("rq:queue:steady", job_id)
    drain(context)
    assert orchestrator.status(run_id)["nodes"]["steady"] == "finished"
    assert stored_runs(context, run_id) == [("failed", 3)]

    redis_conn.set(f"flaky:{run_id}", 1)
    status = orchestrator.retry(run_id)
    assert [n for n, s in status["nodes"].items() if s == "queued"] == ["steady", "flaky"]
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"
    assert executions(redis_conn, run_id) == ["s", "flaky", "steady", "steady", "flaky", "j"]
    assert stored_runs(context, run_id) == [("finished", 4)]


def test_retry_of_a_failed_map_runs_the_failed_and_canceled_instances(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky.mapped")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("m", ledger_fields(context), items=[1, 2, 3], flaky_items=[2])
    # One claim at a time: a worker claiming a batch would hold square-2 as running when
    # square-1 fails, and run it instead of leaving it to be canceled.
    serve_fast(context, burst=True, log_level="WARNING", with_scheduler=False, claim_batch=1)
    failed = orchestrator.status(run_id)
    assert failed["status"] == "failed"
    assert [failed["nodes"][f"square-{i}"] for i in range(3)] == ["finished", "failed", "canceled"]
    redis_conn.set(f"flaky:{run_id}", 1)
    orchestrator.retry(run_id)
    drain(context)
    status = orchestrator.status(run_id)
    assert status["status"] == "finished"
    assert status["result"]["values"] == [1, 4, 9]
    assert executions(redis_conn, run_id) == ["square-0", "square-1", "square-1", "square-2"]
    assert stored_runs(context, run_id) == [("finished", 6)]


def test_retry_refuses_a_run_that_is_not_failed_with_one_line(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    env = subprocess_env(context.settings)
    queued = ezgraph_cli("retry", run_id, env=env)
    assert queued.returncode == 1
    assert queued.stderr == f"error: run {run_id} is queued: only a failed run can be retried\n"
    drain(context)
    done = ezgraph_cli("retry", run_id, env=env)
    assert done.returncode == 1
    assert done.stderr == f"error: run {run_id} is finished: only a failed run can be retried\n"
    with pytest.raises(RunNotFound):
        orchestrator.retry("nope")


def test_retry_of_a_running_run_names_it_as_status_does(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key="test:ledger", sleep=2)
    env = subprocess_env(context.settings)
    worker = ezgraph_process("worker", "a", env=env)
    try:
        wait_for(lambda: redis_conn.llen("test:ledger") == 1, 30, "step a to start")
        assert orchestrator.status(run_id)["status"] == "running"
        done = ezgraph_cli("retry", run_id, env=env)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"error: run {run_id} is running: only a failed run can be retried\n"


def test_retry_of_a_failed_run_no_longer_in_redis_names_the_reason(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.flaky")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("s", ledger_fields(context))
    drain(context)
    redis_conn.delete(*context.keys.run_keys(run_id))  # as EZGRAPH_RUN_TTL does
    with pytest.raises(InvalidRunOperation, match="can no longer be retried: its state left Redis"):
        orchestrator.retry(run_id)

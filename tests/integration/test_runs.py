"""End to end on a real Redis and real databases, steps run by an in-process RQ worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy
from redis import Redis
from redis.exceptions import ResponseError
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.models import RunRow, StepRow

from ..conftest import drain, run_step_here


def step_rows(database_url: str, run_id: str) -> dict[str, tuple[str, int]]:
    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text("select step, status, attempts from ezgraph_steps where run_id = :r"),
            {"r": run_id},
        ).all()
    engine.dispose()
    return {step: (status, attempts) for step, status, attempts in rows}


def test_chain_runs_to_the_end_and_is_persisted_once(
    make_context: Callable[..., Context], database_url: str
) -> None:
    context = make_context("tests.graphs.chain", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"trail": []}, user="joao")
    assert orchestrator.status(run_id)["status"] == "queued"
    assert orchestrator.list_queues() == {"a": 1, "b": 0}

    drain(context)

    live = orchestrator.status(run_id)
    assert live["status"] == "finished"
    assert live["nodes"] == {"a": "finished", "b": "finished"}
    assert live["result"] == {"user": "joao", "trail": ["a", "b"], "a": True, "b": True}
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    assert stored.result == live["result"]
    assert step_rows(database_url, run_id) == {"a": ("finished", 1), "b": ("finished", 1)}
    assert context.store.count_runs() == 1
    assert context.runs.unsaved() == []


def test_status_comes_from_sql_once_redis_forgot_the_run(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", x=1)
    drain(context)
    redis_conn.delete(*context.keys.run_keys(run_id))
    assert orchestrator.status(run_id)["result"]["trail"] == ["a", "b"]
    assert orchestrator.status(run_id)["nodes"] == {"a": "finished", "b": "finished"}


def test_each_step_is_an_rq_job_named_after_run_and_node_on_the_node_queue(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    job = Job.fetch(f"{run_id}-a", connection=redis_conn)
    assert job.origin == "a"
    assert job.get_status() == "queued"
    assert job.description.startswith("a (tests.steps:mark)")
    assert redis_conn.lrange("rq:queue:a", 0, -1) == [f"{run_id}-a".encode()]
    drain(context)
    finished_b = Job.fetch(f"{run_id}-b", connection=redis_conn)
    assert finished_b.get_status() == "finished"
    assert finished_b.return_value() == {"b": True, "trail": ["a", "b"]}


def test_a_step_run_again_after_recording_creates_no_second_successor(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """The crash window between recording and the job's end: the re-run changes nothing."""
    context = make_context("tests.graphs.diamond")
    run_id = GraphOrchestrator(context=context).submit("a")
    run_step_here(context, run_id, "a", "tests.graphs.diamond", {})
    queued = (redis_conn.llen("rq:queue:b"), redis_conn.llen("rq:queue:c"))
    run_step_here(context, run_id, "a", "tests.graphs.diamond", {})
    assert (redis_conn.llen("rq:queue:b"), redis_conn.llen("rq:queue:c")) == queued == (1, 1)
    # The first step was taken out of the queue by hand; drop its job so drain runs the rest.
    redis_conn.lrem("rq:queue:a", 0, f"{run_id}-a")
    drain(context)
    status = GraphOrchestrator(context=context).status(run_id)
    assert status["status"] == "finished"
    assert status["nodes"] == {n: "finished" for n in "abcd"}


def test_persisted_runs_can_be_queried_with_the_typed_models(
    make_context: Callable[..., Context],
) -> None:
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a")
    drain(context)
    with Session(context.store.engine) as session:
        run = session.get(RunRow, run_id)
        steps = session.scalars(select(StepRow).where(StepRow.run_id == run_id)).all()
    assert run is not None and run.status == "finished" and run.start_node == "a"
    assert sorted(step.step for step in steps) == ["a", "b"]


def test_text_survives_redis_and_sql_unchanged(
    make_context: Callable[..., Context], database_url: str
) -> None:
    # A run's state goes through Lua, Redis hashes and SQL JSON columns: it must come out exactly
    # as it went in, whatever its characters.
    text = 'ação "quoted" \\ back/slash\nnew line \t tab \u2603 \U0001f600 </script>'
    context = make_context("tests.graphs.chain", database_url=database_url)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", {"trail": [], "text": text, "empty": "", "nested": {}})

    live = orchestrator.get_run(run_id)
    assert live is not None and live.input["text"] == text

    drain(context)

    expected = {"trail": ["a", "b"], "text": text, "empty": "", "nested": {}, "a": True, "b": True}
    assert orchestrator.status(run_id)["result"] == expected
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.result == expected
    assert context.runs.read_many(["no-such-run", run_id])[0] is None


def test_runs_go_on_after_redis_forgets_the_scripts_and_drops_connections(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """Scripts are sent by their digest on the thread's own connection: after SCRIPT FLUSH (as
    after a Redis restart) they are loaded again, and a connection Redis dropped is reopened."""
    context = make_context("tests.graphs.chain")
    orchestrator = GraphOrchestrator(context=context)
    first = orchestrator.submit("a")
    redis_conn.script_flush()
    second = orchestrator.submit("a")
    db = redis_conn.connection_pool.connection_kwargs.get("db", 0)
    own = redis_conn.client_id()
    for client in redis_conn.client_list():
        if int(client["db"]) == db and int(client["id"]) != own:
            redis_conn.client_kill_filter(_id=client["id"])
    redis_conn.script_flush()
    drain(context)
    assert orchestrator.status(first)["status"] == "finished"
    assert orchestrator.status(second)["status"] == "finished"


def test_a_raw_call_that_fails_midway_leaves_no_reply_behind(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    """An error reply in the middle of a raw batch drops that connection: the replies still owed
    on it never reach the next call."""
    context = make_context("tests.graphs.chain")
    run_id = GraphOrchestrator(context=context).submit("a", question="hoje?")
    redis_conn.set("plain-string", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        context.scripts._raw([("HGETALL", "plain-string"), ("ECHO", "stale"), ("ECHO", "stale")])
    live = context.runs.read_many([run_id])[0]
    assert live is not None and live.header["start"] == "a"
    assert context.scripts._raw([("ECHO", "fresh")]) == [b"fresh"]

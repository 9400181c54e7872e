"""The database misbehaves: it hangs, or refuses one run. Runs wait in Redis, steps go on, and
one run SQL cannot hold never keeps the others out (issue 17, items 4 and 8)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from redis import Redis

from ezgraph import submission
from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.model.records import RunStatus
from ezgraph.model.step_job import StepJob
from ezgraph.state.protocol import NewRun

from ..conftest import drain, ezgraph_cli, ezgraph_process, subprocess_env, wait_for


@pytest.fixture
def hung_database() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open, never read nor answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    yield f"postgresql+psycopg2://ezgraph:secret@127.0.0.1:{port}/ezgraph"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.slow
def test_a_hung_database_is_a_down_one_runs_wait_and_steps_go_on(
    make_context: Callable[..., Context], hung_database: str, sqlite_url: str
) -> None:
    context = make_context("tests.graphs.chain", database_url=hung_database)
    env = subprocess_env(context.settings)
    worker = ezgraph_process("worker", "a", "b", env=env)
    try:
        wait_for(lambda: bool(context.connection.smembers(context.keys.workers)), 30, "a worker")
        orchestrator = GraphOrchestrator(context=context)
        run_ids = []
        for _ in range(4):  # one at a time: each run ends with the worker idle, so it writes
            run_ids.append(orchestrator.submit("a", {}))
            wait_for(
                lambda: context.runs.read(run_ids[-1]).header.get("status") == "finished",  # type: ignore[union-attr]
                30,
                "the run to finish while the database hangs",
            )
        assert context.runs.unsaved_count() == 4  # they wait in Redis for the database
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "database" in stderr and "***" in stderr and "secret" not in stderr

    written = ezgraph_cli("persist", env={**env, "DATABASE_URL": sqlite_url})
    assert written.returncode == 0, written.stderr
    assert "4 runs written" in written.stdout + written.stderr
    assert (
        GraphOrchestrator(context=make_context("tests.graphs.chain")).context.store.count_runs()
        == 4
    )


def test_a_command_on_a_hung_database_fails_in_one_line(
    make_context: Callable[..., Context], hung_database: str
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain", database_url=hung_database).settings)
    began = time.monotonic()
    result = ezgraph_cli("init-db", env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database postgresql+psycopg2://ezgraph:***@127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - began < 30  # the connect timeout, not for ever


@pytest.mark.postgres
def test_a_run_sql_refuses_is_set_aside_and_every_other_run_lands(
    make_context: Callable[..., Context], postgres_url: str, redis_conn: Redis
) -> None:
    failing = make_context("tests.graphs.failing", database_url=postgres_url)
    context = make_context("tests.graphs.chain", database_url=postgres_url)
    orchestrator = GraphOrchestrator(context=context)
    with_nul = GraphOrchestrator(context=failing).submit("a", {"detail": "\x00 and \\x00 and é"})
    # A run id PostgreSQL cannot hold (String(64)); submit refuses such ids now, but an
    # older ezgraph did not: the run is put in Redis as that one would have.
    too_long = "r" * 70
    graph = context.graph()
    job = context.jobs.build(
        graph, StepJob(too_long, "a", graph.package, {}, graph_version=graph.version)
    )
    batch = submission.prepare(context, "a", [{}])  # the graph's part of a submission
    (reply,) = context.runs.submit(batch.submission, [(NewRun(too_long, "{}", "", "create"), job)])
    assert reply.status == "created"
    others = [orchestrator.submit("a", {"n": n}) for n in range(20)]
    drain(failing)
    drain(context)

    store = context.store
    ours = [with_nul, too_long, *others]
    landed = store.count_by_status(ours)
    assert sum(rows for rows, _ in landed.values()) == 21  # every run but the one SQL refuses
    record = store.load_run(with_nul)
    assert record is not None and record.status is RunStatus.FAILED
    assert "boom in c\\x00 and \\x00 and é" in (record.error or "")  # NUL shown, not lost
    for run_id in others:
        assert orchestrator.status(run_id)["status"] == "finished"
    assert context.runs.unsaved_count() == 0  # the refused run waits no more in the queue...
    assert set(context.runs.set_aside()) == {too_long}  # ...but aside, with its reason

    env = subprocess_env(context.settings)
    persisted = ezgraph_cli("persist", env=env)
    assert persisted.returncode == 1
    assert "Traceback" not in persisted.stderr
    assert persisted.stderr.strip().splitlines()[-1] == (
        f"error: 1 run set aside, the database refused it: {too_long}: value too long for"
        " type character varying(64)"
    )
    assert sum(rows for rows, _ in store.count_by_status(ours).values()) == 21  # still aside

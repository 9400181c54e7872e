"""Bad input gets a one-line error and loses nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.errors import ConnectionFailed, PayloadError, UsageError

from ..conftest import drain, ezgraph_cli, subprocess_env


def rq_keys(redis_conn: Redis) -> list[bytes]:
    return sorted(redis_conn.keys("rq:*"))


def test_unknown_start_module_is_refused_and_nothing_is_enqueued(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    orchestrator = GraphOrchestrator(context=make_context("tests.graphs.chain"))
    with pytest.raises(UsageError, match="unknown start module 'zz' \\(graph nodes: a, b\\)"):
        orchestrator.submit("zz", x=1)
    assert redis_conn.keys("*") == []


def test_payload_that_is_not_json_serializable_is_refused_and_nothing_is_enqueued(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    orchestrator = GraphOrchestrator(context=make_context("tests.graphs.chain"))
    with pytest.raises(PayloadError, match="payload is not JSON-serializable"):
        orchestrator.submit("a", when=object())
    with pytest.raises(PayloadError, match="payload is not JSON-serializable"):
        orchestrator.submit("a", ratio=float("nan"))
    assert redis_conn.keys("*") == []


def test_oversized_payload_is_refused(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.chain", max_payload_bytes=100)
    with pytest.raises(PayloadError, match="over the 100-byte limit"):
        GraphOrchestrator(context=context).submit("a", text="x" * 200)
    assert redis_conn.keys("*") == []


@pytest.mark.parametrize(
    ("start", "error"),
    [
        ("listy", "listy: StepError: node 'listy' returned list, expected a dict"),
        ("weird", "weird: PayloadError: step 'weird': output is not JSON-serializable"),
        ("raises", "raises: ValueError: boom in raises"),
    ],
)
def test_a_module_breaking_the_contract_fails_its_step_and_the_run(
    make_context: Callable[..., Context], redis_conn: Redis, start: str, error: str
) -> None:
    context = make_context("tests.graphs.broken")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit(start, x=1)
    drain(context)
    status = orchestrator.status(run_id)
    assert status["status"] == "failed"
    assert status["error"].startswith(error)
    assert status["nodes"] == {start: "failed"}
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "failed" and stored.error == status["error"]
    assert stored.steps[0].input == {"x": 1}  # kept, so the step can be retried
    assert redis_conn.llen("rq:queue:after") == 0


def test_unreachable_redis_is_one_line_naming_the_url_without_password(
    make_context: Callable[..., Context],
) -> None:
    settings = make_context("tests.graphs.chain").settings.replace(
        redis_url="redis://:hunter2@127.0.0.1:1/0"
    )
    with pytest.raises(
        ConnectionFailed, match=r"cannot reach Redis at redis://:\*\*\*@127.0.0.1:1/0"
    ):
        Context(settings)
    done = ezgraph_cli("submit", "a", "-f", "x=1", env=subprocess_env(settings))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis at redis://:***@")
    assert "hunter2" not in done.stderr


def test_unreachable_database_is_one_line_and_the_run_waits_in_redis(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    bad = "postgresql+psycopg2://postgres:sekret@127.0.0.1:1/nope"
    context = make_context("tests.graphs.chain", database_url=bad)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    drain(context)
    assert orchestrator.status(run_id)["status"] == "finished"  # read from Redis
    assert context.runs.unsaved() == [run_id]  # not lost: waiting for the database
    done = ezgraph_cli("init-db", env=subprocess_env(context.settings))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: database postgresql+psycopg2://postgres:***@127.0.0.1:1/nope"
    )
    assert "sekret" not in done.stderr

"""Concurrent finishes across worker processes: every join runs exactly once per run."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_200_runs_of_1_8_1_on_3_worker_processes_run_each_join_exactly_once(
    make_context: Callable[..., Context], redis_conn: Redis, redis_url: str
) -> None:
    context = make_context("tests.graphs.ledgered")
    orchestrator = GraphOrchestrator(context=context)
    ledger = "test:ledger"
    run_ids = [
        orchestrator.submit("s", ledger_url=redis_url, ledger_key=ledger) for _ in range(200)
    ]
    env = subprocess_env(context.settings)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "ezgraph", "worker", "--burst"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=180)
        assert worker.returncode == 0, errors

    executions = Counter(entry.decode() for entry in redis_conn.lrange(ledger, 0, -1))
    assert len(executions) == 200 * 10
    assert set(executions.values()) == {1}, "a step ran more than once"
    engine = sqlalchemy.create_engine(context.settings.database_url)
    with engine.connect() as connection:
        statuses = dict(
            connection.execute(
                sqlalchemy.text("select status, count(*) from ezgraph_runs group by status")
            ).all()
        )
        joins = connection.execute(
            sqlalchemy.text(
                "select count(*), count(distinct run_id) from ezgraph_steps"
                " where node = 'j' and status = 'finished'"
            )
        ).one()
    engine.dispose()
    assert statuses == {"finished": 200}, "a run is stuck or failed"
    assert tuple(joins) == (200, 200)
    assert context.runs.live() == [] and context.runs.unsaved() == []
    assert {orchestrator.status(r)["nodes"]["j"] for r in run_ids} == {"finished"}

"""A worker dying at any point of the step wrapper: successors run once, the run is stored once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import ROOT, subprocess_env

POINTS = ["after_module:b", "after_record:b", "before_persist:run"]


def launch(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("crashing", ["ezgraph worker", "stock rq worker"])
def test_a_crash_at_each_point_of_the_wrapper_loses_and_doubles_nothing(
    make_context: Callable[..., Context],
    redis_conn: Redis,
    redis_url: str,
    point: str,
    crashing: str,
) -> None:
    context = make_context("tests.graphs.slowchain")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a", ledger_url=redis_url, ledger_key="test:ledger", sleep=0)
    env = subprocess_env(context.settings)
    if crashing == "ezgraph worker":
        command = ["ezgraph", "worker"]
    else:
        command = [
            "rq.cli",
            "worker",
            "a",
            "b",
            "c",
            "--url",
            redis_url,
            "-w",
            "rq.worker.SimpleWorker",
        ]
    doomed = launch(command, {**env, "EZGRAPH_CRASH_AT": point})
    try:
        assert doomed.wait(timeout=60) == 137, "the worker did not die at the crash point"
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    rescuer = launch(["ezgraph", "worker"], env)
    try:
        deadline = time.monotonic() + 40
        while context.store.load_run(run_id) is None:
            assert time.monotonic() < deadline, "the run was never stored"
            time.sleep(0.2)
    finally:
        rescuer.terminate()
        rescuer.wait(30)
    executions = Counter(e.decode() for e in redis_conn.lrange("test:ledger", 0, -1))
    assert executions[f"{run_id}:a"] == 1
    assert executions[f"{run_id}:b"] == (2 if point == "after_module:b" else 1)
    assert executions[f"{run_id}:c"] == 1, "a successor ran twice"
    stored = context.store.load_run(run_id)
    assert stored is not None and stored.status == "finished"
    engine = sqlalchemy.create_engine(context.settings.database_url)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("select count(*) from ezgraph_runs")).scalar()
    engine.dispose()
    assert rows == 1

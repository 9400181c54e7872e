"""``ezgraph status RUN --follow``: a run's events from the first, then as they come."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import drain, ezgraph_process, subprocess_env
from .conftest import EzgraphHere


def test_status_follow_replays_then_follows_to_the_end_and_reads_sql_after(
    make_context: Callable[..., Context], redis_conn: Redis, ezgraph_here: EzgraphHere
) -> None:
    context = make_context("tests.graphs.reporting")
    env = subprocess_env(context.settings)
    run_id = GraphOrchestrator(context=context).submit("work", {"text": "hi"})
    follower = ezgraph_process("status", run_id, "--follow", env=env, stdout=subprocess.PIPE)
    try:
        drain(context)
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = [line.split(maxsplit=1)[1] for line in out.strip().splitlines()[:-1]]
    assert [" ".join(line.split()) for line in lines] == [
        "work started",
        "work progress 1/3 part 1",
        "work progress 2/3 part 2",
        "work progress 3/3 part 3",
        'work note {"text": "hi"}',
        "work finished",
        "done started",
        "done finished",
    ]
    assert out.strip().splitlines()[-1] == f"run {run_id}: finished"

    redis_conn.delete(*context.keys.run_keys(run_id))  # as EZGRAPH_RUN_TTL does
    stored = ezgraph_here("status", run_id, "--follow", "--json", env=env)
    assert stored.returncode == 0, stored.stderr
    events = [json.loads(line) for line in stored.stdout.splitlines()]
    assert [e["type"] for e in events] == ["step", *["progress"] * 3, "note", *["step"] * 3]


def test_status_follow_of_an_unknown_run_is_one_line(
    make_context: Callable[..., Context], ezgraph_here: EzgraphHere
) -> None:
    env = subprocess_env(make_context("tests.graphs.reporting").settings)
    done = ezgraph_here("status", "0" * 32, "--follow", env=env)
    assert (done.returncode, done.stderr) == (1, f"error: no run with id {'0' * 32!r}\n")
    both = ezgraph_here("status", "0" * 32, "--follow", "--watch", env=env)
    assert both.returncode == 2 and both.stderr.count("\n") == 1

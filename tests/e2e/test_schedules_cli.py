"""``ezgraph schedule``: add, list, remove as a user types them; a worker fires the ticks."""

from __future__ import annotations

import json
from collections.abc import Callable

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context
from ezgraph.schedules import Schedules

from ..conftest import ezgraph_process, subprocess_env, wait_for
from .conftest import EzgraphHere


def test_schedule_add_list_remove_and_bad_input(
    make_context: Callable[..., Context], ezgraph_here: EzgraphHere
) -> None:
    env = subprocess_env(make_context("tests.graphs.chain").settings)
    added = ezgraph_here("schedule", "add", "five", "*/5 * * * *", "a", "-f", "n:=3", env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("schedule five: */5 * * * * -> a, first run at ")
    listed = json.loads(ezgraph_here("schedule", "list", "--json", env=env).stdout)
    assert [(s["name"], s["cron"], s["start"], s["data"]) for s in listed] == [
        ("five", "*/5 * * * *", "a", {"n": 3})
    ]
    for args, code, line in [
        (("add", "x", "*/5 * * *", "a"), 2, "error: invalid cron expression '*/5 * * *': "),
        (("add", "x", "* * * * *", "nope"), 2, "error: unknown start module 'nope'"),
        (("add", "five", "* * * * *", "a"), 1, "error: schedule 'five' exists: remove it first"),
        (("remove", "nope"), 1, "error: no schedule named 'nope'"),
    ]:
        done = ezgraph_here("schedule", *args, env=env)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, done.stderr
    assert ezgraph_here("schedule", "remove", "five", env=env).returncode == 0
    assert "no schedules" in ezgraph_here("schedule", "list", env=env).stdout


def test_a_worker_fires_a_schedule_each_tick(make_context: Callable[..., Context]) -> None:
    context = make_context("tests.graphs.chain")
    Schedules(context).add("often", "* * * * * *", "a", {"trail": []})  # every second
    worker = ezgraph_process("worker", env=subprocess_env(context.settings))
    try:
        wait_for(lambda: len(Schedules(context).fired()) == 1, 20, "a tick to fire")
        _tick, run_id = Schedules(context).fired()["often"]
        status = GraphOrchestrator(context=context).wait(run_id, timeout=20)
    finally:
        Schedules(context).remove("often")
        worker.terminate()
        worker.communicate(timeout=20)
    assert status["status"] == "finished" and status["result"]["trail"] == ["a", "b"]

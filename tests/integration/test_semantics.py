"""Graph semantics: joins run once after all their live predecessors, routing skips, maps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from ezgraph.client import GraphOrchestrator
from ezgraph.context import Context

from ..conftest import drain


def run_once(make_context: Callable[..., Context], package: str, start: str, **fields: object):
    context = make_context(package)
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit(start, fields)
    drain(context)
    return orchestrator.status(run_id), context


def test_diamond_join_merges_predecessor_states_in_graph_order(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.diamond", "a")
    assert status["status"] == "finished"
    assert status["nodes"] == {n: "finished" for n in "abcd"}
    # b's state and c's state both carry a trail; c comes later in GRAPH_CONNECTIONS, so wins.
    assert status["result"]["trail"] == ["a", "c", "d"]
    assert status["result"]["b"] is True and status["result"]["c"] is True


def test_join_sees_each_predecessor_output_by_name(make_context: Callable[..., Context]) -> None:
    status, _ = run_once(make_context, "tests.graphs.mapped", "m", items=[3, 1, 2])
    outputs = status["result"]["outputs"]
    assert outputs == {"square": [{"value": 9}, {"value": 1}, {"value": 4}]}


def test_wide_fan_out_and_fan_in(make_context: Callable[..., Context]) -> None:
    status, _ = run_once(make_context, "tests.graphs.wide", "s")
    assert status["status"] == "finished"
    assert set(status["nodes"].values()) == {"finished"} and len(status["nodes"]) == 10
    assert status["result"]["trail"] == ["s", "p7", "j"]


def test_nested_joins(make_context: Callable[..., Context]) -> None:
    status, _ = run_once(make_context, "tests.graphs.nested", "a")
    assert status["status"] == "finished"
    assert status["nodes"] == {n: "finished" for n in "abcdefg"}
    assert status["result"]["f"] is True and status["result"]["g"] is True


def test_routing_skips_the_branch_not_chosen_and_the_join_waits_only_for_the_other(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.routed", "r", route=["x"])
    assert status["status"] == "finished"
    assert status["nodes"] == {
        "r": "finished",
        "x": "finished",
        "y": "skipped",
        "z": "skipped",
        "j": "finished",
        "k": "skipped",
    }
    assert status["result"]["trail"] == ["x", "j"]


def test_a_join_whose_predecessors_are_all_skipped_is_skipped(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.routed", "r", route=["z"])
    assert status["status"] == "finished"
    assert status["nodes"]["j"] == "skipped"
    assert status["nodes"]["x"] == status["nodes"]["y"] == "skipped"
    assert status["nodes"]["k"] == "finished"


def test_routing_to_nothing_finishes_the_run_with_everything_skipped(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.routed", "r", route=[])
    assert status["status"] == "finished"
    assert [status["nodes"][n] for n in "xyzjk"] == ["skipped"] * 5


def test_routing_to_an_undeclared_node_fails_the_step_naming_it(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.routed", "r", route=["j"])
    assert status["status"] == "failed"
    assert status["nodes"]["r"] == "failed"
    assert "node 'r' routed to 'j', which is not a successor" in status["error"]


@pytest.mark.parametrize("count", [0, 1, 100])
def test_map_runs_one_step_per_item_and_the_join_gets_them_in_order(
    make_context: Callable[..., Context], redis_conn: Redis, count: int
) -> None:
    items = list(range(count))
    status, context = run_once(make_context, "tests.graphs.mapped", "m", items=items)
    assert status["status"] == "finished"
    assert status["result"]["values"] == [i * i for i in items]
    assert status["result"]["total"] == sum(i * i for i in items)
    assert status["nodes"]["square"] == "finished"
    assert [status["nodes"][f"square-{i}"] for i in items] == ["finished"] * count
    stored = context.store.load_run(status["run_id"])
    assert stored is not None
    assert [s.step for s in stored.steps] == ["m", "square"] + [f"square-{i}" for i in items] + [
        "collect"
    ]
    if count:
        assert redis_conn.exists(f"rq:job:{status['run_id']}-square-{count - 1}")


def test_a_failed_predecessor_fails_the_run_and_the_join_never_runs(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    status, context = run_once(make_context, "tests.graphs.failing", "a")
    assert status["status"] == "failed"
    assert status["nodes"]["c"] == "failed"
    assert status["nodes"]["b"] == "finished"
    assert "d" not in status["nodes"]
    assert status["error"].startswith("c: ValueError: boom in c")
    assert all(redis_conn.llen(f"rq:queue:{n}") == 0 for n in "abcd")
    stored = context.store.load_run(status["run_id"])
    assert stored is not None and stored.status == "failed"
    failed = next(s for s in stored.steps if s.step == "c")
    assert "Traceback" in (failed.error or "")


def test_failure_cancels_steps_still_queued(
    make_context: Callable[..., Context], redis_conn: Redis
) -> None:
    context = make_context("tests.graphs.failing")
    orchestrator = GraphOrchestrator(context=context)
    run_id = orchestrator.submit("a")
    from ezgraph.workers.fast import serve as run_worker

    # Only a and c are served: c fails while b still waits in its queue.
    run_worker(context, ["a", "c"], burst=True, with_scheduler=False, log_level="WARNING")
    status = orchestrator.status(run_id)
    assert status["status"] == "failed"
    assert status["nodes"]["b"] == "canceled"
    assert redis_conn.llen("rq:queue:b") == 0
    assert redis_conn.hget(f"rq:job:{run_id}-b", "status") == b"canceled"
    assert context.store.load_run(run_id) is not None


def test_starting_mid_graph_treats_unreachable_predecessors_as_skipped(
    make_context: Callable[..., Context],
) -> None:
    status, _ = run_once(make_context, "tests.graphs.diamond", "b")
    assert status["status"] == "finished"
    assert status["nodes"] == {"b": "finished", "d": "finished"}

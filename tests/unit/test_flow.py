"""flow.plan against a model of the Lua walk: every step the walk can make ready has a planned
job, and every node it visits is in the plan's walk, on every route of many graphs."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

import pytest

from ezgraph.errors import StepError
from ezgraph.flow import StepResult, check_result, map_instances, plan
from ezgraph.model.graph import Graph, build_graph
from ezgraph.model.module_api import Map, Route
from ezgraph.model.step_job import StepJob


def random_graph(rng: random.Random, size: int) -> Graph:
    """A random DAG of ``size`` nodes (edges only from earlier to later nodes)."""
    nodes = [f"n{i}" for i in range(size)]
    connections: dict[str, list[str]] = {}
    for i, node in enumerate(nodes):
        later = nodes[i + 1 :]
        connections[node] = sorted(rng.sample(later, k=min(len(later), rng.randint(0, 3))))
    return build_graph(connections, check_functions=False)


class WalkModel:
    """What ``make_walker`` in lua/lib/run.lua does, on the whole graph, from given arrivals."""

    def __init__(self, graph: Graph, arrived: Mapping[str, tuple[int, bool]]) -> None:
        self.graph = graph
        # join -> (arrivals still expected, whether one was done), before this completion
        self.left = {node: n for node, (n, _) in arrived.items()}
        self.any = {node: done for node, (_, done) in arrived.items()}
        self.ready: list[str] = []
        self.visited: list[str] = []

    def arrive(self, node: str, done: bool) -> None:
        self.visited.append(node)
        indegree = len(self.graph.predecessors(node))
        if indegree <= 1:
            self.ready.append(node) if done else self.skip(node)
            return
        self.left.setdefault(node, indegree)
        self.any[node] = self.any.get(node, False) or done
        self.left[node] -= 1
        if self.left[node] == 0:
            self.ready.append(node) if self.any[node] else self.skip(node)

    def skip(self, node: str) -> None:
        for successor in self.graph.successors(node):
            self.arrive(successor, False)


def arrivals_before(graph: Graph, rng: random.Random) -> dict[str, tuple[int, bool]]:
    """Some joins' arrivals so far: each still expects from 1 to all of its predecessors."""
    arrived = {}
    for node in graph.nodes:
        indegree = len(graph.predecessors(node))
        if indegree > 1 and rng.random() < 0.5:
            arrived[node] = (rng.randint(1, indegree), rng.random() < 0.5)
    return arrived


def check_plan_covers_walk(graph: Graph, node: str, result: StepResult, rng: random.Random) -> None:
    job = StepJob("run", node, graph.package, state={})
    planned = plan(graph, job, result, {})
    planned_steps = {j.step for j in planned.jobs}
    walk_nodes = {name for name, _, _ in planned.walk}
    for _ in range(5):
        model = WalkModel(graph, arrivals_before(graph, rng))
        for successor in graph.successors(node):
            if result.mapped is not None and successor == result.mapped.node:
                continue
            model.arrive(successor, result.chosen is None or successor in result.chosen)
        assert set(model.visited) <= walk_nodes, (node, result, model.visited, walk_nodes)
        assert set(model.ready) <= planned_steps, (node, result, model.ready, planned_steps)


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_holds_every_job_the_walk_can_make_ready_on_every_route(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng, rng.randint(2, 9))
    for node in graph.nodes:
        successors = graph.successors(node)
        check_plan_covers_walk(graph, node, StepResult({}), rng)
        for size in range(len(successors) + 1):
            for chosen in itertools.combinations(successors, size):
                check_plan_covers_walk(graph, node, StepResult({}, chosen=chosen), rng)


def test_a_plain_successor_gets_the_state_and_a_join_reads_its_input() -> None:
    graph = build_graph({"a": ["b", "j"], "b": ["j"], "j": []}, check_functions=False)
    planned = plan(graph, StepJob("r", "a", graph.package, {}), StepResult({"x": 1}), {"x": 1})
    jobs = {job.step: job for job in planned.jobs}
    assert jobs["b"].state == {"x": 1} and not jobs["b"].reads_join_input
    assert jobs["j"].reads_join_input and jobs["j"].state is None
    assert planned.keeps_state  # the join reads it
    assert [name for name, _, _ in planned.walk] == ["a", "b", "j"]


def test_a_route_plans_no_job_for_a_branch_not_chosen_but_the_joins_below_it() -> None:
    graph = build_graph(
        {"a": ["b", "c"], "b": ["d"], "c": ["d", "e"], "d": [], "e": []}, check_functions=False
    )
    planned = plan(graph, StepJob("r", "a", graph.package, {}), StepResult({}, chosen=("b",)), {})
    assert sorted(job.step for job in planned.jobs) == ["b", "d"]  # c skipped; d may be ready
    assert {name for name, _, _ in planned.walk} == {"a", "b", "c", "d", "e"}


def test_a_map_plans_one_job_per_item_and_its_successor_as_a_join() -> None:
    graph = build_graph({"m": ["i"], "i": ["g"], "g": []}, check_functions=False)
    result = check_result(graph, "m", None, Map("i", ["x", "y"], {"o": 1}, key="word"))
    mapper = StepJob("r", "m", graph.package, {})
    planned = plan(graph, mapper, result, {"o": 1})
    assert not [job for job in planned.jobs if job.node == "i"]  # created a chunk at a time
    assert result.mapped is not None
    assert planned.keeps_state  # the instances and the join read it
    items = list(map_instances(graph, mapper, result.mapped))
    assert [(job.step, job.item, job.item_key) for job in items] == [
        ("i-0", "x", "word"),
        ("i-1", "y", "word"),
    ]
    assert all(job.reads_mapper_state and job.state is None for job in items)
    assert "state" not in items[0].kwargs()  # one copy in Redis, not one per item
    assert StepJob.from_kwargs(items[0].kwargs()) == items[0]
    assert [job.step for job in planned.jobs if job.reads_join_input] == ["g"]
    instance = plan(graph, items[0], StepResult({}), {})
    assert [job.step for job in instance.jobs] == ["g"]
    assert not instance.keeps_state


def test_an_instance_of_a_mapped_sink_keeps_no_state() -> None:
    graph = build_graph({"m": ["i"], "i": []}, check_functions=False)
    result = check_result(graph, "m", None, Map("i", [1]))
    assert result.mapped is not None
    [item] = map_instances(graph, StepJob("r", "m", graph.package, {}), result.mapped)
    assert not plan(graph, item, StepResult({"v": 1}), {"v": 1}).keeps_state


def test_check_result_refuses_what_the_graph_does_not_allow() -> None:
    graph = build_graph({"a": ["b"], "b": [], "c": ["b"]}, check_functions=False)
    with pytest.raises(StepError, match="returned list, expected a dict"):
        check_result(graph, "a", None, [1])
    with pytest.raises(StepError, match="routed to 'c', which is not a successor"):
        check_result(graph, "a", None, Route("c"))
    with pytest.raises(StepError, match="mapped over 'b', which has other predecessors"):
        check_result(graph, "a", None, Map("b", [1]))
    with pytest.raises(StepError, match="a mapped instance cannot route"):
        check_result(graph, "a", 0, Route("b"))

"""Unit tests of the pure graph model: loading, validation, queries."""

from __future__ import annotations

from typing import Any

import pytest

from ezgraph.errors import GraphError
from ezgraph.model.graph import build_graph, load_graph


def test_loads_package_and_resolves_default_and_mapped_functions() -> None:
    graph = load_graph("tests.graphs.diamond")
    assert graph.nodes == ("a", "b", "c", "d")
    assert graph.successors("a") == ("b", "c")
    assert graph.predecessors("d") == ("b", "c")
    assert graph.is_join("d") and not graph.is_join("b")
    assert graph.sinks() == ("d",)
    assert graph.resolve("a").__name__ == "mark"


@pytest.mark.parametrize(
    ("connections", "message"),
    [
        ({"a": ["b"]}, "node 'a': unknown successor 'b'"),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "cycle: a -> b -> c -> a"),
        ({"a": ["a"]}, "node 'a' is in a cycle"),
        ({"a-b": []}, "node name 'a-b' is not a Python identifier"),
        ({"class": []}, "node name 'class' is not a Python identifier"),
        ({"a": "b", "b": []}, "node 'a': successors must be a list"),
        ({"a": ["b", "b"], "b": []}, "node 'a': a successor is listed twice"),
        ({}, "GRAPH_CONNECTIONS must be a non-empty dict"),
    ],
)
def test_invalid_graphs_are_refused_naming_the_node(connections: dict, message: str) -> None:
    with pytest.raises(GraphError, match=message.replace("(", r"\(")):
        build_graph(connections, check_functions=False)


def test_node_without_module_is_refused() -> None:
    with pytest.raises(GraphError, match="node 'ghost' has no module"):
        build_graph({"ghost": []}, package="tests.graphs.chain")


def test_node_whose_module_has_no_process_is_refused() -> None:
    with pytest.raises(GraphError, match="node 'a' has no function"):
        build_graph({"a": []}, functions={"a": "tests.steps:nope"})


def test_route_target_that_is_not_a_successor_is_refused() -> None:
    with pytest.raises(GraphError, match="node 'a': route target 'c' is not a successor"):
        build_graph({"a": ["b"], "b": [], "c": []}, routes={"a": ["c"]}, check_functions=False)


def test_unknown_policy_key_is_refused() -> None:
    with pytest.raises(GraphError, match="unknown policy keys"):
        build_graph({"a": []}, policies={"a": {"retry": 3}}, check_functions=False)


def test_a_rate_limit_policy_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(GraphError, match=r"node 'a': rate_limit is not supported; .* N workers"):
        build_graph({"a": []}, policies={"a": {"rate_limit": ("llm", 2)}}, check_functions=False)


def test_missing_package_gives_a_hint() -> None:
    with pytest.raises(GraphError, match="cannot import modules package 'no_such_pkg'"):
        load_graph("no_such_pkg")


def test_descendants_and_policy_defaults() -> None:
    graph = build_graph(
        {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []},
        policies={"b": {"retries": 2, "timeout": 5}},
        check_functions=False,
    )
    assert graph.descendants("a") == ("b", "c", "d")
    assert graph.descendants("d") == ()
    assert graph.policy("b", 180, 0, ()).retries == 2
    assert graph.policy("b", 180, 0, ()).timeout == 5
    assert graph.policy("c", 180, 1, (3,)).retry_intervals == (3,)


def test_sink_first_orders_nodes_by_their_longest_path_from_a_source() -> None:
    # "skip" is declared early and is one step from the source; "join" waits on a longer branch.
    graph = build_graph(
        {"start": ["skip", "left", "right"], "skip": [], "left": ["deep"], "deep": ["join"],
         "right": ["join"], "join": []},
        check_functions=False,
    )  # fmt: skip
    assert graph.sink_first() == ("join", "deep", "skip", "left", "right", "start")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"functions": {"a": 5}}, "MODULES['a'] must be a string, got int"),
        ({"functions": ["a"]}, "MODULES must be a dict"),
        ({"routes": 5}, "ROUTES must be a dict {node: [successors]}, got int"),
        ({"routes": {"a": "b"}}, "ROUTES['a'] must be a list of successors"),
        ({"policies": 5}, "POLICIES must be a dict"),
        ({"policies": {"a": 5}}, "POLICIES['a'] must be a dict, got int"),
        ({"policies": {"a": {"timeout": "x"}}}, "node 'a': timeout must be whole seconds"),
        ({"policies": {"a": {"timeout": 0}}}, "node 'a': timeout must be whole seconds"),
        ({"policies": {"a": {"retries": -1}}}, "node 'a': retries must be a whole number"),
        ({"policies": {"a": {"retry_intervals": "x"}}}, "node 'a': retry_intervals must be"),
        ({"policies": {"a": {"retry_intervals": [1, -5]}}}, "node 'a': retry_intervals must be"),
    ],
)
def test_malformed_modules_routes_and_policies_are_refused_in_one_line(
    declared: dict[str, Any], message: str
) -> None:
    """What `ezgraph check` reads from a package: refused as a GraphError, not a traceback."""
    with pytest.raises(GraphError) as refused:
        build_graph({"a": ["b"], "b": []}, check_functions=False, **declared)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_node_name_longer_than_sql_holds_is_refused() -> None:
    name = "n" * 201
    with pytest.raises(GraphError, match=r"node name n{20}\.\.\. is 201 characters; at most 200"):
        build_graph({name: []}, check_functions=False)

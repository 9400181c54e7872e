"""Joins inside joins: a -> (b, c); b -> (d, e) -> f; (c, f) -> g."""

GRAPH_CONNECTIONS = {
    "a": ["b", "c"],
    "b": ["d", "e"],
    "c": ["g"],
    "d": ["f"],
    "e": ["f"],
    "f": ["g"],
    "g": [],
}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}

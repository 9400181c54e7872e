"""a -> (b, c) -> d."""

GRAPH_CONNECTIONS = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
MODULES = {node: "tests.steps:mark" for node in GRAPH_CONNECTIONS}

"""a -> b."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark"}

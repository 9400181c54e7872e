"""Invalid: node 'b' has neither a module tests/graphs/bad_module/b.py nor a MODULES entry."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": []}
MODULES = {"a": "tests.steps:mark"}

"""Invalid: 'a' lists a successor that is not a node."""

GRAPH_CONNECTIONS = {"a": ["b", "ghost"], "b": []}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark"}

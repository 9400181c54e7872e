"""Invalid: a -> b -> c -> a is a cycle."""

GRAPH_CONNECTIONS = {"a": ["b"], "b": ["c"], "c": ["a"]}
MODULES = {"a": "tests.steps:mark", "b": "tests.steps:mark", "c": "tests.steps:mark"}
